// The tanh-GELU row kernel (native/kernels/gelu.cu), forward and input gradient, against LibTorch's at::gelu /
// at::gelu_backward on the same inputs: contiguous tensors, the column ranges FLUX's layers hand it (the single block's
// MLP part of linear1: every 21504 columns, 12288 of them), ranges whose start breaks 16-byte alignment (the scalar
// path), odd widths, 3-D views, bf16 / fp16 / float32. The whole model with the kernel against the composition:
// kernels.gpu.test.mjs.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as x2i from '../../dist/index.js';
import { probes } from '../../dist/testing.js';
import { f64 } from '../gpu_helpers.mjs';

const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';

// |a − b| relative to the size of what was summed: |b|, and for the gradient also |dy| (gelu'(x) = ½(1 + t) + ½x(1 − t²)·…
// passes through zero near x = −0.75, where its two terms of size ~½ cancel)
const maxRel = (a, b, dy) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), dy ? Math.abs(dy[i]) : 0, 1e-3));
  return m;
};
// one rounding apart at most (formulas equal in float32; the hardware may contract a multiply-add differently)
const ulp = { bfloat16: 2 ** -7, float16: 2 ** -10, float32: 2e-6 };

describe('tanh GELU by the row kernel = LibTorch, forward and backward', { skip }, () => {
  // [full shape], narrowed dim, start, length (null: the full tensor)
  const cases = [
    ['contiguous [7, 3072]', [7, 3072], null],
    ["FLUX's single-block MLP range [33, 21504][:, 9216:]", [33, 21504], [1, 9216, 12288]],
    ['unaligned start [9, 520][:, 3:403]', [9, 520], [1, 3, 400]],
    ['odd width [5, 1001]', [5, 1001], null],
    ['3-D row-strided [2, 17, 2048][:, :, 512:]', [2, 17, 2048], [2, 512, 1536]],
    ['one row [1, 8]', [1, 8], null],
  ];
  for (const dtype of ['bfloat16', 'float16', 'float32'])
    for (const [name, shape, narrow] of cases)
      it(`${dtype} ${name}`, async () => {
        const full = await x2i.randn(shape, { seed: shape[0] * 31 + shape.at(-1), device: 'cuda', dtype });
        const x = narrow ? new x2i.Tensor(probes().narrowView(full.handle, ...narrow)) : full;
        const dy = await x2i.randn(x.shape, { seed: 7, device: 'cuda', dtype });
        const k = await probes().geluTanhRows(x.handle, 'kernel', dy.handle);
        const t = await probes().geluTanhRows(x.handle, 'twin', dy.handle);
        const [yk, yt, dk, dt] = [k.y, t.y, k.dx, t.dx].map((h) => new x2i.Tensor(h));
        assert.deepEqual(yk.shape, x.shape);
        assert.deepEqual(dk.shape, x.shape);
        const ey = maxRel(await f64(yk), await f64(yt)), ed = maxRel(await f64(dk), await f64(dt), await f64(dy));
        assert.ok(ey <= 2 * ulp[dtype], `y: ${ey}`);
        assert.ok(ed <= 4 * ulp[dtype], `dx: ${ed}`);
        for (const v of [dy, yk, yt, dk, dt]) v.dispose();
        if (x !== full) x.dispose();
        full.dispose();
      });

  for (const dtype of ['bfloat16', 'float32'])
    it(`${dtype}: written into a strided column range of another tensor (out), nothing outside it touched`, async () => {
      const [M, n, pad] = [19, 1024, 40];
      const x = await x2i.randn([M, n], { seed: 3, device: 'cuda', dtype });
      const bufK = await x2i.randn([M, n + pad], { seed: 4, device: 'cuda', dtype });
      const bufT = await x2i.randn([M, n + pad], { seed: 4, device: 'cuda', dtype });  // the same draws
      const before = await f64(bufK);
      const outK = new x2i.Tensor(probes().narrowView(bufK.handle, 1, 8, n)), outT = new x2i.Tensor(probes().narrowView(bufT.handle, 1, 8, n));
      await probes().geluTanhRows(x.handle, 'kernel', undefined, outK.handle);
      await probes().geluTanhRows(x.handle, 'twin', undefined, outT.handle);
      const a = await f64(bufK), b = await f64(bufT);
      assert.ok(maxRel(a, b) <= 2 * ulp[dtype], `out: ${maxRel(a, b)}`);
      for (let r = 0; r < M; r++)
        for (const c of [0, 7, n + 8, n + pad - 1]) assert.equal(a[r * (n + pad) + c], before[r * (n + pad) + c]);
      for (const v of [x, bufK, bufT, outK, outT]) v.dispose();
    });

  it('refuses what it does not take (a column stride, float64), so that no caller relies on it silently', async () => {
    const x = await x2i.randn([4, 6], { seed: 1, device: 'cuda', dtype: 'float64' });
    await assert.rejects(probes().geluTanhRows(x.handle, 'kernel'), { code: 'ERR_NOT_SUPPORTED' });
    x.dispose();
  });
});
