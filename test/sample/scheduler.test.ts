import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { FlowMatchEulerScheduler } from '../../lib/index.js';
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
