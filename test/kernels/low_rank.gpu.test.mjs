// Unfused LoRA's one-pass kernel (native/kernels/low_rank.cu) against its LibTorch twin in float64 on the CPU:
// epilogue(y + k · u · upᵀ) with y and u column blocks of one tensor (as the stacked GEMM gives them), the three
// epilogues (none, tanh-GELU, gated residual with one gate row per sample), odd sizes (the scalar path), aligned
// sizes (the vectorised path; for bf16 / fp16 with ranks in whole chunks of 16 the tensor-core path, also with partial
// tiles), block-diagonal ups with the chunk mask, float32 / bfloat16 / float16.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as x2i from '../../dist/index.js';
import { probes } from '../../dist/testing.js';

const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';

// A seeded uniform(-1, 1) array; parts > 0: up block-diagonal, `parts` row blocks of rank/parts columns each.
function values(n, seed) {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}
function blockDiagonal(N, R, parts, seed) {
  const a = values(N * R, seed);
  const rows = Math.ceil(N / parts), cols = R / parts;
  for (let j = 0; j < N; ++j)
    for (let r = 0; r < R; ++r) if (Math.floor(j / rows) !== Math.floor(r / cols)) a[j * R + r] = 0;
  return a;
}

const cases = [
  { M: 37, N: 45, R: 5, B: 1 },                    // odd everything: the scalar path, partial tiles
  { M: 130, N: 200, R: 33, B: 2 },                 // three rank chunks, two samples' gates
  { M: 256, N: 384, R: 48, B: 1, parts: 3 },       // a fused qkv's block-diagonal up, masked chunks
  { M: 4096, N: 3072, R: 16, B: 1 },               // FLUX's image stream at 1024², rank 16
  { M: 512, N: 1024, R: 64, B: 2, parts: 4 },      // linear1-like: four parts
  { M: 100, N: 136, R: 32, B: 2 },                 // the tensor-core path (16-bit, whole rank chunks) with partial tiles
];

async function inputs(c, device, dtype) {
  const t = (data, shape) => x2i.Tensor.fromArray(data, shape).to({ device, dtype });
  const yAug = await t(values(c.M * (c.N + c.R), 1), [c.M, c.N + c.R]);
  const up = await t(c.parts ? blockDiagonal(c.N, c.R, c.parts, 2) : values(c.N * c.R, 2).map((v) => v * 0.1), [c.N, c.R]);
  const res = await t(values(c.M * c.N, 3), [c.M, c.N]);
  const gate = await t(values(c.B * c.N, 4), [c.B, c.N]);
  return { yAug, up, res, gate };
}

async function run(c, device, dtype, epilogue, method, mask) {
  const i = await inputs(c, device, dtype);
  const gated = epilogue === 'gated';
  const h = await probes().lowRankAdd(i.yAug.handle, c.R, i.up.handle, 0.75, epilogue, gated ? i.res.handle : undefined,
    gated ? i.gate.handle : undefined, method, mask);
  return new x2i.Tensor(h).to({ device: 'cpu', dtype: 'float64' });
}

describe('lowRankAdd (unfused LoRA in one pass) on CUDA', () => {
  for (const c of cases) {
    for (const epilogue of ['none', 'gelu', 'gated']) {
      it(`M ${c.M}, N ${c.N}, rank ${c.R}${c.parts ? ` in ${c.parts} parts` : ''}: ${epilogue}`, { skip }, async () => {
        const ref = await run(c, 'cpu', 'float64', epilogue, 'composite');
        for (const mask of c.parts ? [false, true] : [false]) {
          const f32 = await run(c, 'cuda', 'float32', epilogue, 'kernel', mask);
          const e32 = await x2i.relativeError(f32, ref);
          assert.ok(e32 <= 1e-5, `float32${mask ? ' masked' : ''}: rel err ${e32}`);
        }
        for (const dtype of ['bfloat16', 'float16']) {
          const got = await run(c, 'cuda', dtype, epilogue, 'kernel', !!c.parts);
          const twin = await run(c, 'cuda', dtype, epilogue, 'composite');  // LibTorch's ops on the same rounded inputs
          const [e, eTwin] = [await x2i.relativeError(got, ref), await x2i.relativeError(twin, ref)];
          assert.ok(e <= 1.25 * eTwin + 1e-4, `${dtype}: rel err ${e} (LibTorch twin ${eTwin})`);
        }
      });
    }
  }

  it('rejects mismatched shapes with an error naming them', { skip }, async () => {
    const c = cases[0];
    const i = await inputs(c, 'cuda', 'float32');
    await assert.rejects(probes().lowRankAdd(i.yAug.handle, c.R + 1, i.up.handle, 1, 'none', undefined, undefined, 'kernel'),
      /lowRankAdd: yAug \[37, 50\], rank 6, up \[45, 5\]/);
  });
});
