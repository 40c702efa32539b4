// x2i's GroupNorm on CUDA (native/models/group_norm.cc) against LibTorch's group_norm in float64 on the CPU, and as
// accurate in bf16 as LibTorch's own CUDA kernel: odd sizes, LightControl's 512² maps in two groups, the VAE's
// 1024² maps in 32 groups. Forward and the gradients of ⟨dy, y⟩.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as x2i from '../../dist/index.js';
import { probes } from '../../dist/testing.js';

const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const cases = [
  { shape: [2, 6, 5, 7], groups: 3 },
  { shape: [3, 10, 37], groups: 5 },
  { shape: [1, 64, 512, 512], groups: 2 },
  { shape: [1, 128, 1024, 1024], groups: 32 },
];

async function run(c, device, dtype, method) {
  const C = c.shape[1];
  const t = async (shape, seed) => (await x2i.randn(shape, { seed, dtype: 'float32' })).to({ device, dtype });
  const [x, w, b, dy] = [await t(c.shape, 1), await t([C], 2), await t([C], 3), await t(c.shape, 4)];
  const r = await probes().groupNorm(x.handle, c.groups, w.handle, b.handle, dy.handle, method, 1e-6);
  const out = {};
  for (const [k, h] of Object.entries(r)) out[k] = await new x2i.Tensor(h).to({ device: 'cpu', dtype: 'float64' });
  return out;
}

describe('groupNorm on CUDA', () => {
  for (const c of cases) {
    it(`[${c.shape.join(', ')}] in ${c.groups} groups`, { skip }, async () => {
      const ref = await run(c, 'cpu', 'float64', 'libtorch');
      const f32 = await run(c, 'cuda', 'float32', 'split');
      const bf = await run(c, 'cuda', 'bfloat16', 'split'), bfTorch = await run(c, 'cuda', 'bfloat16', 'libtorch');
      for (const k of ['y', 'dx', 'dw', 'db']) {
        const e32 = await x2i.relativeError(f32[k], ref[k]);
        assert.ok(e32 <= 1e-4, `${k} float32: rel err ${e32}`);
        const [e, eTorch] = [await x2i.relativeError(bf[k], ref[k]), await x2i.relativeError(bfTorch[k], ref[k])];
        assert.ok(e <= Math.max(1.25 * eTorch, 1e-2), `${k} bf16: rel err ${e} (LibTorch's kernel ${eTorch})`);
      }
    });
  }
});
