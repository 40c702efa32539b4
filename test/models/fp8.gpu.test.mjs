// FP8 block weights on the GPU (native/models/fp8.cc, native/kernels/fp8.cu): the activation kernel bit for bit
// against its LibTorch twin (bf16 / fp16 / float32, odd and aligned widths, row-strided views, zero rows); the FP8
// tensor-core GEMM (at::_scaled_mm, per-row scales, bias in the epilogue) and the layer's input gradient against the
// float64 product of the same quantized operands on the CPU, at odd and FLUX.1 sizes; a FLUX transformer with
// quantize: 'fp8' against the same seed's bf16 model (the same draws, quantized), its weights' memory halved.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as x2i from '../../dist/index.js';
import { probes } from '../../dist/testing.js';
import { f64, relErrOf } from '../gpu_helpers.mjs';

const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';

// the raw e4m3 bytes of a float8 tensor, as float64 values (exact)
const bits = (t) => f64(t);

describe('FP8 activations: kernel = LibTorch twin, bit for bit', { skip }, () => {
  for (const dtype of ['bfloat16', 'float16', 'float32'])
    for (const [M, K, strided] of [[1, 16, false], [7, 3072, false], [6, 9216, false], [33, 15360, false], [4, 21504, false], [3, 24584, false], [5, 100, false], [64, 12288, true], [3, 24, true]])
      it(`${dtype} [${M}, ${K}]${strided ? ' (a row-strided view)' : ''}`, async () => {
        const full = await x2i.randn([M, strided ? K + 40 : K], { seed: M + K, device: 'cuda', dtype });
        const x = strided ? new x2i.Tensor(probes().narrowView(full.handle, 1, 8, K)) : full;
        const k = await probes().fp8QuantizeRows(x.handle, 'kernel');
        const t = await probes().fp8QuantizeRows(x.handle, 'twin');
        const [qk, qt] = [new x2i.Tensor(k.q), new x2i.Tensor(t.q)];
        const [sk, st] = [new x2i.Tensor(k.scale), new x2i.Tensor(t.scale)];
        assert.equal(qk.dtype, 'float8_e4m3fn');
        assert.deepEqual(await sk.toArray(), await st.toArray());
        assert.deepEqual(await bits(qk), await bits(qt));
        for (const v of [qk, qt, sk, st]) v.dispose();
        if (x !== full) x.dispose();
        full.dispose();
      });

  // the backward's form: the weight's row scales as column factors of dy
  for (const dtype of ['bfloat16', 'float32'])
    for (const [M, K, offset] of [[5, 3072, 0], [9, 100, 0], [64, 15360, 0], [4, 21504, 0], [6, 3072, 1]])
      it(`${dtype} [${M}, ${K}] with column scales${offset ? ' (scales not 16-byte aligned)' : ''}`, async () => {
        const x = await x2i.randn([M, K], { seed: M, device: 'cuda', dtype });
        const cpu = x2i.Tensor.fromArray(new Float32Array(K + offset).map((_, j) => 2 ** ((j % 9) - 4) * (1 + j / K)), [K + offset]);
        const full = await cpu.to({ device: 'cuda' });
        cpu.dispose();
        const c = offset ? new x2i.Tensor(probes().narrowView(full.handle, 0, offset, K)) : full;
        if (c !== full) full.dispose();
        const k = await probes().fp8QuantizeRows(x.handle, 'kernel', c.handle);
        const t = await probes().fp8QuantizeRows(x.handle, 'twin', c.handle);
        const [qk, qt, sk, st] = [k.q, t.q, k.scale, t.scale].map((h) => new x2i.Tensor(h));
        assert.deepEqual(await sk.toArray(), await st.toArray());
        assert.deepEqual(await bits(qk), await bits(qt));
        for (const v of [x, c, qk, qt, sk, st]) v.dispose();
      });

  it('zero rows give zeros (scale 1e-12 / 448), not NaN', async () => {
    const x = await x2i.zeros([4, 64], { device: 'cuda', dtype: 'bfloat16' });
    const k = await probes().fp8QuantizeRows(x.handle, 'kernel');
    const q = new x2i.Tensor(k.q), s = new x2i.Tensor(k.scale);
    assert.ok((await bits(q)).every((v) => v === 0));
    assert.ok((await s.toArray()).every((v) => v === Math.fround(Math.fround(1e-12) * Math.fround(1 / 448))));
    for (const v of [x, q, s]) v.dispose();
  });
});

describe("the FP8 backward's weight transposition: kernel = LibTorch's copy, byte for byte", { skip }, () => {
  // tiles of 64: exact, ragged on both sides, one row, widths not multiples of 4 (LibTorch's copy)
  for (const [R, C] of [[64, 128], [3072, 64], [100, 68], [4, 260], [132, 36], [5, 7], [12, 6]])
    it(`[${R}, ${C}]`, async () => {
      const x = await x2i.randn([R, C], { seed: R * C, device: 'cuda', dtype: 'bfloat16' });
      const { q, scale } = await probes().fp8QuantizeRows(x.handle, 'twin');
      const q8 = new x2i.Tensor(q);
      const t = new x2i.Tensor(await probes().fp8Transpose(q));
      assert.deepEqual(t.shape, [C, R]);
      assert.equal(t.dtype, 'float8_e4m3fn');
      const a = await bits(q8), b = await bits(t);
      const want = new Float64Array(R * C);
      for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) want[c * R + r] = a[r * C + c];
      assert.deepEqual(b, want);
      for (const v of [x, q8, t, new x2i.Tensor(scale)]) v.dispose();
    });
});

// whether this GPU runs FP8 GEMMs (compute capability 8.9+): what the layer reports for a bf16 call
let fp8Capable = false;
describe('an FP8 layer on tensor cores = the float64 product of its quantized operands', { skip }, () => {
  it('reports its path', async () => {
    const x = await x2i.randn([4, 64], { seed: 1, device: 'cuda', dtype: 'bfloat16' }), w = await x2i.randn([32, 64], { seed: 2, device: 'cuda', dtype: 'bfloat16' });
    const r = await probes().fp8Linear(x.handle, w.handle, undefined, 'gemm');
    fp8Capable = r.path === 'scaled_mm';
    for (const h of [r.y, r.w8, r.scale]) new x2i.Tensor(h).dispose();
    x.dispose(); w.dispose();
  });
  // [M, K, N]: odd token counts; FLUX.1's qkv widths, linear2 (15360 in), a modulation (one row)
  for (const [M, K, N] of [[1, 64, 48], [77, 256, 160], [1024, 3072, 9216], [512, 15360, 3072], [1, 3072, 18432], [9, 40, 24]])
    for (const dtype of ['bfloat16', 'float16'])
      it(`${dtype} [${M}, ${K}] · [${N}, ${K}]ᵀ${K % 16 ? ' (K not a multiple of 16: the twin path on the GPU)' : ''}`, async () => {
        const x = await x2i.randn([M, K], { seed: 1, device: 'cuda', dtype });
        const w = await x2i.randn([N, K], { seed: 2, device: 'cuda', dtype });
        const b = await x2i.randn([N], { seed: 3, device: 'cuda', dtype });
        const dy = await x2i.randn([M, N], { seed: 4, device: 'cuda', dtype });
        const r = await probes().fp8Linear(x.handle, w.handle, b.handle, 'gemm', dy.handle);
        const ref = await probes().fp8Linear(x.handle, w.handle, b.handle, 'twin64', dy.handle);
        const y = new x2i.Tensor(r.y), y64 = new x2i.Tensor(ref.y), dx = new x2i.Tensor(r.dx), dx64 = new x2i.Tensor(ref.dx);
        assert.equal(y.device, 'cuda:0');
        // FP8 tensor cores for bf16 with widths in multiples of 16 (on compute capability 8.9+); fp16 and odd widths: the twin
        if (dtype === 'float16' || K % 16 || N % 16) assert.deepEqual([r.path, r.backwardPath], ['twin', 'dequantized']);
        else if (fp8Capable) assert.deepEqual([r.path, r.backwardPath], ['scaled_mm', 'scaled_mm']);
        // one rounding to 16 bits after float32 accumulation
        const e = relErrOf(await f64(y), await f64(y64));
        assert.ok(e < (dtype === 'bfloat16' ? 5e-3 : 1e-3), `y: relative error ${e}`);
        const w8 = new x2i.Tensor(r.w8), sc = new x2i.Tensor(r.scale);
        const wd = await f64(w8), s = await sc.toArray(), dyv = await f64(dy), dxv = await f64(dx);
        if (r.backwardPath === 'scaled_mm') {
          // on FP8 tensor cores: the float64 product of the same quantized operands, q(dy · diag(scale)) · w8, rounded once
          const ed = relErrOf(dxv, await f64(dx64));
          assert.ok(ed < 5e-3, `dx (FP8 backward): relative error ${ed}`);
        } else if (M * N * K <= 4e8) {
          // dx = dy · (w8 · scale): the dequantized weights in the model dtype
          const want = new Float64Array(M * K);
          for (let i = 0; i < M; i++)
            for (let n = 0; n < N; n++) {
              const g = dyv[i * N + n] * s[n];
              for (let k = 0; k < K; k++) want[i * K + k] += g * wd[n * K + k];
            }
          const ed = relErrOf(dxv, want);
          assert.ok(ed < (dtype === 'bfloat16' ? 1e-2 : 2e-3), `dx: relative error ${ed}`);
        }
        for (const v of [x, w, b, dy, y, y64, dx, dx64, w8, sc]) v.dispose();
      });
});

describe('X2I_FP8_BACKWARD=dequantize: the input gradient through the dequantized weights', { skip }, () => {
  it('bf16 [64, 3072] · [9216, 3072]ᵀ: the path reported, dx = dy · (w8 · scale)', async () => {
    const [M, K, N] = [64, 3072, 9216];
    const x = await x2i.randn([M, K], { seed: 1, device: 'cuda', dtype: 'bfloat16' });
    const w = await x2i.randn([N, K], { seed: 2, device: 'cuda', dtype: 'bfloat16' });
    const dy = await x2i.randn([M, N], { seed: 4, device: 'cuda', dtype: 'bfloat16' });
    process.env.X2I_FP8_BACKWARD = 'dequantize';
    let r;
    try { r = await probes().fp8Linear(x.handle, w.handle, undefined, 'gemm', dy.handle); } finally { delete process.env.X2I_FP8_BACKWARD; }
    assert.equal(r.backwardPath, 'dequantized');
    const dx = new x2i.Tensor(r.dx), w8 = new x2i.Tensor(r.w8), sc = new x2i.Tensor(r.scale);
    const wd = await f64(w8), s = await sc.toArray(), dyv = await f64(dy), dxv = await f64(dx);
    const rows = 4, want = new Float64Array(rows * K);  // the first rows in float64
    for (let i = 0; i < rows; i++)
      for (let n = 0; n < N; n++) {
        const g = dyv[i * N + n] * s[n];
        for (let k = 0; k < K; k++) want[i * K + k] += g * wd[n * K + k];
      }
    const e = relErrOf(dxv.subarray(0, rows * K), want);
    assert.ok(e < 1e-2, `dx: relative error ${e}`);
    for (const v of [x, w, dy, dx, w8, sc, new x2i.Tensor(r.y)]) v.dispose();
  });
});

describe('FluxTransformer with quantize: fp8 on the GPU', { skip }, () => {
  it('the bf16 model of the same seed, quantized: close, half the weight memory, and faster per forward', async () => {
    const cfg = { num_layers: 2, num_single_layers: 4 };  // FLUX.1-dev widths, fewer blocks
    const B = 1, T = 512, N = 4096;
    const ins = { hiddenStates: await x2i.randn([B, N, 64], { seed: 1, device: 'cuda', dtype: 'bfloat16' }),
      encoderHiddenStates: await x2i.randn([B, T, 4096], { seed: 2, device: 'cuda', dtype: 'bfloat16' }),
      pooledProjections: await x2i.randn([B, 768], { seed: 3, device: 'cuda', dtype: 'bfloat16' }),
      timestep: x2i.Tensor.fromArray(new Float32Array([1]), [1]), guidance: x2i.Tensor.fromArray(new Float32Array([4]), [1]),
      imgIds: x2i.FluxPipeline.imageIds(128, 128), txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3]) };  // 64 × 64 tokens
    const mem = () => x2i.cuda.memory('cuda').allocated;
    const m0 = mem();
    const bf = await x2i.FluxTransformer.fromConfig(cfg, { device: 'cuda', dtype: 'bfloat16', seed: 7 });
    const m1 = mem();
    const f8 = await x2i.FluxTransformer.fromConfig(cfg, { device: 'cuda', dtype: 'bfloat16', seed: 7, quantize: 'fp8' });
    const m2 = mem();
    assert.equal(f8.quantize, 'fp8');
    assert.ok((m2 - m1) < 0.56 * (m1 - m0), `weights: fp8 ${(m2 - m1) / 2 ** 30} GiB vs bf16 ${(m1 - m0) / 2 ** 30} GiB`);
    const a = await bf.forward(ins, { capture: true }), b = await f8.forward(ins, { capture: true });
    for (const [k, ta, tb] of [['sample', a.sample, b.sample], ['single', a.captures.single, b.captures.single],
      ['doubleImg', a.captures.doubleImg, b.captures.doubleImg]]) {
      const e = relErrOf(await f64(tb), await f64(ta));
      assert.ok(e > 1e-4 && e < 0.1, `${k}: fp8 vs bf16 relative error ${e}`);
    }
    const time = async (m) => {
      await m.forward(ins);
      await x2i.cuda.synchronize();
      const t0 = performance.now();
      for (let i = 0; i < 5; i++) (await m.forward(ins)).sample.dispose();
      await x2i.cuda.synchronize();
      return (performance.now() - t0) / 5;
    };
    const [tb, t8] = [await time(bf), await time(f8)];
    if (fp8Capable) assert.ok(t8 < tb, `forward: fp8 ${t8.toFixed(1)} ms vs bf16 ${tb.toFixed(1)} ms`);
    for (const o of [a, b]) { o.sample.dispose(); for (const t of Object.values(o.captures)) t.dispose(); }
    for (const t of Object.values(ins)) t.dispose();
    bf.dispose();
    f8.dispose();
  });
});

describe('fp8TransposedWeights: the kept transposed weights give the same training step', { skip }, () => {
  it('distillationStep: loss and gradients bit for bit equal to the per-backward transposition; more weight memory', async () => {
    const cfg = { num_layers: 1, num_single_layers: 2 };  // FLUX.1-dev widths, fewer blocks
    const B = 1, T = 64, N = 256;
    const common = { hiddenStates: await x2i.randn([B, N, 64], { seed: 1, device: 'cuda', dtype: 'bfloat16' }),
      timestep: x2i.Tensor.fromArray(new Float32Array([0.7]), [1]), guidance: x2i.Tensor.fromArray(new Float32Array([3.5]), [1]),
      imgIds: x2i.FluxPipeline.imageIds(32, 32), txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3]) };  // 16 × 16 tokens
    const teacher = { ...common, encoderHiddenStates: await x2i.randn([B, T, 4096], { seed: 2, device: 'cuda', dtype: 'bfloat16' }),
      pooledProjections: await x2i.randn([B, 768], { seed: 3, device: 'cuda', dtype: 'bfloat16' }) };
    const student = { ...common, encoderHiddenStates: await x2i.randn([B, T, 4096], { seed: 4, device: 'cuda', dtype: 'bfloat16' }),
      pooledProjections: await x2i.randn([B, 768], { seed: 5, device: 'cuda', dtype: 'bfloat16' }) };
    const mem = () => x2i.cuda.memory('cuda').allocated;
    const m0 = mem();
    const plain = await x2i.FluxTransformer.fromConfig(cfg, { device: 'cuda', dtype: 'bfloat16', seed: 7, quantize: 'fp8' });
    const m1 = mem();
    const kept = await x2i.FluxTransformer.fromConfig(cfg, { device: 'cuda', dtype: 'bfloat16', seed: 7, quantize: 'fp8', fp8TransposedWeights: true });
    const m2 = mem();
    assert.equal(plain.fp8TransposedWeights, false);
    assert.equal(kept.fp8TransposedWeights, fp8Capable);  // kept only where the backward runs on FP8 tensor cores
    if (fp8Capable) assert.ok((m2 - m1) > 1.5 * (m1 - m0), `weights: kept ${(m2 - m1) / 2 ** 30} GiB vs plain ${(m1 - m0) / 2 ** 30} GiB`);
    const a = await plain.distillationStep(teacher, student), b = await kept.distillationStep(teacher, student);
    assert.equal(b.loss, a.loss);
    for (const k of ['encoderHiddenStates', 'pooledProjections']) {
      const [ga, gb] = [await f64(a.grad[k]), await f64(b.grad[k])];
      assert.ok(ga.some((v) => v !== 0), `${k}: a zero gradient`);
      assert.deepEqual(gb, ga, k);
    }
    for (const r of [a, b]) for (const t of Object.values(r.grad)) t.dispose();
    for (const t of new Set([...Object.values(teacher), ...Object.values(student)])) t.dispose();
    plain.dispose();
    kept.dispose();
  });
});
