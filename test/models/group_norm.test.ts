// x2i's GroupNorm (native/models/group_norm.cc: split statistics, one normalisation pass, LibTorch's backward) against
// LibTorch's group_norm in float64: forward and the gradients of ⟨dy, y⟩ w.r.t. x, weight and bias, on odd sizes,
// one group per channel, a row long enough to be split, and a 1-D map.
import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import type { Tensor } from '../../lib/index.js';
import { probes } from '../../lib/testing.js';

type Case = { shape: number[]; groups: number };
const cases: Case[] = [
  { shape: [2, 6, 5, 7], groups: 3 },
  { shape: [3, 4, 9], groups: 4 },
  { shape: [1, 64, 48, 64], groups: 2 },  // rows of 98 304: split into chunks
  { shape: [2, 12, 33, 17], groups: 1 },
];

async function run(c: Case, dtype: 'float32' | 'float64', method: 'split' | 'libtorch', seed: number) {
  const C = c.shape[1];
  const make = async (shape: number[], s: number, scale = 1, shift = 0) => {
    const t = await x2i.randn(shape, { seed: s, dtype: 'float64' });
    const a = Float64Array.from(await t.toArray() as Float64Array, (v) => v * scale + shift);
    return x2i.Tensor.fromArray(a, shape).to({ dtype });
  };
  const x = await make(c.shape, seed, 2, 0.5), w = await make([C], seed + 1, 0.5, 1), b = await make([C], seed + 2);
  const dy = await make(c.shape, seed + 3);
  const r = await probes().groupNorm(x.handle, c.groups, w.handle, b.handle, dy.handle, method, 1e-5);
  return Object.fromEntries(Object.entries(r).map(([k, h]) => [k, new x2i.Tensor(h)])) as Record<'y' | 'dx' | 'dw' | 'db', Tensor>;
}

describe('groupNorm (split statistics) vs LibTorch group_norm', () => {
  for (const c of cases) {
    it(`[${c.shape.join(', ')}] in ${c.groups} groups: float64 and float32`, async () => {
      const ref = await run(c, 'float64', 'libtorch', 7);
      for (const [dtype, tol] of [['float64', 1e-10], ['float32', 1e-5]] as const) {
        const got = await run(c, dtype, 'split', 7);
        for (const k of ['y', 'dx', 'dw', 'db'] as const) {
          expect(got[k].shape).toEqual(ref[k].shape);
          const e = await x2i.relativeError(await got[k].to({ dtype: 'float64' }), ref[k]);
          expect(e, `${k} ${dtype}`).toBeLessThanOrEqual(tol);
        }
      }
    });
  }

  it('names the shape when channels are not a multiple of the groups', async () => {
    const x = await x2i.randn([1, 6, 4, 4]), w = await x2i.randn([6]), b = await x2i.randn([6]);
    await expect(probes().groupNorm(x.handle, 4, w.handle, b.handle, x.handle, 'split')).rejects.toThrow(/\[1, 6, 4, 4\].*4 groups/);
  });
});
