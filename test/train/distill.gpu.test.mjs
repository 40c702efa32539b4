// The one-pass distillation kernel against the float64 CPU composition: many shapes (odd D, D not a
// multiple of any vector width, 1 row, many rows), magnitudes, dtypes and divergences; loss and gradient.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as x2i from '../../dist/index.js';
import { probes } from '../../dist/testing.js';

const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const gpuIt = (name, fn) => it(name, { skip }, fn);

async function pair(shape, seed, scale, offset) {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = await (await x2i.randn([n], { seed, dtype: 'float64' })).toArray();
  const b = await (await x2i.randn([n], { seed: seed + 1, dtype: 'float64' })).toArray();
  const s = a.map((v) => v * scale + offset);
  const t = s.map((v, i) => v + 0.5 * scale * b[i]);
  return [x2i.Tensor.fromArray(t, shape), x2i.Tensor.fromArray(s, shape)];
}

// The gradient's error against float64. float16 cannot hold the small gradients of wide rows (they fall
// into its subnormals, or to 0, well below 1e-2 precision): there the reference is first rounded to float16
// too, as the best any float16 result can be.
async function gradError(got, ref, dtype) {
  const g = await got.to({ device: 'cpu', dtype: 'float64' });
  const want = dtype === 'float16' ? await (await ref.to({ dtype: 'float16' })).to({ dtype: 'float64' }) : ref;
  const w = await want.toArray();
  if (w.every((x) => x === 0)) return (await g.toArray()).every((x) => x === 0) ? 0 : 1;
  return x2i.relativeError(g, want);
}

// (D = 2 is degenerate: the two z-scores are ±1/√2 whatever the inputs, so the gradient is eps-sized noise)
const shapes = [[1, 1, 3], [2, 5, 31], [1, 7, 127], [3, 11, 1023], [1, 3, 1024], [2, 9, 3072], [1, 4, 3073],
  [1, 2, 4097], [1, 1, 8192], [1, 1, 12289], [1, 333, 96]];

describe('distillation kernel vs float64 on the CPU', () => {
  for (const divergence of ['rkl', 'kl', 'js', 'mse']) {
    for (const dtype of ['float32', 'bfloat16', 'float16']) {
      gpuIt(`${divergence}, ${dtype}: ${shapes.length} shapes × 3 magnitudes`, async () => {
        let seed = 1;
        const failures = [];
        for (const shape of shapes) {
          // (bf16 keeps ~3 digits: a small spread on a large offset would round to constant rows)
          for (const [scale, offset] of dtype === 'float32' ? [[1, 0], [1e3, 0], [1e-3, 5]] : [[1, 0], [1e3, 0], [0.05, 1]]) {
            const [t64, s64] = await pair([shape[0], 1, shape[1], shape[2]], seed += 2, scale, offset);
            // the same (rounded) inputs on both sides
            const [t, s] = [await t64.to({ dtype }), await s64.to({ dtype })];
            const [tr, sr] = [await t.to({ dtype: 'float64' }), await s.to({ dtype: 'float64' })];
            const wrap = (x) => ({ doubleImg: x, doubleTxt: x, single: x });
            const ref = await x2i.distillationLoss(wrap(tr), wrap(sr), { divergence, returnGrad: true });
            const got = await x2i.distillationLoss(wrap(await t.to({ device: 'cuda' })), wrap(await s.to({ device: 'cuda' })),
              { divergence, returnGrad: true });
            const lossTol = dtype === 'float32' ? 1e-4 : 1e-3, gradTol = dtype === 'float32' ? 1e-4 : 1e-2;
            const what = `${divergence} ${dtype} [${shape}] ×${scale}+${offset}`;
            const le = Math.abs(got.loss - ref.loss) / Math.max(Math.abs(ref.loss), 1e-30);
            if (!(le < lossTol || Math.abs(got.loss - ref.loss) < 1e-9)) failures.push(`${what}: loss ${got.loss} vs ${ref.loss}`);
            const ge = await gradError(got.grads.single, ref.grads.single, dtype);
            if (!(ge < gradTol)) failures.push(`${what}: grad rel err ${ge}`);
          }
        }
        assert.deepEqual(failures, []);
      });
    }
  }

  // the backward form of the training step: out = incoming + d term/d student in the same pass
  for (const divergence of ['rkl', 'kl', 'js', 'mse']) {
    gpuIt(`${divergence}: with an incoming gradient, float32 / bfloat16 / float16 vs float64`, async () => {
      let seed = 500;
      const failures = [];
      for (const dtype of ['float32', 'bfloat16', 'float16']) {
        for (const shape of [[1, 1, 3], [2, 5, 31], [1, 4, 3073], [2, 9, 3072], [1, 2, 4097], [1, 333, 96], [1, 1, 12289]]) {
          const [t64, s64] = await pair(shape, seed += 3, 1, 0);
          const g64 = await x2i.randn(shape, { seed: seed + 2, dtype: 'float64' });
          const [t, s, g] = [await t64.to({ dtype }), await s64.to({ dtype }), await g64.to({ dtype })];
          const f64 = async (x) => x.to({ dtype: 'float64' });
          const ref = await probes().distillTap((await f64(t)).handle, (await f64(s)).handle, divergence, 3, (await f64(g)).handle);
          const cu = async (x) => x.to({ device: 'cuda' });
          const got = await probes().distillTap((await cu(t)).handle, (await cu(s)).handle, divergence, 3, (await cu(g)).handle);
          const what = `${divergence} ${dtype} [${shape}]`;
          const lossTol = dtype === 'float32' ? 1e-4 : 1e-3, gradTol = dtype === 'float32' ? 1e-4 : 1e-2;
          const le = Math.abs(got.term - ref.term) / Math.max(Math.abs(ref.term), 1e-30);
          if (!(le < lossTol)) failures.push(`${what}: term ${got.term} vs ${ref.term}`);
          const ge = await gradError(new x2i.Tensor(got.grad), new x2i.Tensor(ref.grad), dtype);
          if (!(ge < gradTol)) failures.push(`${what}: grad rel err ${ge}`);
        }
      }
      assert.deepEqual(failures, []);
    });
  }

  gpuIt('row-strided views (a narrow of a wider tensor, as at a single-stream tap) are read in place', async () => {
    const failures = [];
    for (const [dtype, D, wide] of [['bfloat16', 3072, 15360], ['float32', 3072, 3080], ['bfloat16', 1000, 1003]]) {
      const shape = [2, 37, D];
      const [t64, s64] = await pair([2, 37, wide], 77, 1, 0);
      const g64 = await x2i.randn([2, 37, wide], { seed: 78, dtype: 'float64' });
      const cut = (x) => new x2i.Tensor(probes().narrowView(x.handle, 2, 0, D));
      const [t, s, g] = [await t64.to({ dtype }), await s64.to({ dtype }), await g64.to({ dtype })];
      const packed = async (x) => x2i.Tensor.fromArray(await (await cut(x).to({ dtype: 'float64' })).toArray(), shape);  // a contiguous copy
      const ref = await probes().distillTap((await packed(t)).handle, (await packed(s)).handle, 'rkl', 3, (await packed(g)).handle);
      const [tc, sc, gc] = [await t.to({ device: 'cuda' }), await s.to({ device: 'cuda' }), await g.to({ device: 'cuda' })];
      const got = await probes().distillTap(cut(tc).handle, cut(sc).handle, 'rkl', 3, cut(gc).handle);
      const le = Math.abs(got.term - ref.term) / Math.abs(ref.term);
      const ge = await gradError(new x2i.Tensor(got.grad), new x2i.Tensor(ref.grad), dtype);
      if (!(le < 1e-3 && ge < 1e-2)) failures.push(`${dtype} ${D} of ${wide}: term ${got.term} vs ${ref.term}, grad ${ge}`);
    }
    assert.deepEqual(failures, []);
  });

  gpuIt('extreme inputs: large offsets, tiny spreads, a temperature of 0.5 (the max-shifted softmax)', async () => {
    const failures = [];
    let seed = 900;
    for (const [scale, offset, tau] of [[1, 1e4, 3], [1e-4, 1, 3], [30, 0, 0.5], [1, 0, 0.05]]) {
      for (const shape of [[1, 3, 3072], [1, 2, 1000]]) {
        const [t64, s64] = await pair(shape, seed += 2, scale, offset);
        const [t, s] = [await t64.to({ dtype: 'float32' }), await s64.to({ dtype: 'float32' })];  // the same rounded inputs
        const ref = await probes().distillTap((await t.to({ dtype: 'float64' })).handle, (await s.to({ dtype: 'float64' })).handle, 'rkl', tau);
        const got = await probes().distillTap((await t.to({ device: 'cuda' })).handle, (await s.to({ device: 'cuda' })).handle, 'rkl', tau);
        const le = Math.abs(got.term - ref.term) / Math.abs(ref.term);
        const ge = await x2i.relativeError(await new x2i.Tensor(got.grad).to({ device: 'cpu', dtype: 'float64' }), new x2i.Tensor(ref.grad));
        if (!(le < 1e-4 && ge < 1e-3)) failures.push(`×${scale}+${offset} τ=${tau} [${shape}]: term ${got.term} vs ${ref.term}, grad ${ge}`);
      }
    }
    assert.deepEqual(failures, []);
  });

  gpuIt('a NaN row is skipped with its layer, on the GPU too', async () => {
    const [t, s] = await pair([1, 1, 4, 64], 99, 1, 0);
    const v = await s.toArray();
    v[70] = NaN;
    const bad = x2i.Tensor.fromArray(v, [1, 1, 4, 64], { device: 'cuda' });
    const tt = await t.to({ device: 'cuda' });
    const r = await x2i.distillationLoss({ doubleImg: tt, doubleTxt: tt, single: tt }, { doubleImg: bad, doubleTxt: tt, single: tt }, { returnGrad: true });
    assert.equal(r.skipped, 1);
    assert.ok(Number.isFinite(r.loss));
    const g = await r.grads.doubleImg.toArray();
    assert.ok(g.every((x) => x === 0));
  });

  gpuIt('a NaN row in the backward form passes the incoming gradient through unchanged (3072 bf16, many rows)', async () => {
    const shape = [2, 777, 3072];
    const [t, s] = await pair(shape, 7, 1, 0);
    const v = await s.toArray();
    v[5 * 3072 + 17] = NaN;
    const bad = await x2i.Tensor.fromArray(v, shape).to({ device: 'cuda', dtype: 'bfloat16' });
    const inc = await x2i.randn(shape, { seed: 3, device: 'cuda', dtype: 'bfloat16' });
    const r = await probes().distillTap((await t.to({ device: 'cuda', dtype: 'bfloat16' })).handle, bad.handle, 'rkl', 3, inc.handle);
    assert.ok(!Number.isFinite(r.term));
    const a = await new x2i.Tensor(r.grad).toArray(), b = await inc.toArray();
    assert.ok(a.every((x, i) => x === b[i]));
  });
});
