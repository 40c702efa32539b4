// The X2I training step and the teacher's generation at real sizes on one GPU (issue 6), random bf16 weights
// (every model's fromConfig): FLUX.1-dev-size transformer (one copy, shared by teacher and student), T5-XXL-size
// and CLIP-L-size teacher encoders, a Qwen2.5-VL-7B-size MLLM and X2I's AlignNet; 1024² (4096 image tokens), 512
// text tokens, batch 1.
//   step = T5 + CLIP (teacher conditioning) + Qwen prefill with all 29 states, the three side by side (the baseline
//          runs them one after another) + X2ITrainer.trainStep (teacher
//          forward with its 76 taps, AlignNet, student forward + backward through the frozen transformer with the
//          fused loss, AlignNet backward, clipping, AdamW on float32 masters)
//   generation = T5 + CLIP + 28 Euler steps of the transformer + VAE decode at 1024²
// Peak memory: the caching allocator's peak over the timed steps (what must fit in 80 GB), with and without
// activation checkpointing. Baseline: the same step and generation as a PyTorch eager composition
// (--baseline bench/baselines/x2i_step.py; transformers T5 / CLIP / Qwen2.5-VL), run after this process has
// freed the GPU.
//   node bench/x2i_step.mjs [--baseline bench/baselines/x2i_step.py] [--compile (the baseline also times torch.compile of the generation)] [--compile-step (and of the training step)] [--fp8 (also the training step and the generation with FP8 block weights)] [--json out.json]
//                           [--steps 5] [--gen-iters 3]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { CLIP_L, QWEN_7B, T5_XXL, promptIds, teacherConditioning as realSizeTeacher } from './real_sizes.mjs';

const { values: args } = parseArgs({ options: {
  baseline: { type: 'string' }, compile: { type: 'boolean', default: false }, 'compile-step': { type: 'boolean', default: false }, fp8: { type: 'boolean', default: false }, json: { type: 'string' },
  steps: { type: 'string', default: '5' }, 'gen-iters': { type: 'string', default: '3' },
} });
if (!x2i.cuda.isAvailable()) { console.error('bench/x2i_step.mjs needs CUDA'); process.exit(1); }
const device = 'cuda', dtype = 'bfloat16', T = 512, GiB = 2 ** 30;
const steps = Number(args.steps), genIters = Number(args['gen-iters']);
const result = { date: new Date().toISOString(), device: null, tokens: { image: 4096, text: T }, runs: {} };
const gib = (b) => b / GiB;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => performance.now();

// ---- the models, one copy each
let t0 = now();
const flux = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0 });
const t5 = await x2i.T5Encoder.fromConfig(T5_XXL, { device, dtype, seed: 1 });
const clip = await x2i.ClipTextEncoder.fromConfig(CLIP_L, { device, dtype, seed: 2 });
const qwen = await x2i.QwenVLEncoder.fromConfig(QWEN_7B, { device, dtype, seed: 3 });
const alignNet = await x2i.AlignNet.fromConfig({}, { device, dtype, seed: 4 });
result.build_s = (now() - t0) / 1000;
result.weights_GiB = gib(x2i.cuda.memory(device).allocated);

const ids = promptIds(x2i.Tensor, device, T);
const teacherConditioning = () => realSizeTeacher(t5, clip, ids);

// ---- the training step, with and without activation checkpointing (and with --fp8, on FP8 block weights)
async function trainingStep(transformer, checkpoint) {
  const trainer = new x2i.X2ITrainer({ transformer, alignNet, mllm: qwen, t5, clip }, { checkpoint, seed: 0 });
  const ts = [], parts = { encoders: [], trainStep: [] };
  let last;
  const one = async () => {
    const s0 = now();
    // the three encoders side by side (each on its own CUDA stream), as X2ITrainer runs them for captions and prompts
    const [teacher, { hiddenStates }] = await Promise.all([teacherConditioning(), qwen.forward({ inputIds: ids.qwen })]);
    await x2i.cuda.synchronize(device);
    const s1 = now();
    try {
      last = await trainer.trainStep({ teacher, student: { hiddenStates } });
    } finally {
      teacher.encoderHiddenStates.dispose();
      teacher.pooledProjections.dispose();
      hiddenStates.dispose();
    }
    await x2i.cuda.synchronize(device);
    const s2 = now();
    return [s2 - s0, s1 - s0, s2 - s1];
  };
  for (let i = 0; i < 2; i++) await one();
  x2i.cuda.memory(device, { reset: true });
  for (let i = 0; i < steps; i++) {
    const [all, enc, step] = await one();
    ts.push(all), parts.encoders.push(enc), parts.trainStep.push(step);
  }
  const m = x2i.cuda.memory(device);
  return {
    ms: median(ts), encoders_ms: median(parts.encoders), trainStep_ms: median(parts.trainStep), all_ms: ts,
    peak_allocated_GiB: gib(m.peakAllocated), peak_reserved_GiB: gib(m.peakReserved), loss: last.loss, skipped: last.skipped,
    gradNorm: last.gradNorm,
  };
}
result.runs.step = await trainingStep(flux, false);
result.runs.step_checkpoint = await trainingStep(flux, true);
// the step's encoders one by one, then the three side by side (median of 5 after a warm-up, a device synchronisation
// at each end)
result.runs.encoders = {};
const encode = { t5: () => t5.forward({ inputIds: ids.t5 }), clip: () => clip.forward({ inputIds: ids.clip }),
  qwen: () => qwen.forward({ inputIds: ids.qwen }) };
for (const [name, fns] of [['t5', [encode.t5]], ['clip', [encode.clip]], ['qwen', [encode.qwen]], ['sideBySide', Object.values(encode)]]) {
  const ts = [];
  for (let i = 0; i < 6; i++) {
    const s0 = now();
    const rs = await Promise.all(fns.map((fn) => fn()));
    await x2i.cuda.synchronize(device);
    ts.push(now() - s0);
    for (const r of rs) for (const v of Object.values(r)) if (v instanceof x2i.Tensor) v.dispose();
  }
  result.runs.encoders[name] = median(ts.slice(1));
}

// ---- teacher generation: T5 + CLIP + 28 steps + VAE decode at 1024²
const vae = await x2i.AutoencoderKL.fromConfig({}, { device, dtype, seed: 5 });
const pipe = new x2i.FluxPipeline({ transformer: flux, vae });
const gen = async (p = pipe) => {
  const e = await teacherConditioning();
  try {
    const r = await p.generate({ promptEmbeds: e.encoderHiddenStates, pooledPromptEmbeds: e.pooledProjections, height: 1024,
      width: 1024, numInferenceSteps: 28, seed: 0 });
    r.images.dispose();
  } finally {
    e.encoderHiddenStates.dispose();
    e.pooledProjections.dispose();
  }
  await x2i.cuda.synchronize(device);
};
await gen();
x2i.cuda.memory(device, { reset: true });
const gts = [];
for (let i = 0; i < genIters; i++) { const s = now(); await gen(); gts.push(now() - s); }
const z = await x2i.randn([1, 16, 128, 128], { seed: 6, device, dtype });
const dts = [];
for (let i = 0; i < 4; i++) { const s = now(); (await vae.decode(z)).dispose(); await x2i.cuda.synchronize(device); dts.push(now() - s); }
z.dispose();
result.runs.generate = { ms: median(gts), all_ms: gts, vae_decode_ms: median(dts.slice(1)),
  peak_allocated_GiB: gib(x2i.cuda.memory(device).peakAllocated) };
// --fp8: the training step and the generation with the transformer's block weights in FP8 (quantize: 'fp8', the same
// seed; the step's backward on FP8 tensor cores)
if (args.fp8) {
  await flux.disposeAsync();  // the bf16 copy off the card first: the FP8 runs' peaks are their own
  x2i.cuda.memory(device, { emptyCache: true });
  const flux8 = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0, quantize: 'fp8' });
  result.runs.step_fp8 = await trainingStep(flux8, false);
  const pipe8 = new x2i.FluxPipeline({ transformer: flux8, vae });
  await gen(pipe8);
  x2i.cuda.memory(device, { reset: true });
  const ts = [];
  for (let i = 0; i < genIters; i++) { const s = now(); await gen(pipe8); ts.push(now() - s); }
  result.runs.generate_fp8 = { ms: median(ts), all_ms: ts, peak_allocated_GiB: gib(x2i.cuda.memory(device).peakAllocated) };
  await flux8.disposeAsync();
  // and with each FP8 weight also kept transposed (fp8TransposedWeights: no transposition per backward)
  x2i.cuda.memory(device, { emptyCache: true });
  const flux8t = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0, quantize: 'fp8', fp8TransposedWeights: true });
  result.runs.step_fp8_transposed = await trainingStep(flux8t, false);
  await flux8t.disposeAsync();
}

for (const m of [flux, t5, clip, qwen, alignNet, vae]) m.dispose();
for (const t of Object.values(ids)) t.dispose();
await new Promise((r) => setImmediate(r));  // dispose() frees once each model's queue is empty: a tick later
result.leftover_GiB = gib(x2i.cuda.memory(device, { emptyCache: true }).reserved);

// ---- the PyTorch eager composition, once this process holds (almost) nothing on the GPU
if (args.baseline) {
  const out = path.join(os.tmpdir(), `x2i_step-${process.pid}.json`);
  const extra = [...(args.compile ? ['--compile'] : []), ...(args['compile-step'] ? ['--compile-step'] : [])];
  const r = spawnSync('python3', [args.baseline, '--steps', String(steps), '--gen-iters', String(genIters), ...extra, '--json', out],
    { encoding: 'utf8', timeout: 540_000 });
  if (fs.existsSync(out)) result.baseline = JSON.parse(fs.readFileSync(out, 'utf8'));  // a timeout keeps the phases done
  if (r.status !== 0) result.baselineError = ((r.stderr || '') + (r.stdout || '')).split('\n').slice(-25).join('\n');
}

// ---- report
const f = (x, d = 1) => (typeof x === 'number' ? x.toFixed(d) : '—');
const b = result.baseline ?? {};
result.device = b.device ?? null;
const R = result.runs;
console.log(`X2I at real sizes (FLUX.1-dev, T5-XXL, CLIP-L, Qwen2.5-VL-7B, AlignNet; bf16 random weights; 1024², ${T} tokens) — ${result.date}`);
console.log(`weights on the GPU: ${f(result.weights_GiB, 2)} GiB (one transformer), built in ${f(result.build_s)} s`);
console.log('| run | x2i ms | peak allocated | PyTorch eager ms | peak allocated | eager / x2i |');
console.log('|---|---:|---:|---:|---:|---:|');
const row = (name, x, y) => console.log(`| ${name} | ${f(x?.ms)} | ${f(x?.peak_allocated_GiB, 2)} GiB | ${f(y?.ms)} | ${f(y?.peak_allocated_GiB, 2)} GiB | ${y?.ms ? f(y.ms / x.ms, 2) + '×' : '—'} |`);
row('training step', R.step, b.step);
row('training step, activation checkpointing', R.step_checkpoint, b.step_checkpoint);
if (R.step_fp8) row('training step, FP8 block weights (quantize: fp8)', R.step_fp8, b.step);
if (R.step_fp8_transposed) row('training step, FP8, weights also kept transposed (fp8TransposedWeights)', R.step_fp8_transposed, b.step);
row('teacher generation 1024², 28 steps', R.generate, b.generate);
if (R.generate_fp8) row('teacher generation, FP8 block weights (quantize: fp8)', R.generate_fp8, b.generate);
if (b.generate_compile) {
  console.log(`| teacher generation, torch.compile | | | ${f(b.generate_compile.ms)} | | ${f(b.generate_compile.ms / R.generate.ms, 2)}× |`);
  console.log(`x2i / torch.compile generation time: bf16 ${f(R.generate.ms / b.generate_compile.ms, 3)}` +
    (R.generate_fp8 ? `, FP8 ${f(R.generate_fp8.ms / b.generate_compile.ms, 3)}` : '') + ' (x2i includes the VAE decode, the baseline does not)');
}
if (b.step_compile) console.log(`| training step, torch.compile (transformer, AlignNet, loss; compiled in ${f(b.step_compile_s)} s) | | | ` +
  `${f(b.step_compile.ms)} | ${f(b.step_compile.peak_allocated_GiB, 2)} GiB | ${f(b.step_compile.ms / R.step.ms, 2)}× |`);
if (b.step_compile && R.step_fp8) console.log(`torch.compile / x2i training step time: bf16 ${f(b.step_compile.ms / R.step.ms, 3)}×, FP8 ${f(b.step_compile.ms / R.step_fp8.ms, 3)}×` +
  (R.step_fp8_transposed ? `, FP8 kept transposed ${f(b.step_compile.ms / R.step_fp8_transposed.ms, 3)}×` : '') + '; ' +
  `eager / x2i: bf16 ${f(b.step.ms / R.step.ms, 3)}×, FP8 ${f(b.step.ms / R.step_fp8.ms, 3)}×` +
  (R.step_fp8_transposed ? `, FP8 kept transposed ${f(b.step.ms / R.step_fp8_transposed.ms, 3)}×` : ''));
if (R.step_fp8) console.log(`step parts (x2i, FP8): encoders ${f(R.step_fp8.encoders_ms)} ms, trainStep ${f(R.step_fp8.trainStep_ms)} ms; loss ${f(R.step_fp8.loss, 3)}, skipped ${R.step_fp8.skipped}`);
console.log(`encoders alone (x2i): T5 ${f(R.encoders.t5)} ms, CLIP ${f(R.encoders.clip)} ms, Qwen ${f(R.encoders.qwen)} ms; side by side ${f(R.encoders.sideBySide)} ms`);
console.log(`step parts (x2i): encoders ${f(R.step.encoders_ms)} ms, trainStep ${f(R.step.trainStep_ms)} ms; loss ${f(R.step.loss, 3)}, skipped ${R.step.skipped}`);
console.log(`generation parts (x2i): VAE decode 1024² ${f(R.generate.vae_decode_ms)} ms`);
if (result.baselineError) console.log(`baseline failed:\n${result.baselineError}`);
if (b.error) console.log(`baseline error:\n${b.error}`);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 1));
