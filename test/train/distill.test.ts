import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { FluxTransformer } from '../../lib/index.js';
import { probes } from '../../lib/testing.js';
import { expectGoldenLoss, golden } from '../helpers.js';

async function captures(seed: number, dtype: x2i.DType, scale = 1) {
  const mk = async (s: number, shape: number[]) => {
    const t = await x2i.randn(shape, { seed: s, dtype: 'float64' });
    if (scale === 1) return t.to({ dtype });
    const v = (await t.toArray() as Float64Array).map((x) => x * scale);
    return x2i.Tensor.fromArray(v, shape, { dtype });
  };
  return { doubleImg: await mk(seed, [2, 2, 9, 37]), doubleTxt: await mk(seed + 1, [2, 2, 3, 37]), single: await mk(seed + 2, [2, 3, 12, 37]) };
}
const f64 = async (c: x2i.FluxCaptures) => ({ doubleImg: await c.doubleImg.to({ dtype: 'float64' }),
  doubleTxt: await c.doubleTxt.to({ dtype: 'float64' }), single: await c.single.to({ dtype: 'float64' }) });

describe('fused distillation loss = the float64 autograd composition', () => {
  for (const divergence of ['rkl', 'kl', 'js', 'mse'] as const) {
    for (const [dtype, lossTol, gradTol] of [['float32', 1e-5, 1e-5], ['bfloat16', 1e-3, 1e-2]] as const) {
      it(`${divergence}, ${dtype} inputs (odd D = 37)`, async () => {
        const t = await captures(1, dtype), s = await captures(11, dtype);
        const got = await x2i.distillationLoss(t, s, { divergence, returnGrad: true });
        const ref = await x2i.distillationLoss(await f64(t), await f64(s), { divergence, returnGrad: true, method: 'autograd', temperature: 3 });
        expect(Math.abs(got.loss - ref.loss) / Math.abs(ref.loss)).toBeLessThan(lossTol);
        for (const k of ['doubleImg', 'doubleTxt', 'single'] as const) {
          got.terms[k].forEach((v, i) => expect(Math.abs(v - ref.terms[k][i]) / Math.abs(ref.terms[k][i])).toBeLessThan(lossTol * 10));
          expect(await x2i.relativeError(await got.grads![k].to({ dtype: 'float64' }), ref.grads![k])).toBeLessThan(gradTol);
        }
      });
    }
  }

  it('large magnitudes and a temperature other than 3', async () => {
    const t = await captures(3, 'float32', 1e4), s = await captures(13, 'float32', 1e4);
    const got = await x2i.distillationLoss(t, s, { temperature: 0.7, returnGrad: true });
    const ref = await x2i.distillationLoss(await f64(t), await f64(s), { temperature: 0.7, returnGrad: true, method: 'autograd' });
    expect(Math.abs(got.loss - ref.loss) / ref.loss).toBeLessThan(1e-5);
    expect(await x2i.relativeError(await got.grads!.single.to({ dtype: 'float64' }), ref.grads!.single)).toBeLessThan(1e-4);
  });
});

// The training step's backward form at one tap: incoming + d term/d student in one pass (the CPU path).
describe('one tap in the backward form (incoming gradient)', () => {
  const tap = (t: x2i.Tensor, s: x2i.Tensor, div: x2i.Divergence, inc?: x2i.Tensor) =>
    probes().distillTap(t.handle, s.handle, div, 3, inc?.handle);
  for (const divergence of ['rkl', 'kl', 'js', 'mse'] as const) {
    it(`${divergence}: float32 and bf16 against float64, and = the forward form + incoming`, async () => {
      for (const [dtype, tol] of [['float32', 1e-5], ['bfloat16', 1e-2]] as const) {
        const [t64, s64, g64] = await Promise.all([1, 2, 3].map((seed) => x2i.randn([2, 9, 37], { seed, dtype: 'float64' })));
        const [t, s, g] = await Promise.all([t64, s64, g64].map((x) => x.to({ dtype })));
        const f64 = (x: x2i.Tensor) => x.to({ dtype: 'float64' });
        const ref = await tap(await f64(t), await f64(s), divergence, await f64(g));
        const got = await tap(t, s, divergence, g);
        expect(Math.abs(got.term - ref.term) / Math.abs(ref.term)).toBeLessThan(dtype === 'float32' ? 1e-5 : 1e-3);
        expect(await x2i.relativeError(await new x2i.Tensor(got.grad).to({ dtype: 'float64' }), new x2i.Tensor(ref.grad))).toBeLessThan(tol);
        // without incoming, then added: the same gradient
        const plain = await tap(await f64(t), await f64(s), divergence);
        const a = await new x2i.Tensor(plain.grad).toArray(), b = await new x2i.Tensor(ref.grad).toArray(), c = await (await f64(g)).toArray();
        expect(Math.max(...Array.from(a, (v, i) => Math.abs(v + c[i] - b[i])))).toBeLessThan(1e-12);
      }
    });
  }

  it('a NaN term passes the incoming gradient through unchanged', async () => {
    const [t, s, g] = await Promise.all([1, 2, 3].map((seed) => x2i.randn([1, 4, 16], { seed })));
    const v = await s.toArray();
    v[20] = NaN;
    const r = await tap(t, x2i.Tensor.fromArray(v, [1, 4, 16]), 'rkl', g);
    expect(Number.isNaN(r.term)).toBe(true);
    expect(Array.from(await new x2i.Tensor(r.grad).toArray())).toEqual(Array.from(await g.toArray()));
  });
});

describe('FluxTransformer.distillationStep (the training step)', () => {
  for (const checkpoint of [false, true]) {
    it(`matches the golden loss, terms and grad.student.*${checkpoint ? ' with activation checkpointing' : ''}`, async () => {
      const d = await x2i.loadSafetensors(path.join(golden, 'x2i-distill-loss', 'io.safetensors'));
      using m = await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'));
      const base = { hiddenStates: d.hidden_states, timestep: d.timestep, guidance: d.guidance, imgIds: d.img_ids, txtIds: d.txt_ids };
      const r = await m.distillationStep(
        { ...base, encoderHiddenStates: d['teacher.encoder_hidden_states'], pooledProjections: d['teacher.pooled_projections'] },
        { ...base, encoderHiddenStates: d['student.encoder_hidden_states'], pooledProjections: d['student.pooled_projections'] },
        { checkpoint });
      await expectGoldenLoss(r, d);
      expect(await x2i.relativeError(r.grad.encoderHiddenStates, d['grad.student.encoder_hidden_states'])).toBeLessThan(1e-3);
      expect(await x2i.relativeError(r.grad.pooledProjections, d['grad.student.pooled_projections'])).toBeLessThan(1e-3);
      for (const x of Object.values(d)) x.dispose();
    });
  }

  it('rejects teacher and student inputs whose taps cannot be compared', async () => {
    const d = await x2i.loadSafetensors(path.join(golden, 'x2i-distill-loss', 'io.safetensors'));
    using m = await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'));
    const base = { hiddenStates: d.hidden_states, timestep: d.timestep, guidance: d.guidance, imgIds: d.img_ids, txtIds: d.txt_ids };
    const longer = await x2i.randn([2, 8, 32]);
    const ids = x2i.Tensor.fromArray(new Float32Array(24), [8, 3]);
    await expect(m.distillationStep(
      { ...base, encoderHiddenStates: d['teacher.encoder_hidden_states'], pooledProjections: d['teacher.pooled_projections'] },
      { ...base, txtIds: ids, encoderHiddenStates: longer, pooledProjections: d['student.pooled_projections'] })).rejects.toThrow(/taps differ in shape/);
  });
});
