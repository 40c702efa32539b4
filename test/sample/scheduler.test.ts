import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect, it } from 'vitest';
import { FLUX_DEV_SCHEDULER, FlowMatchEulerScheduler } from '../../lib/index.js';
import { golden } from '../helpers.js';

const { config, cases } = JSON.parse(fs.readFileSync(path.join(golden, 'scheduler', 'cases.json'), 'utf8'));

it('every golden case: mu, timesteps and sigmas (float32 exact)', () => {
  const s = new FlowMatchEulerScheduler(config);
  expect(cases.length).toBeGreaterThan(2);
  for (const c of cases) {
    expect(s.calculateShift(c.image_seq_len)).toBeCloseTo(c.mu, 12);
    const r = s.setTimesteps(c.steps, { imageSeqLen: c.image_seq_len });
    expect(r.timesteps, `${c.steps} steps, ${c.image_seq_len} tokens`).toEqual(c.timesteps);
    expect(r.sigmas).toEqual(c.sigmas);
  }
});

it('schnell (no shift), errors, and the Euler factor', () => {
  const s = new FlowMatchEulerScheduler({ use_dynamic_shifting: false, shift: 1.0 });
  expect(s.setTimesteps(4).sigmas).toEqual([1, 0.75, 0.5, 0.25, 0]);
  expect(s.dt(0)).toBe(-0.25);
  expect(() => new FlowMatchEulerScheduler().setTimesteps(4)).toThrow(/needs imageSeqLen/);
  expect(() => new FlowMatchEulerScheduler({ use_karras_sigmas: true })).toThrow(/not supported/);
  expect(() => s.setTimesteps(0)).toThrow(/positive integer/);
});

it('hostile scheduler configs: every field of its type and range, errors naming the file and the field', () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ shift: 'abc' }, /field 'shift' must be a finite number > 0, found/],
    [{ shift: -1 }, /field 'shift' must be a finite number > 0/],
    [{ use_dynamic_shifting: 'false' }, /field 'use_dynamic_shifting' must be true or false/],
    [{ num_train_timesteps: 2.5 }, /field 'num_train_timesteps' must be a positive integer/],
    [{ base_image_seq_len: 0 }, /field 'base_image_seq_len' must be a positive integer/],
    [{ max_image_seq_len: 256 }, /'max_image_seq_len' \(256\) must be greater than 'base_image_seq_len' \(256\)/],
    [{ time_shift_type: 'cubic' }, /field 'time_shift_type' must be one of 'exponential', 'linear'/],
    [{ max_shift: null }, /field 'max_shift' is missing|field 'max_shift' must be a finite number/],
  ];
  for (const [config, re] of bad) {
    expect(() => new FlowMatchEulerScheduler(config as never), JSON.stringify(config)).toThrow(re);
    expect(() => new FlowMatchEulerScheduler(config as never), JSON.stringify(config)).toThrow(/^scheduler config: /);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-sched-'));
  const file = path.join(dir, 'scheduler_config.json');
  fs.writeFileSync(file, JSON.stringify({ _class_name: 'FlowMatchEulerDiscreteScheduler', shift: 'abc' }));
  expect(() => FlowMatchEulerScheduler.fromPretrained(dir)).toThrow(new RegExp(`${file}: field 'shift'`));
  fs.writeFileSync(file, '{ not json');
  expect(() => FlowMatchEulerScheduler.fromPretrained(file)).toThrow(/not valid JSON/);
  fs.writeFileSync(file, JSON.stringify(FLUX_DEV_SCHEDULER));
  expect(FlowMatchEulerScheduler.fromPretrained(dir).config).toEqual(FLUX_DEV_SCHEDULER);
  expect(() => FlowMatchEulerScheduler.fromPretrained(path.join(dir, 'missing'))).toThrow(/no scheduler_config.json/);
});
