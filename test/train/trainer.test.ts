import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AlignNet, FluxTransformer, X2ITrainer } from '../../lib/index.js';
import { alignNetFile, golden, studentAlignNetFile, tmpDir } from '../helpers.js';

const tmp = tmpDir();
let flux: FluxTransformer;
let data: x2i.X2IBatch[];
const opts = { height: 32, width: 32, lr: 3e-3, seed: 3 };

beforeAll(async () => {
  flux = await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'));
  // teacher features (T5-like [1, 7, 32], CLIP-like [1, 24]) and MLLM hidden states [1, 5, 7, 32]
  data = [];
  for (let i = 0; i < 2; i++)
    data.push({ teacher: { encoderHiddenStates: await x2i.randn([1, 7, 32], { seed: 10 + i }), pooledProjections: await x2i.randn([1, 24], { seed: 20 + i }) },
      student: { hiddenStates: await x2i.randn([1, 5, 7, 32], { seed: 30 + i }) } });
});
afterAll(() => { flux.dispose(); fs.rmSync(tmp, { recursive: true, force: true }); });

describe('X2ITrainer', () => {
  it('trains with the MiniCPM-o student from prompts (a sound and text), its states padded to X2I\'s 512 tokens', async () => {
    const mllm = await x2i.studentFromPretrained(path.join(golden, 'minicpm_o'));
    const file = await studentAlignNetFile(path.join(tmp, 'alignnet-minicpm.safetensors'), 3, 128, 1);
    using net = await AlignNet.fromPretrained(file);
    const trainer = new X2ITrainer({ transformer: flux, alignNet: net, mllm }, { ...opts, seed: 0 });
    const sound = Float32Array.from({ length: 16000 }, (_, i) => 0.3 * Math.sin(2 * Math.PI * 330 * i / 16000));
    const batch: x2i.X2IBatch = { teacher: { encoderHiddenStates: await x2i.randn([1, 512, 32], { seed: 40 }), pooledProjections: await x2i.randn([1, 24], { seed: 41 }) },
      student: { prompt: { text: 'a bird singing', audios: [sound] } } };
    const first = (await trainer.trainStep(batch)).loss;
    let last = first;
    for (let i = 0; i < 4; i++) last = (await trainer.trainStep(batch)).loss;
    expect(Number.isFinite(first) && Number.isFinite(last)).toBe(true);
    expect(last).toBeLessThan(first);
    const ins = await (mllm as x2i.MiniCPMOEncoder).processPrompt({ text: 'a bird singing', audios: [sound] }, { maxLength: 512 });
    expect(ins.inputIds.shape).toEqual([1, 512]);
    mllm.dispose();
  });

  it('a few steps lower the distillation loss', async () => {
    using net = await AlignNet.fromPretrained(await alignNetFile(tmp));
    const trainer = new X2ITrainer({ transformer: flux, alignNet: net }, { ...opts, seed: 0 });
    const batch = [data[0]];
    const first = (await trainer.trainStep(batch[0])).loss;
    let last = first;
    for (let i = 0; i < 12; i++) last = (await trainer.fit({ data: batch, steps: 1 }))[0].loss;
    expect(trainer.step).toBe(13);
    expect(last).toBeLessThan(first);
  });

  it('save → resume gives the same next-step loss as an uninterrupted run; gradient accumulation', async () => {
    using a = await AlignNet.fromPretrained(await alignNetFile(tmp));
    const ta = new X2ITrainer({ transformer: flux, alignNet: a }, { ...opts, gradientAccumulation: 2, warmupSteps: 2, totalSteps: 10 });
    await ta.fit({ data, steps: 4 });
    expect(ta.step).toBe(2);
    const dir = path.join(tmp, 'ckpt');
    await ta.save(dir);
    const next = await ta.fit({ data, steps: 3 });
    using b = await AlignNet.fromPretrained(path.join(X2ITrainer.latestCheckpoint(dir), 'alignnet.safetensors'));
    const tb = new X2ITrainer({ transformer: flux, alignNet: b }, { ...opts, gradientAccumulation: 2, warmupSteps: 2, totalSteps: 10 });
    await tb.resume(dir);
    expect([tb.step, tb.microStep]).toEqual([2, 4]);
    const again = await tb.fit({ data, steps: 3 });
    for (let i = 0; i < 3; i++) expect(again[i].loss).toBeCloseTo(next[i].loss, 6);
    expect(again[1].gradNorm).toBeCloseTo(next[1].gradNorm!, 6);
  });

  it('abort stops at a step boundary and leaves a loadable checkpoint', async () => {
    using net = await AlignNet.fromPretrained(await alignNetFile(tmp));
    const t = new X2ITrainer({ transformer: flux, alignNet: net }, opts);
    const ac = new AbortController();
    const dir = path.join(tmp, 'aborted');
    const infos = await t.fit({ data, steps: 100, signal: ac.signal, checkpointDir: dir, onStep: (i) => { if (i.microStep === 3) ac.abort(); } });
    expect(infos.length).toBe(3);
    using back = await AlignNet.fromPretrained(path.join(X2ITrainer.latestCheckpoint(dir), 'alignnet.safetensors'));
    expect(back.info.variant).toBe('conv');
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8')).step).toBe(3);
  });

  it('a save killed half-way leaves the previous checkpoint intact', async () => {
    using net = await AlignNet.fromPretrained(await alignNetFile(tmp));
    const t = new X2ITrainer({ transformer: flux, alignNet: net }, opts);
    const dir = path.join(tmp, 'killed');
    await t.fit({ data, steps: 2, checkpointDir: dir });
    const before = X2ITrainer.latestCheckpoint(dir);
    await t.fit({ data, steps: 1 });
    // a later save dies after writing its weights: its folder exists, trainer.json still names the old one
    const half = path.join(dir, 'step-000003-3');
    fs.mkdirSync(half);
    fs.writeFileSync(path.join(half, 'alignnet.safetensors'), 'partial');
    expect(X2ITrainer.latestCheckpoint(dir)).toBe(before);
    using n2 = await AlignNet.fromPretrained(await alignNetFile(tmp));
    const t2 = new X2ITrainer({ transformer: flux, alignNet: n2 }, opts);
    await t2.resume(dir);
    expect(t2.step).toBe(2);
  });

  it('captions from JSONL (caption_en) and TXT', () => {
    fs.writeFileSync(path.join(tmp, 'c.jsonl'), '{"caption_en": "a red circle", "id": 1}\n\n{"caption_en": "一只猫"}\n');
    fs.writeFileSync(path.join(tmp, 'c.txt'), 'first caption\r\nsecond\n\n');
    expect(x2i.loadCaptions(path.join(tmp, 'c.jsonl'))).toEqual(['a red circle', '一只猫']);
    expect(x2i.loadCaptions(path.join(tmp, 'c.txt'))).toEqual(['first caption', 'second']);
    fs.writeFileSync(path.join(tmp, 'bad.jsonl'), '{"caption_en": 3}\n');
    expect(() => x2i.loadCaptions(path.join(tmp, 'bad.jsonl'))).toThrow(/bad\.jsonl:1: no "caption_en"/);
  });

  it('trajectory distillation: latents from the teacher\'s own denoising, at sampled timesteps; the loss falls', async () => {
    using net = await AlignNet.fromPretrained(await alignNetFile(tmp));
    const t = new X2ITrainer({ transformer: flux, alignNet: net }, { ...opts, seed: 0, trajectory: { steps: 4 } });
    const infos = await t.fit({ data: [data[0]], steps: 16 });
    expect(new Set(infos.map((i) => i.loss.toFixed(6))).size).toBeGreaterThan(2);  // different σ per step
    const early = infos.slice(0, 4).reduce((a, i) => a + i.loss, 0), late = infos.slice(-4).reduce((a, i) => a + i.loss, 0);
    expect(late).toBeLessThan(early);
  });

  it('the learning-rate schedule: warmup, then cosine', () => {
    const t = new X2ITrainer({ transformer: flux, alignNet: {} as AlignNet }, { lr: 1, warmupSteps: 4, totalSteps: 12 });
    expect([0, 1, 3].map((s) => t.learningRate(s))).toEqual([0.25, 0.5, 1]);
    expect(t.learningRate(4)).toBeCloseTo(1, 12);
    expect(t.learningRate(8)).toBeCloseTo(0.5, 12);
    expect(t.learningRate(12)).toBeCloseTo(0, 12);
  });
});
