// FP8 block weights (FluxTransformer quantize: 'fp8', issue 15) against bf16 on the same seed, in one run on a GPU:
//   - generation: 28 Euler steps at 1024² (4096 image + 512 text tokens, one denoise call per step, as FluxPipeline;
//     no VAE), FLUX.1-dev size, median ms and the caching allocator's peak;
//   - X2I's distillation step through the frozen transformer (teacher forward + student forward + input-gradient
//     backward, 76 taps): ms, peak, and the loss in FP8 relative to bf16's (the issue's bound: within 1%); FP8 with its
//     backward on FP8 tensor cores (the default) and with X2I_FP8_BACKWARD=dequantize (dy times the dequantized weights);
//   - accuracy: the sample and the 76 taps at t = 1, guidance 4 of the bf16 and the FP8 model against the float32
//     model of the same seed (random init draws the same float32 values; bf16 rounds them, FP8 quantizes the bf16
//     values): the bound is FP8 error ≤ 2 × bf16 error; and the distillation step's gradient with respect to the
//     student's conditioning (what trains AlignNet) against the float32 model's, for bf16 and both FP8 backwards;
//   - the GEMMs alone at FLUX.1's shapes: bf16 at::linear against the FP8 layer (its activation quantization
//     included; the weight quantized once), timed in the worker (testing.benchFp8Linear).
//   node bench/fp8.mjs [--steps 28] [--iters 3] [--no-accuracy] [--json out.json]
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { probes } from '../dist/testing.js';

const { values: args } = parseArgs({ options: {
  steps: { type: 'string', default: '28' }, iters: { type: 'string', default: '3' },
  'no-accuracy': { type: 'boolean', default: false }, json: { type: 'string' },
} });
if (!x2i.cuda.isAvailable()) { console.error('bench/fp8.mjs needs CUDA'); process.exit(1); }
const dev = 'cuda', dt = 'bfloat16', steps = Number(args.steps), iters = Number(args.iters);
const T = 512, SIDE = 1024, lh = SIDE / 16, N = lh * lh;
const GiB = 2 ** 30;
const result = { date: new Date().toISOString(), steps, tokens: N + T, runs: {} };
const sync = () => x2i.cuda.synchronize(dev);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
async function timed(fn, n = iters, warm = 1) {
  for (let i = 0; i < warm; i++) await fn();
  await sync();
  x2i.cuda.memory(dev, { reset: true });
  const ts = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    await sync();
    ts.push(performance.now() - t0);
  }
  const m = x2i.cuda.memory(dev);  // reserved: a CUDA graph's pool is not in the allocated count
  return { ms: median(ts), all_ms: ts, peak_GiB: m.peakAllocated / GiB, peak_reserved_GiB: m.peakReserved / GiB };
}
const disposeAll = (o) => { for (const v of Object.values(o ?? {})) if (v instanceof x2i.Tensor) v.dispose(); else if (v && typeof v === 'object') disposeAll(v); };

// random conditioning of one prompt; the image ids of 64 × 64 patches (FluxPipeline.imageIds takes the latent
// height and width, 2 × patches)
const cond = async (seed) => ({
  encoderHiddenStates: await x2i.randn([1, T, 4096], { seed, device: dev, dtype: dt }),
  pooledProjections: await x2i.randn([1, 768], { seed: seed + 1, device: dev, dtype: dt }),
  imgIds: x2i.FluxPipeline.imageIds(2 * lh, 2 * lh, dev),
  txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device: dev }),
});

// X2I_FP8_BACKWARD, read by the native layer at each backward: 'dequantize' or unset (FP8 tensor cores)
const withBackward = async (mode, fn) => {
  if (mode) process.env.X2I_FP8_BACKWARD = mode;
  try { return await fn(); } finally { delete process.env.X2I_FP8_BACKWARD; }
};

async function bench(quantize) {
  const flux = await x2i.FluxTransformer.fromConfig({}, { device: dev, dtype: dt, seed: 0, quantize });
  await sync();
  const weights_GiB = x2i.cuda.memory(dev).allocated / GiB;
  const c = await cond(10);
  const guidance = x2i.Tensor.fromArray(new Float32Array([3.5]), [1], { device: dev });
  const { timesteps, sigmas } = new x2i.FlowMatchEulerScheduler().setTimesteps(steps, { imageSeqLen: N });
  const noise = await x2i.randn([1, N, 64], { seed: 5, device: dev, dtype: dt });
  const gen = await timed(async () => {
    let x = noise;
    for (let i = 0; i < steps; i++) {
      const r = await flux.denoise({ ...c, guidance, hiddenStates: x }, [timesteps[i]], [sigmas[i], sigmas[i + 1]], { returnStepLatents: false });
      if (x !== noise) x.dispose();
      x = r.latents;
    }
    x.dispose();
  });
  // the distillation step: teacher on one conditioning, student on another
  const s = await cond(20);
  const t = x2i.Tensor.fromArray(new Float32Array([0.7]), [1], { device: dev });
  const teacher = { ...c, hiddenStates: noise, timestep: t, guidance }, student = { ...s, hiddenStates: noise, timestep: t, guidance };
  const distill = async () => {
    let loss = 0;
    const step = await timed(async () => {
      const r = await flux.distillationStep(teacher, student);
      loss = r.loss;
      disposeAll(r.grad);
    });
    return { ...step, loss };
  };
  const out = { weights_GiB, generate: gen, distill_step: await distill() };
  if (quantize === 'fp8') out.distill_step_dequantized = await withBackward('dequantize', distill);
  flux.dispose();
  for (const v of [noise, guidance, t]) v.dispose();
  disposeAll(c); disposeAll(s);
  return out;
}

for (const q of ['none', 'fp8']) {
  result.runs[q] = await bench(q);
  const r = result.runs[q];
  console.error(`${q}: weights ${r.weights_GiB.toFixed(1)} GiB, generation ${r.generate.ms.toFixed(0)} ms (peak ${r.generate.peak_GiB.toFixed(1)} GiB), ` +
    `distillation step ${r.distill_step.ms.toFixed(0)} ms (peak ${r.distill_step.peak_GiB.toFixed(1)} GiB), loss ${r.distill_step.loss}` +
    (r.distill_step_dequantized ? `; backward dequantized ${r.distill_step_dequantized.ms.toFixed(0)} ms` : ''));
}

// ---- accuracy against float32 on the same seed
if (!args['no-accuracy']) {
  const c = await cond(30);
  const ins = { ...c, hiddenStates: await x2i.randn([1, N, 64], { seed: 31, device: dev, dtype: dt }),
    timestep: x2i.Tensor.fromArray(new Float32Array([1]), [1]), guidance: x2i.Tensor.fromArray(new Float32Array([4]), [1]) };
  const outputs = {};
  for (const [name, dtype, quantize] of [['float32', 'float32', 'none'], ['bf16', dt, 'none'], ['fp8', dt, 'fp8']]) {
    const m = await x2i.FluxTransformer.fromConfig({}, { device: dev, dtype, seed: 0, quantize });
    const r = await m.forward(ins, { capture: true });
    m.dispose();
    // kept in float32 on the device (the float32 taps: 4 GiB)
    outputs[name] = { sample: await r.sample.to({ dtype: 'float32' }) };
    for (const [k, v] of Object.entries(r.captures)) outputs[name][k] = await v.to({ dtype: 'float32' });
    disposeAll(r);
  }
  result.accuracy = {};
  for (const name of ['bf16', 'fp8']) {
    result.accuracy[name] = {};
    for (const k of ['sample', 'doubleImg', 'doubleTxt', 'single'])
      result.accuracy[name][k] = await x2i.relativeError(outputs[name][k], outputs.float32[k]);
  }
  for (const o of Object.values(outputs)) disposeAll(o);
  disposeAll(ins);

  // the distillation step's input gradient (teacher and student conditionings of their own, t = 0.7, guidance 3.5)
  const tc = await cond(40), sc = await cond(41);
  const x = await x2i.randn([1, N, 64], { seed: 42, device: dev, dtype: dt });
  const scalars = { timestep: x2i.Tensor.fromArray(new Float32Array([0.7]), [1]), guidance: x2i.Tensor.fromArray(new Float32Array([3.5]), [1]) };
  const grads = {};
  for (const [name, dtype, quantize, backward] of [['float32', 'float32', 'none'], ['bf16', dt, 'none'], ['fp8', dt, 'fp8'],
    ['fp8_dequantized', dt, 'fp8', 'dequantize']]) {
    const m = await x2i.FluxTransformer.fromConfig({}, { device: dev, dtype, seed: 0, quantize });
    const as = async (o) => ({ ...o, encoderHiddenStates: await o.encoderHiddenStates.to({ dtype }), pooledProjections: await o.pooledProjections.to({ dtype }) });
    const [ti, si] = [await as(tc), await as(sc)];
    const hs = await x.to({ dtype });
    const r = await withBackward(backward, () => m.distillationStep({ ...ti, ...scalars, hiddenStates: hs }, { ...si, ...scalars, hiddenStates: hs }));
    grads[name] = { loss: r.loss, encoderHiddenStates: await r.grad.encoderHiddenStates.to({ dtype: 'float32' }),
      pooledProjections: await r.grad.pooledProjections.to({ dtype: 'float32' }) };
    disposeAll(r.grad);
    for (const o of [ti, si]) { o.encoderHiddenStates.dispose(); o.pooledProjections.dispose(); }
    hs.dispose();
    await m.disposeAsync();  // the float32 model's 48 GB off the card before the next one loads
  }
  result.gradient_accuracy = {};
  for (const name of ['bf16', 'fp8', 'fp8_dequantized'])
    result.gradient_accuracy[name] = {
      loss: grads[name].loss / grads.float32.loss - 1,
      encoderHiddenStates: await x2i.relativeError(grads[name].encoderHiddenStates, grads.float32.encoderHiddenStates),
      pooledProjections: await x2i.relativeError(grads[name].pooledProjections, grads.float32.pooledProjections),
    };
  for (const g of Object.values(grads)) disposeAll(g);
  disposeAll(tc); disposeAll(sc); disposeAll(scalars); x.dispose();
}

// ---- the GEMMs alone: bf16 x·Wᵀ vs the FP8 layer (with its activation quantization), FLUX.1's shapes at 1024²
result.gemms = [];
for (const [name, M, K, Nn] of [['double qkv (image)', 4096, 3072, 9216], ['double mlp.0', 4096, 3072, 12288],
  ['double mlp.2', 4096, 12288, 3072], ['single linear1', 4608, 3072, 21504], ['single linear2', 4608, 15360, 3072]]) {
  const x = await x2i.randn([M, K], { seed: 1, device: dev, dtype: dt }), wt = await x2i.randn([Nn, K], { seed: 2, device: dev, dtype: dt });
  const r = await probes().benchFp8Linear(x.handle, wt.handle, 20);  // timed in the worker; the weight quantized once
  const flop = 2 * M * K * Nn;
  result.gemms.push({ name, M, K, N: Nn, path: r.path, bf16_ms: r.bf16Ms, fp8_ms: r.fp8Ms, bf16_TFLOPs: flop / r.bf16Ms / 1e9, fp8_TFLOPs: flop / r.fp8Ms / 1e9 });
  for (const v of [x, wt]) v.dispose();
}

// ---- report
const R = result.runs;
console.log(`FP8 block weights vs bf16, FLUX.1-dev size, 1024², ${steps} steps — ${result.date}`);
console.log('| run | bf16 | FP8 | FP8 / bf16 |');
console.log('|---|---:|---:|---:|');
const row = (name, a, b, unit = 'ms', d = 0) => console.log(`| ${name} | ${a.toFixed(d)} ${unit} | ${b.toFixed(d)} ${unit} | ${(b / a).toFixed(3)} |`);
row('weights on the device', R.none.weights_GiB, R.fp8.weights_GiB, 'GiB', 1);
row(`generation (${steps} steps, no VAE)`, R.none.generate.ms, R.fp8.generate.ms);
row('generation peak allocated', R.none.generate.peak_GiB, R.fp8.generate.peak_GiB, 'GiB', 1);
row('generation peak reserved (the CUDA graph pool included)', R.none.generate.peak_reserved_GiB, R.fp8.generate.peak_reserved_GiB, 'GiB', 1);
row('distillation step (teacher + student + input gradient)', R.none.distill_step.ms, R.fp8.distill_step.ms);
row('distillation step, FP8 backward dequantized (X2I_FP8_BACKWARD=dequantize)', R.none.distill_step.ms, R.fp8.distill_step_dequantized.ms);
row('distillation step peak', R.none.distill_step.peak_GiB, R.fp8.distill_step.peak_GiB, 'GiB', 1);
row('distillation loss', R.none.distill_step.loss, R.fp8.distill_step.loss, '', 4);
if (result.accuracy) {
  console.log('\nrelative error against the float32 model (same seed, t = 1, guidance 4):');
  console.log('| | sample | doubleImg | doubleTxt | single |');
  console.log('|---|---:|---:|---:|---:|');
  for (const n of ['bf16', 'fp8']) {
    const a = result.accuracy[n];
    console.log(`| ${n} | ${(a.sample * 100).toFixed(2)}% | ${(a.doubleImg * 100).toFixed(2)}% | ${(a.doubleTxt * 100).toFixed(2)}% | ${(a.single * 100).toFixed(2)}% |`);
  }
}
if (result.gradient_accuracy) {
  console.log("\nthe distillation step against the float32 model's (t = 0.7, guidance 3.5): loss, and the input gradient's relative error:");
  console.log('| | loss | encoderHiddenStates grad | pooledProjections grad |');
  console.log('|---|---:|---:|---:|');
  for (const [n, a] of Object.entries(result.gradient_accuracy))
    console.log(`| ${n} | ${(a.loss * 100).toFixed(3)}% | ${(a.encoderHiddenStates * 100).toFixed(2)}% | ${(a.pooledProjections * 100).toFixed(2)}% |`);
}
console.log('\n| GEMM | M × K × N | bf16 ms (no bias) | FP8 ms (activation quantization included) | bf16 TFLOP/s | FP8 TFLOP/s | speed-up | FP8 path |');
console.log('|---|---|---:|---:|---:|---:|---:|---|');
for (const g of result.gemms)
  console.log(`| ${g.name} | ${g.M} × ${g.K} × ${g.N} | ${g.bf16_ms.toFixed(3)} | ${g.fp8_ms.toFixed(3)} | ${g.bf16_TFLOPs.toFixed(0)} | ${g.fp8_TFLOPs.toFixed(0)} | ${(g.bf16_ms / g.fp8_ms).toFixed(2)}× | ${g.path} |`);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 2));
