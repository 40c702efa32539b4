// Training that cannot lose the good state (issue 12): refused output folders, non-finite steps that stop
// without a checkpoint, checksummed and confined checkpoints, retention, and every option checked up front.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AlignNet, FluxPipeline, FluxTransformer, X2ITrainer } from '../../lib/index.js';
import { alignNetFile, golden, snapshot, tmpDir } from '../helpers.js';
import { recordedConfig } from '../../lib/train/checkpoints.js';

const tmp = tmpDir();
let flux: FluxTransformer;
let data: x2i.X2IBatch[];
let nanBatch: x2i.X2IBatch;
const opts = { height: 32, width: 32, lr: 3e-3, seed: 3 };

async function trainer(o: x2i.X2ITrainerOptions = {}) {
  const net = await AlignNet.fromPretrained(await alignNetFile(tmp));
  return { net, t: new X2ITrainer({ transformer: flux, alignNet: net }, { ...opts, ...o }) };
}

/** A run folder with a good checkpoint after 2 steps. */
async function goodRun(name: string): Promise<string> {
  const dir = path.join(tmp, name);
  const { net, t } = await trainer();
  await t.fit({ data, steps: 2, checkpointDir: dir });
  net.dispose();
  return dir;
}

beforeAll(async () => {
  flux = await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'));
  data = [{ teacher: { encoderHiddenStates: await x2i.randn([1, 7, 32], { seed: 10 }), pooledProjections: await x2i.randn([1, 24], { seed: 20 }) },
    student: { hiddenStates: await x2i.randn([1, 5, 7, 32], { seed: 30 }) } }];
  nanBatch = { teacher: data[0].teacher,
    student: { hiddenStates: x2i.Tensor.fromArray(new Float32Array(5 * 7 * 32).fill(NaN), [1, 5, 7, 32]) } };
});
afterAll(() => { flux.dispose(); fs.rmSync(tmp, { recursive: true, force: true }); });

describe('X2ITrainer: options checked before any work', () => {
  it('bad options are X2IErrors naming the option, the value and what was expected', () => {
    const bad: [x2i.X2ITrainerOptions, RegExp][] = [
      [{ lr: NaN }, /lr: expected a finite number ≥ 0, got NaN/], [{ lr: -1 }, /lr: .*got -1/], [{ lr: Infinity }, /lr: .*Infinity/],
      [{ gradientAccumulation: 0 }, /gradientAccumulation: expected a positive integer/], [{ gradientAccumulation: 2.5 }, /gradientAccumulation.*2\.5/],
      [{ warmupSteps: -1 }, /warmupSteps/], [{ totalSteps: 1e12 }, /totalSteps: .*at most/], [{ height: 30 }, /height: expected a positive multiple of 16/],
      [{ width: 1e6 }, /width/], [{ beta2: 1 }, /beta2/], [{ eps: 0 }, /eps/], [{ guidance: NaN }, /guidance: .*NaN/],
      [{ keepLast: 0 }, /keepLast/], [{ seed: -1 }, /seed/], [{ seed: 0.5 }, /seed/], [{ trajectory: { steps: 0 } }, /trajectory\.steps/],
      [{ temperature: 0 }, /temperature/], [{ divergence: 'nope' as x2i.X2ITrainerOptions['divergence'] }, /divergence/],
      [{ overwrite: 'yes' as unknown as boolean }, /overwrite/],
      [{ config: 'lr=1' as unknown as Record<string, unknown> }, /config: expected a plain object of options .*got lr=1/],
      [{ config: [1] as unknown as Record<string, unknown> }, /config: .*got an array/],
    ];
    for (const [o, re] of bad) {
      let err: unknown;
      try { new X2ITrainer({ transformer: flux, alignNet: {} as AlignNet }, { ...opts, ...o }); } catch (e) { err = e; }
      expect(err, JSON.stringify(o)).toBeInstanceOf(x2i.X2IError);
      expect((err as Error).message, JSON.stringify(o)).toMatch(re);
    }
    // undefined takes the default
    expect(new X2ITrainer({ transformer: flux, alignNet: {} as AlignNet }, { lr: undefined }).options.lr).toBe(1e-4);
  });

  it('fit: steps and checkpointEvery are checked before the first step', async () => {
    const t = new X2ITrainer({ transformer: flux, alignNet: {} as AlignNet }, opts);  // no AlignNet: any step would fail
    for (const steps of [2.5, -1, 1e9, NaN]) await expect(t.fit({ data, steps })).rejects.toThrow(/steps: expected a non-negative integer/);
    await expect(t.fit({ data, steps: 1, checkpointEvery: 0 })).rejects.toThrow(/checkpointEvery: expected a positive integer/);
    const file = path.join(tmp, 'a-file');
    fs.writeFileSync(file, 'x');
    await expect(t.fit({ data, steps: 1, checkpointDir: file })).rejects.toThrow(/checkpointDir: .*is a file, expected a folder/);
    await expect(t.fit({ data, steps: 1, checkpointDir: path.join(tmp, 'no', 'such', 'parent') })).rejects.toThrow(/does not exist/);
    expect(t.microStep).toBe(0);
  });

  it('FluxPipeline / X2IGenerator / evaluateAgreement: sizes, steps, guidance and seed before any work', async () => {
    const pipe = new FluxPipeline({ transformer: {} as FluxTransformer, vae: { config: { block_out_channels: [1, 1, 1, 1] } } as unknown as x2i.AutoencoderKL });
    const e = {} as x2i.Tensor;
    const cases: [Partial<x2i.FluxGenerateOptions>, RegExp][] = [[{ guidanceScale: NaN }, /guidanceScale: expected a finite number, got NaN/],
      [{ height: 33 }, /height: expected a positive multiple of 16/], [{ width: 0 }, /width/], [{ numInferenceSteps: 0 }, /numInferenceSteps/],
      [{ numInferenceSteps: 2.5 }, /numInferenceSteps/], [{ numInferenceSteps: 1e9 }, /numInferenceSteps.*at most/], [{ seed: -3 }, /seed/]];
    for (const [o, re] of cases) {
      await expect(pipe.generate({ promptEmbeds: e, pooledPromptEmbeds: e, ...o }), JSON.stringify(o)).rejects.toThrow(re);
      const gen = new x2i.X2IGenerator({ mllm: {} as x2i.QwenVLEncoder, alignNet: {} as AlignNet, pipeline: pipe });
      await expect(gen.generate({ prompt: 'x', ...o }), JSON.stringify(o)).rejects.toThrow(re);  // before the MLLM
      await expect(x2i.evaluateAgreement({ pipeline: pipe, alignNet: {} as AlignNet, samples: [], ...o } as Parameters<typeof x2i.evaluateAgreement>[0]))
        .rejects.toThrow(re);
    }
  });
});

describe('X2ITrainer: the good state is never lost', () => {
  it('a non-empty folder is refused without resume or overwrite; resume or overwrite reuse it', async () => {
    const dir = await goodRun('reuse');
    const before = snapshot(dir);
    const a = await trainer();
    await expect(a.t.fit({ data, steps: 1, checkpointDir: dir })).rejects.toMatchObject({ code: 'ERR_OUTPUT_EXISTS',
      message: expect.stringMatching(/checkpointDir: the folder .*reuse.* is not empty \(resume from it, or pass overwrite/) });
    await expect(a.t.save(dir)).rejects.toMatchObject({ code: 'ERR_OUTPUT_EXISTS' });
    expect(a.t.microStep).toBe(0);
    expect(snapshot(dir)).toEqual(before);
    // resume: continues into the same folder; the previous checkpoint is kept (keepLast 2)
    await a.t.resume(dir);
    await a.t.fit({ data, steps: 1, checkpointDir: dir });
    expect(fs.readdirSync(dir).filter((d) => d.startsWith('step-')).sort()).toEqual(['step-000002-2', 'step-000003-3']);
    a.net.dispose();
    // overwrite: allowed, explicitly
    const b = await trainer({ overwrite: true });
    await b.t.fit({ data, steps: 1, checkpointDir: dir });
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8')).step).toBe(1);
    b.net.dispose();
  });

  it('a non-finite loss stops training with an X2IError; no checkpoint of it, the last good one intact', async () => {
    const dir = await goodRun('nan');
    const before = snapshot(dir);
    const { net, t } = await trainer();
    await t.resume(dir);
    await expect(t.fit({ data: [nanBatch], steps: 3, checkpointDir: dir, checkpointEvery: 1 })).rejects.toMatchObject({
      code: 'ERR_NON_FINITE', message: expect.stringMatching(/micro-batch 2 .*training stopped/) });
    expect(snapshot(dir)).toEqual(before);
    await expect(t.save(dir)).rejects.toThrow(/refusing to checkpoint/);
    await expect(t.trainStep(data[0])).rejects.toThrow(/training stopped earlier/);
    expect(snapshot(dir)).toEqual(before);
    net.dispose();
    // the good checkpoint still resumes
    const again = await trainer();
    await again.t.resume(dir);
    expect(again.t.step).toBe(2);
    again.net.dispose();
  });

  it('keepLast: the newest checkpoints are kept, older ones removed; the config recorded; metrics.jsonl a line per optimizer step', async () => {
    const dir = path.join(tmp, 'keep');
    const { net, t } = await trainer({ keepLast: 3, config: { lr: 1e-3, data: 'features' } });
    await t.fit({ data, steps: 5, checkpointDir: dir, checkpointEvery: 1 });
    expect(fs.readdirSync(dir).filter((d) => d.startsWith('step-')).sort()).toEqual(['step-000003-3', 'step-000004-4', 'step-000005-5']);
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8'));
    expect(meta.checkpoints.map((c: { name: string }) => c.name)).toEqual(['step-000005-5', 'step-000004-4', 'step-000003-3']);
    expect(Object.keys(meta.files).sort()).toEqual(['alignnet.safetensors', 'optimizer.safetensors']);
    expect(recordedConfig(dir)).toEqual({ lr: 1e-3, data: 'features' });
    expect(meta.options).not.toHaveProperty('config');
    const lines = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.step)).toEqual([1, 2, 3, 4, 5]);
    expect(lines.every((l) => Number.isFinite(l.loss) && Number.isFinite(l.gradNorm) && l.lr === t.learningRate(l.step - 1))).toBe(true);
    net.dispose();
  });
});

describe('X2ITrainer: resume trusts nothing', () => {
  const resumeError = async (dir: string) => {
    const { net, t } = await trainer();
    try {
      await t.resume(dir);
      return null;
    } catch (e) {
      expect(t.step).toBe(0);
      return e as x2i.X2IError;
    } finally {
      net.dispose();
    }
  };

  it('a flipped byte in optimizer.safetensors (or alignnet.safetensors) fails the checksum, naming the file', async () => {
    const dir = await goodRun('flip');
    for (const f of ['optimizer.safetensors', 'alignnet.safetensors']) {
      const file = path.join(X2ITrainer.latestCheckpoint(dir), f);
      const good = fs.readFileSync(file);
      const bad = Buffer.from(good);
      bad[bad.length - 3] ^= 0x10;
      fs.writeFileSync(file, bad);
      const e = await resumeError(dir);
      expect(e?.code).toBe('ERR_CHECKSUM');
      expect(e?.message).toContain(file);
      fs.writeFileSync(file, good);
    }
    expect(await resumeError(dir)).toBeNull();
  });

  it('non-finite or negative moments in the optimizer file are refused', async () => {
    const dir = await goodRun('moments');
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8'));
    delete meta.files;  // an older trainer.json without checksums: the values are still checked
    fs.writeFileSync(path.join(dir, 'trainer.json'), JSON.stringify(meta));
    const file = path.join(X2ITrainer.latestCheckpoint(dir), 'optimizer.safetensors');
    const good = await x2i.loadSafetensors(file);
    for (const [key, value, re] of [['exp_avg_sq.conv.bias', -1, /exp_avg_sq\.conv\.bias: negative value -1/],
      ['exp_avg.conv.bias', NaN, /exp_avg\.conv\.bias: non-finite value NaN/], ['master.conv.bias', Infinity, /master\.conv\.bias: non-finite/]] as const) {
      const t = good[key];
      const v = new Float32Array(await t.toArray() as Float32Array);
      v[0] = value;
      await x2i.saveSafetensors(file, { ...good, [key]: x2i.Tensor.fromArray(v, [...t.shape]) });
      const e = await resumeError(dir);
      expect(e?.code).toBe('ERR_NON_FINITE');
      expect(e?.message).toContain(file);
      expect(e?.message).toMatch(re);
    }
    for (const t of Object.values(good)) t.dispose();
  });

  it('trainer.json: a pointer out of the run folder, a bad JSON, bad counters are errors naming the file', async () => {
    const dir = await goodRun('pointer');
    const json = path.join(dir, 'trainer.json');
    const meta = JSON.parse(fs.readFileSync(json, 'utf8'));
    const outside = path.join(tmp, 'outside');
    fs.cpSync(X2ITrainer.latestCheckpoint(dir), outside, { recursive: true });
    for (const checkpoint of ['../outside', outside, '..', '.', 'a/../../outside', '', 42, null]) {
      fs.writeFileSync(json, JSON.stringify({ ...meta, checkpoint }));
      expect(() => X2ITrainer.latestCheckpoint(dir), String(checkpoint)).toThrow(/trainer\.json: "checkpoint" must name a folder inside the run folder/);
      const e = await resumeError(dir);
      expect(e?.code, String(checkpoint)).toBe('ERR_BAD_CHECKPOINT');
      expect(e?.message).toContain(json);
    }
    for (const [text, re] of [['{"step": 2, "microStep": 2, "checkpoint": "step-0', /trainer\.json: not valid JSON/], ['[]', /expected a JSON object/],
      ['null', /expected a JSON object/], [JSON.stringify({ ...meta, step: -1 }), /"step" must be a non-negative integer/],
      [JSON.stringify({ ...meta, microStep: 1.5 }), /"microStep"/], [JSON.stringify({ ...meta, files: { 'optimizer.safetensors': 'zz' } }), /"files"/],
      [JSON.stringify({ ...meta, files: { '../x': meta.files['optimizer.safetensors'] } }), /"files"/]] as const) {
      fs.writeFileSync(json, text);
      const e = await resumeError(dir);
      expect(e?.name, text).toBe('X2IError');
      expect(e?.message).toContain(json);
      expect(e?.message).toMatch(re);
    }
  });
});
