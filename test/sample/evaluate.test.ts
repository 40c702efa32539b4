import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { golden } from '../helpers.js';

const constant = (v: number) => x2i.Tensor.fromArray(new Float32Array(3 * 16 * 16).fill(v), [1, 3, 16, 16]);

it('SSIM and PSNR: identical images, constants (closed form), noise', async () => {
  const a = await x2i.randn([2, 3, 24, 24], { seed: 1 });
  const r = await x2i.imageAgreement(a, a);
  expect(r.ssim.map((v) => Math.round(v * 1e9) / 1e9)).toEqual([1, 1]);
  expect(r.psnr).toEqual([Infinity, Infinity]);
  const c = await x2i.imageAgreement(constant(0.5), constant(0.6));
  expect(c.ssim[0]).toBeCloseTo((2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4), 6);  // 0.6 in float32
  expect(c.psnr[0]).toBeCloseTo(20, 5);
  const b = await x2i.randn([2, 3, 24, 24], { seed: 2 });
  const n = await x2i.imageAgreement(a, b);
  expect(n.ssim[0]).toBeLessThan(0.2);
  expect((await x2i.imageAgreement(b, a)).ssim[0]).toBeCloseTo(n.ssim[0], 12);
});

it('evaluateAgreement: a student that reproduces the teacher\'s conditioning agrees perfectly', async () => {
  const { config } = JSON.parse(fs.readFileSync(path.join(golden, 'scheduler', 'cases.json'), 'utf8'));
  const pipeline = new x2i.FluxPipeline({ transformer: await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer')),
    vae: await x2i.AutoencoderKL.fromPretrained(path.join(golden, 'vae')), scheduler: new x2i.FlowMatchEulerScheduler(config) });
  using alignNet = await x2i.AlignNet.fromPretrained(path.join(golden, 'alignnet', 'alignnet.safetensors'));
  const io = await x2i.loadSafetensors(path.join(golden, 'alignnet', 'io.safetensors'));
  const first = async (t: x2i.Tensor) => {  // sample 0 of a batch of 2, via the host
    const v = await t.toArray() as Float32Array;
    return x2i.Tensor.fromArray(v.slice(0, v.length / 2), [1, ...t.shape.slice(1)]);
  };
  const hidden = await first(io.hidden_states);
  const same = await alignNet.forward(hidden);
  const opts = { pipeline, alignNet, height: 32, width: 32, numInferenceSteps: 2 };
  const r = await x2i.evaluateAgreement({ ...opts, samples: [{ teacher: { encoderHiddenStates: same.encoderHiddenStates,
    pooledProjections: same.pooledProjections }, student: { hiddenStates: hidden } }] });
  expect(r.ssim).toBeCloseTo(1, 6);
  expect(r.loss).toBeLessThan(1e-6);
  const other = await x2i.evaluateAgreement({ ...opts, samples: [{ teacher: { encoderHiddenStates: await x2i.randn([1, 9, 32], { seed: 4 }),
    pooledProjections: await x2i.randn([1, 24], { seed: 5 }) }, student: { hiddenStates: hidden } }] });
  expect(other.ssim).toBeLessThan(r.ssim);
  expect(other.loss).toBeGreaterThan(1e-3);
  pipeline.transformer.dispose();
  pipeline.vae.dispose();
});
