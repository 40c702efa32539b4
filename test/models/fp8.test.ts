// FP8 block weights (native/models/fp8.cc): the quantization's arithmetic, the layer against the float64 product of
// the same quantized operands, its input gradient, and a whole FLUX transformer loaded with quantize: 'fp8' (the
// golden checkpoint, LoRA on top, what is refused). On the CPU the layers run the twin (a dequantized matmul); the
// FP8 tensor-core path is compared with it in fp8.gpu.test.mjs.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { FluxTransformer, Tensor } from '../../lib/index.js';
import { probes } from '../../lib/testing.js';
import { fluxInputsOf, golden, relErr } from '../helpers.js';

const folder = path.join(golden, 'flux-transformer');
const loraDir = path.join(golden, 'flux-lora');
let io: Record<string, Tensor>;
let loraIo: Record<string, Tensor>;
let inputs: x2i.FluxInputs;

beforeAll(async () => {
  io = await x2i.loadSafetensors(path.join(folder, 'io.safetensors'));
  loraIo = await x2i.loadSafetensors(path.join(loraDir, 'io.safetensors'));
  inputs = fluxInputsOf(io);
});
afterAll(() => {
  for (const t of [...Object.values(io), ...Object.values(loraIo)]) t.dispose();
});

const E4M3 = (() => {  // every finite non-negative float8_e4m3fn value
  const v: number[] = [];
  for (let e = 0; e < 16; e++)
    for (let m = 0; m < 8; m++) {
      if (e === 15 && m === 7) continue;  // NaN
      v.push(e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
    }
  return new Set(v);
})();

const relErrOf = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num += (a[i] - b[i]) ** 2, den += b[i] ** 2;
  return Math.sqrt(num / den);
};

async function f64(t: Tensor): Promise<Float64Array> {
  const d = await t.to({ dtype: 'float64' });
  const a = await d.toArray() as Float64Array;
  d.dispose();
  return a;
}

describe('FP8 activations: one scale per row', () => {
  it('scale = max|row| / 448 (× the float nearest 1/448); values on the e4m3 grid, within half a step of x / scale; zero rows stay zero', async () => {
    const M = 5, K = 48;
    const x = await x2i.randn([M, K], { seed: 3 });
    const xs = await x.toArray() as Float32Array;
    xs.fill(0, 2 * K, 3 * K);  // row 2: zeros
    xs[4 * K + 7] = 1e4;       // row 4: one outlier
    const xt = Tensor.fromArray(xs, [M, K]);
    const { q, scale } = await probes().fp8QuantizeRows(xt.handle, 'twin');
    const qt = new Tensor(q), st = new Tensor(scale);
    expect(qt.dtype).toBe('float8_e4m3fn');
    expect(st.shape).toEqual([M, 1]);
    const qv = await f64(qt), sv = await st.toArray() as Float32Array;
    for (let i = 0; i < M; i++) {
      const amax = Math.max(...xs.subarray(i * K, (i + 1) * K).map(Math.abs));
      expect(sv[i]).toBe(Math.fround(Math.max(amax, Math.fround(1e-12)) * Math.fround(1 / 448)));
      for (let j = 0; j < K; j++) {
        const v = qv[i * K + j], want = xs[i * K + j] / sv[i];
        expect(E4M3.has(Math.abs(v))).toBe(true);
        // half a step of e4m3: 2^-4 relative for normal numbers, 2^-10 absolute among the subnormals
        expect(Math.abs(v - want)).toBeLessThanOrEqual(Math.max(Math.abs(want) * 2 ** -4, 2 ** -10) * (1 + 1e-6));
      }
      expect(Math.max(...qv.subarray(i * K, (i + 1) * K).map(Math.abs))).toBe(i === 2 ? 0 : 448);
    }
    for (const t of [x, xt, qt, st]) t.dispose();
  });

  it('with column scales (the backward folds the weight scales into dy): x · c is quantized, the row scale from max|x · c|', async () => {
    const M = 3, K = 40;
    using x = await x2i.randn([M, K], { seed: 8 });
    const cv = new Float32Array(K).map((_, j) => 2 ** ((j % 7) - 3) * (1 + j / 64));
    using c = Tensor.fromArray(cv, [K]);
    const xs = await x.toArray() as Float32Array;
    const { q, scale } = await probes().fp8QuantizeRows(x.handle, 'twin', c.handle);
    using qt = new Tensor(q);
    using st = new Tensor(scale);
    const qv = await f64(qt), sv = await st.toArray() as Float32Array;
    for (let i = 0; i < M; i++) {
      const xc = Array.from(xs.subarray(i * K, (i + 1) * K), (v, j) => Math.fround(v * cv[j]));
      expect(sv[i]).toBe(Math.fround(Math.max(...xc.map(Math.abs)) * Math.fround(1 / 448)));
      for (let j = 0; j < K; j++) {
        const want = xc[j] / sv[i];
        expect(Math.abs(qv[i * K + j] - want)).toBeLessThanOrEqual(Math.max(Math.abs(want) * 2 ** -4, 2 ** -10) * (1 + 1e-6));
      }
    }
    using bad = Tensor.fromArray(new Float32Array(K - 1), [K - 1]);
    await expect(probes().fp8QuantizeRows(x.handle, 'twin', bad.handle)).rejects.toMatchObject({ code: 'ERR_SHAPE_MISMATCH' });
  });

  it('rejects what is not a 2-D floating tensor', async () => {
    using x = await x2i.randn([2, 3, 4], { seed: 1 });
    await expect(probes().fp8QuantizeRows(x.handle, 'twin')).rejects.toThrow(/2-D floating tensor/);
    await expect(probes().fp8QuantizeRows(x.handle, 'fast' as 'twin')).rejects.toThrow(/'kernel' or 'twin'/);
    using y = await x2i.randn([2, 16], { seed: 1 });  // the kernel never stands in silently for the twin
    await expect(probes().fp8QuantizeRows(y.handle, 'kernel')).rejects.toMatchObject({ code: 'ERR_NOT_SUPPORTED' });
  });
});

describe('an FP8 layer', () => {
  for (const dtype of ['float32', 'bfloat16'] as const)
    it(`${dtype}: y equals the float64 product of its quantized operands; dx = dy · W8 · scale`, async () => {
      const M = 7, K = 64, N = 48;
      const x = await x2i.randn([M, K], { seed: 1, dtype }), w = await x2i.randn([N, K], { seed: 2, dtype });
      const b = await x2i.randn([N], { seed: 4, dtype }), dy = await x2i.randn([M, N], { seed: 5, dtype });
      const r = await probes().fp8Linear(x.handle, w.handle, b.handle, 'gemm', dy.handle);
      const ref = await probes().fp8Linear(x.handle, w.handle, b.handle, 'twin64');
      const y = new Tensor(r.y), y64 = new Tensor(ref.y), dx = new Tensor(r.dx!);
      expect(y.dtype).toBe(dtype);
      expect([r.path, r.backwardPath]).toEqual(['twin', 'dequantized']);  // the CPU
      expect(relErrOf(await f64(y), await f64(y64))).toBeLessThan(dtype === 'float32' ? 1e-6 : 8e-3);
      // the quantization really happened: y differs from the full-precision product by FP8's rounding
      const xv = await f64(x), wv = await f64(w), bv = await f64(b), yv = await f64(y);
      const yFull = new Float64Array(M * N);
      for (let i = 0; i < M; i++)
        for (let n = 0; n < N; n++) {
          let acc = bv[n];
          for (let k = 0; k < K; k++) acc += xv[i * K + k] * wv[n * K + k];
          yFull[i * N + n] = acc;
        }
      const eFull = relErrOf(yv, yFull);
      expect(eFull).toBeGreaterThan(1e-3);
      expect(eFull).toBeLessThan(0.06);
      // dx: dy · (w8 · scale) in float64
      const w8 = await f64(new Tensor(r.w8)), s = await new Tensor(r.scale).toArray() as Float32Array;
      const dyv = await f64(dy), dxv = await f64(dx), want = new Float64Array(M * K);
      for (let i = 0; i < M; i++)
        for (let k = 0; k < K; k++)
          for (let n = 0; n < N; n++) want[i * K + k] += dyv[i * N + n] * w8[n * K + k] * s[n];
      expect(relErrOf(dxv, want)).toBeLessThan(dtype === 'float32' ? 1e-6 : 8e-3);
      for (const t of [x, w, b, dy, y, y64, dx]) t.dispose();
    });

  it("the FP8 backward's reference: dx = q(dy · diag(scale)) · w8 in float64, with dy's row scales", async () => {
    const M = 5, K = 32, N = 48;
    using x = await x2i.randn([M, K], { seed: 1 });
    using w = await x2i.randn([N, K], { seed: 2 });
    using dy = await x2i.randn([M, N], { seed: 3 });
    const ref = await probes().fp8Linear(x.handle, w.handle, undefined, 'twin64', dy.handle);
    using dx = new Tensor(ref.dx!);
    using w8 = new Tensor(ref.w8);
    using scale = new Tensor(ref.scale);
    expect([dx.dtype, ...dx.shape]).toEqual(['float64', M, K]);
    // dy's quantization as the CUDA kernel does it (bit for bit its twin, fp8.gpu.test.mjs), then the product in float64
    const g = await probes().fp8QuantizeRows(dy.handle, 'twin', scale.handle);
    using g8 = new Tensor(g.q);
    using gs = new Tensor(g.scale);
    const gv = await f64(g8), gsv = await gs.toArray() as Float32Array, wv = await f64(w8), dxv = await f64(dx);
    const want = new Float64Array(M * K);
    for (let i = 0; i < M; i++)
      for (let n = 0; n < N; n++)
        for (let k = 0; k < K; k++) want[i * K + k] += gv[i * N + n] * gsv[i] * wv[n * K + k];
    expect(relErrOf(dxv, want)).toBeLessThan(1e-12);
    // against the exact gradient dy · (w8 · scale): e4m3's rounding of dy, no more
    const dyv = await f64(dy), sv = await scale.toArray() as Float32Array, exact = new Float64Array(M * K);
    for (let i = 0; i < M; i++)
      for (let n = 0; n < N; n++)
        for (let k = 0; k < K; k++) exact[i * K + k] += dyv[i * N + n] * sv[n] * wv[n * K + k];
    const e = relErrOf(dxv, exact);
    expect(e).toBeGreaterThan(1e-3);
    expect(e).toBeLessThan(0.06);
  });

  it('dy of the wrong shape is refused before anything runs', async () => {
    using x = await x2i.randn([3, 32], { seed: 1 });
    using w = await x2i.randn([16, 32], { seed: 2 });
    using dy = await x2i.randn([3, 15], { seed: 3 });
    await expect(probes().fp8Linear(x.handle, w.handle, undefined, 'gemm', dy.handle)).rejects.toMatchObject({ code: 'ERR_SHAPE_MISMATCH' });
  });

  it('weights: one scale per output row (max|row| / 448)', async () => {
    using x = await x2i.randn([2, 32], { seed: 1 });
    using w = await x2i.randn([16, 32], { seed: 2 });
    const r = await probes().fp8Linear(x.handle, w.handle, undefined, 'gemm');
    const wv = await w.toArray() as Float32Array, s = await new Tensor(r.scale).toArray() as Float32Array;
    expect(s.length).toBe(16);
    for (let n = 0; n < 16; n++) expect(s[n]).toBe(Math.fround(Math.max(...wv.subarray(n * 32, n * 32 + 32).map(Math.abs)) * Math.fround(1 / 448)));
  });
});

describe('FluxTransformer with quantize: fp8', () => {
  it('the golden checkpoint: close to the reference, not equal to it; same parameter count; both layouts agree', async () => {
    using plain = await FluxTransformer.fromPretrained(folder);
    using m = await FluxTransformer.fromPretrained(folder, { quantize: 'fp8' });
    using bfl = await FluxTransformer.fromPretrained(path.join(folder, 'flux-bfl.safetensors'),
      { quantize: 'fp8', config: { axes_dims_rope: [4, 6, 6] } });
    expect(m.quantize).toBe('fp8');
    expect(plain.quantize).toBe('none');
    expect(m.parameters).toBe(plain.parameters);
    const r = await m.forward(inputs, { capture: true });
    const e = await relErr(r.sample, io.sample);
    expect(e).toBeGreaterThan(1e-4);
    expect(e).toBeLessThan(0.05);
    for (const [k, g] of [['doubleImg', 'capture.double_img'], ['doubleTxt', 'capture.double_txt'], ['single', 'capture.single']] as const) {
      const ek = await relErr(r.captures![k], io[g]);
      expect(ek).toBeGreaterThan(1e-4);
      expect(ek).toBeLessThan(0.1);
    }
    const rb = await bfl.forward(inputs);
    expect(await relErr(rb.sample, r.sample)).toBeLessThan(1e-6);
    for (const t of [r.sample, rb.sample, ...Object.values(r.captures!)]) t.dispose();
  });

  it('random init: the bf16 model quantized (the same draws); the input gradient flows (the frozen student)', async () => {
    const cfg = { num_layers: 1, num_single_layers: 1, attention_head_dim: 16, num_attention_heads: 2, joint_attention_dim: 32,
      pooled_projection_dim: 16, axes_dims_rope: [4, 6, 6], in_channels: 16 };
    using a = await FluxTransformer.fromConfig(cfg, { seed: 3, quantize: 'fp8' });
    using b = await FluxTransformer.fromConfig(cfg, { seed: 3 });
    const ins = { hiddenStates: await x2i.randn([1, 8, 16], { seed: 1 }), encoderHiddenStates: await x2i.randn([1, 4, 32], { seed: 2 }),
      pooledProjections: await x2i.randn([1, 16], { seed: 3 }), timestep: Tensor.fromArray(new Float32Array([0.5]), [1]),
      guidance: Tensor.fromArray(new Float32Array([3.5]), [1]), imgIds: Tensor.fromArray(new Float32Array(24), [8, 3]),
      txtIds: Tensor.fromArray(new Float32Array(12), [4, 3]) };
    const ya = await a.forward(ins), yb = await b.forward(ins);
    const e = await relErr(ya.sample, yb.sample);
    expect(e).toBeGreaterThan(1e-5);
    expect(e).toBeLessThan(0.05);
    using gradSample = await x2i.randn([1, 8, 16], { seed: 9 });
    const ga = await a.forwardBackward(ins, { gradSample }), gb = await b.forwardBackward(ins, { gradSample });
    const eg = await relErr(ga.grad.encoderHiddenStates, gb.grad.encoderHiddenStates);
    expect(eg).toBeGreaterThan(1e-6);
    expect(eg).toBeLessThan(0.1);
    for (const t of [...Object.values(ins), ya.sample, yb.sample, ...Object.values(ga.grad), ...Object.values(gb.grad)]) t.dispose();
  });

  it('LoRA runs unfused on FP8 layers (its term in full precision); fusing and trainStep are refused', async () => {
    using m = await FluxTransformer.fromPretrained(folder, { quantize: 'fp8' });
    const base = (await m.forward(inputs)).sample;
    await m.loadLora(path.join(loraDir, 'lora_diffusers.safetensors'), { adapterName: 'style' });
    const adapted = (await m.forward(inputs)).sample;
    const off = (await m.forward(inputs, { loraScales: { style: 0 } })).sample;
    expect(await off.toArray()).toEqual(await base.toArray());
    // the adapted FP8 model as close to the adapted reference as the plain one to the plain reference; the adapter's
    // effect close to its effect on the float32 reference (that difference is small, so its FP8 error is relatively larger)
    const [a8, b8, aRef, bRef] = await Promise.all([adapted, base, loraIo['sample.scale_1'], io.sample].map(f64));
    expect(relErrOf(a8, aRef)).toBeLessThan(0.05);
    expect(relErrOf(a8.map((v, i) => v - b8[i]), aRef.map((v, i) => v - bRef[i]))).toBeLessThan(0.25);
    await expect(m.fuseLora()).rejects.toMatchObject({ code: 'ERR_NOT_SUPPORTED', message: /FP8/ });
    using target = await x2i.randn(inputs.hiddenStates.shape, { seed: 1 });
    await expect(m.trainStep(inputs, target)).rejects.toMatchObject({ code: 'ERR_NOT_SUPPORTED', message: /FP8/ });
    for (const t of [base, adapted, off]) t.dispose();
  });

  it('fp8TransposedWeights: on CPUs (the backward through the dequantized weights) nothing is kept; the same results; a non-boolean is refused', async () => {
    const cfg = { num_layers: 1, num_single_layers: 1, attention_head_dim: 16, num_attention_heads: 2, joint_attention_dim: 32,
      pooled_projection_dim: 16, axes_dims_rope: [4, 6, 6], in_channels: 16 };
    using a = await FluxTransformer.fromConfig(cfg, { seed: 3, quantize: 'fp8' });
    using b = await FluxTransformer.fromConfig(cfg, { seed: 3, quantize: 'fp8', fp8TransposedWeights: true });
    using c = await FluxTransformer.fromConfig(cfg, { seed: 3, fp8TransposedWeights: true });
    expect([a.fp8TransposedWeights, b.fp8TransposedWeights, c.fp8TransposedWeights]).toEqual([false, false, false]);
    const ins = { hiddenStates: await x2i.randn([1, 8, 16], { seed: 1 }), encoderHiddenStates: await x2i.randn([1, 4, 32], { seed: 2 }),
      pooledProjections: await x2i.randn([1, 16], { seed: 3 }), timestep: Tensor.fromArray(new Float32Array([0.5]), [1]),
      guidance: Tensor.fromArray(new Float32Array([3.5]), [1]), imgIds: Tensor.fromArray(new Float32Array(24), [8, 3]),
      txtIds: Tensor.fromArray(new Float32Array(12), [4, 3]) };
    using gradSample = await x2i.randn([1, 8, 16], { seed: 9 });
    const ga = await a.forwardBackward(ins, { gradSample }), gb = await b.forwardBackward(ins, { gradSample });
    expect(await gb.sample.toArray()).toEqual(await ga.sample.toArray());
    expect(await gb.grad.encoderHiddenStates.toArray()).toEqual(await ga.grad.encoderHiddenStates.toArray());
    for (const t of [...Object.values(ins), ga.sample, gb.sample, ...Object.values(ga.grad), ...Object.values(gb.grad)]) t.dispose();
    await expect(FluxTransformer.fromConfig(cfg, { quantize: 'fp8', fp8TransposedWeights: 'yes' as unknown as boolean }))
      .rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: /fp8TransposedWeights/ });
  });

  it('an unknown quantize option is a clear error', async () => {
    await expect(FluxTransformer.fromPretrained(folder, { quantize: 'int4' as 'fp8' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: /quantize/ });
    await expect(FluxTransformer.fromConfig({}, { quantize: 'fp4' as 'fp8' })).rejects.toThrow(/quantize/);
  });
});
