// X2I on smaller cards (issue 15): the memory presets, each run under a cap set with the caching allocator's memory
// fraction (x2i.cuda.setMemoryLimit), so that the run proves it fits rather than estimating. Real sizes, random bf16
// weights (fromConfig): FLUX.1-dev, T5-XXL, CLIP-L, Qwen2.5-VL-7B, AlignNet, the VAE; 1024², 512 text tokens, batch 1.
//   train-full  (no cap): every model on the GPU, the encoders run in each step (bench/x2i_step.mjs's mode) — the
//               reference the others are compared with, measured first in the same run;
//   train-48gb  (cap 40 GiB): the teacher's T5 + CLIP features and the student's Qwen hidden states precomputed (the
//               encoders are frozen: a dataset pass computes them once), the bf16 transformer, activation
//               checkpointing of the student's blocks;
//   train-24gb  (cap 22 GiB): the same with the transformer's block weights in FP8 (quantize: 'fp8');
//   generate-24gb (cap 24 GiB): X2I inference — Qwen2.5-VL-7B encodes the prompt and is freed, then AlignNet, the
//               FP8 transformer (28 steps) and the VAE decode; generate-24gb-bf16: the same with the bf16 transformer
//               (reported as fitting or not).
// Peak = the caching allocator's peak allocated bytes over the whole preset (models included).
//   node bench/memory.mjs [--steps 5] [--json out.json]
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { CLIP_L, QWEN_7B, T5_XXL, promptIds, teacherConditioning } from './real_sizes.mjs';

const { values: args } = parseArgs({ options: { steps: { type: 'string', default: '5' }, json: { type: 'string' } } });
if (!x2i.cuda.isAvailable()) { console.error('bench/memory.mjs needs CUDA'); process.exit(1); }
const device = 'cuda', dtype = 'bfloat16', T = 512, GiB = 2 ** 30, steps = Number(args.steps);
const result = { date: new Date().toISOString(), presets: {} };
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => performance.now();
const sync = () => x2i.cuda.synchronize(device);
const tick = () => new Promise((r) => setImmediate(r));  // dispose() frees once a model's queue is empty: a tick later

async function begin(name, capGiB) {
  await tick();
  x2i.cuda.memory(device, { emptyCache: true });
  x2i.cuda.setMemoryLimit(capGiB ? capGiB * GiB : null);
  x2i.cuda.memory(device, { reset: true });
  console.error(`-- ${name}${capGiB ? ` (cap ${capGiB} GiB)` : ''}`);
}
async function end(name, capGiB, r) {
  await sync();
  const m = x2i.cuda.memory(device);
  result.presets[name] = { cap_GiB: capGiB ?? null, peak_allocated_GiB: m.peakAllocated / GiB, peak_reserved_GiB: m.peakReserved / GiB, ...r };
  x2i.cuda.setMemoryLimit(null);
  console.error(`   ${JSON.stringify(result.presets[name])}`);
}
const toCpu = async (t) => { const c = await t.to({ device: 'cpu' }); t.dispose(); return c; };

// ---- train-full: every model on the GPU, encoders in the step; the features kept (on the CPU) for the others
await begin('train-full');
const flux = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0 });
const t5 = await x2i.T5Encoder.fromConfig(T5_XXL, { device, dtype, seed: 1 });
const clip = await x2i.ClipTextEncoder.fromConfig(CLIP_L, { device, dtype, seed: 2 });
const qwen = await x2i.QwenVLEncoder.fromConfig(QWEN_7B, { device, dtype, seed: 3 });
const alignNet = await x2i.AlignNet.fromConfig({}, { device, dtype, seed: 4 });
const ids = promptIds(x2i.Tensor, device, T);
async function features() {
  const teacher = await teacherConditioning(t5, clip, ids);
  const { hiddenStates } = await qwen.forward({ inputIds: ids.qwen });
  return { teacher, student: { hiddenStates } };
}
const disposeBatch = (b) => { b.teacher.encoderHiddenStates.dispose(); b.teacher.pooledProjections.dispose(); b.student.hiddenStates.dispose(); };
async function timeSteps(trainer, batchOf, n = steps) {
  const ts = [];
  let last;
  for (let i = 0; i < n + 2; i++) {
    const s = now();
    const b = await batchOf();
    try { last = await trainer.trainStep(b); } finally { if (b.owned) disposeBatch(b); }
    await sync();
    if (i >= 2) ts.push(now() - s);
  }
  return { ms: median(ts), all_ms: ts, loss: last.loss };
}
{
  const trainer = new x2i.X2ITrainer({ transformer: flux, alignNet, mllm: qwen, t5, clip }, { seed: 0 });
  const r = await timeSteps(trainer, async () => ({ ...(await features()), owned: true }));
  await end('train-full', null, { step_ms: r.ms, all_ms: r.all_ms, loss: r.loss });
}
const f = await features();
const cpuFeatures = { teacher: { encoderHiddenStates: await toCpu(f.teacher.encoderHiddenStates), pooledProjections: await toCpu(f.teacher.pooledProjections) },
  student: { hiddenStates: await toCpu(f.student.hiddenStates) } };
// the student's prompt for generation: Qwen's hidden states of its ids (the same encoder, one prompt)
for (const m of [flux, t5, clip, qwen, alignNet]) m.dispose();
for (const t of [ids.t5, ids.clip]) t.dispose();

// what a preset made, freed however it ends (a failed preset must not leave its models to the next one's cap)
async function freeAll(objs) {
  for (const o of objs) if (o && typeof o.disposeAsync === 'function') await o.disposeAsync(); else if (o && typeof o.dispose === 'function') o.dispose();
}

// ---- training presets: precomputed features, checkpointing, bf16 or FP8 block weights (x2i.MEMORY_PRESETS)
for (const [name, preset] of [['train-48gb', x2i.MEMORY_PRESETS['48gb']], ['train-24gb', x2i.MEMORY_PRESETS['24gb']]]) {
  const cap = preset.trainCapGiB, quantize = preset.quantize, made = [];
  await begin(name, cap);
  try {
    const tr = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0, quantize });
    made.push(tr);
    const an = await x2i.AlignNet.fromConfig({}, { device, dtype, seed: 4 });
    made.push(an);
    const weights_GiB = x2i.cuda.memory(device).allocated / GiB;
    const batch = { teacher: { encoderHiddenStates: await cpuFeatures.teacher.encoderHiddenStates.to({ device }),
      pooledProjections: await cpuFeatures.teacher.pooledProjections.to({ device }) },
      student: { hiddenStates: await cpuFeatures.student.hiddenStates.to({ device }) } };
    made.push(batch.teacher.encoderHiddenStates, batch.teacher.pooledProjections, batch.student.hiddenStates);
    const trainer = new x2i.X2ITrainer({ transformer: tr, alignNet: an }, { seed: 0, checkpoint: preset.checkpoint });
    const r = await timeSteps(trainer, async () => batch);
    await end(name, cap, { quantize, checkpoint: preset.checkpoint, weights_GiB, step_ms: r.ms, all_ms: r.all_ms, loss: r.loss,
      vs_train_full: r.ms / result.presets['train-full'].step_ms });
  } catch (e) {
    await end(name, cap, { quantize, error: String(e.message ?? e).split('\n')[0] });
  } finally {
    await freeAll(made);
  }
}

// ---- generation presets: the MLLM encodes and is freed, then AlignNet + the transformer + the VAE
for (const [name, quantize] of [['generate-24gb', 'fp8'], ['generate-24gb-bf16', 'none']]) {
  const cap = x2i.MEMORY_PRESETS['24gb'].generateCapGiB, made = [];
  await begin(name, cap);
  try {
    const t0 = now();
    const q = await x2i.QwenVLEncoder.fromConfig(QWEN_7B, { device, dtype, seed: 3 });
    made.push(q);
    const { hiddenStates } = await q.forward({ inputIds: ids.qwen });
    await q.disposeAsync();
    const encode_ms = now() - t0;
    const an = await x2i.AlignNet.fromConfig({}, { device, dtype, seed: 4 });
    made.push(an);
    const cond = await an.forward(hiddenStates);
    made.push(cond.encoderHiddenStates, cond.pooledProjections);
    hiddenStates.dispose();
    const tr = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0, quantize });
    made.push(tr);
    const vae = await x2i.AutoencoderKL.fromConfig({}, { device, dtype, seed: 5 });
    made.push(vae);
    const pipe = new x2i.FluxPipeline({ transformer: tr, vae });
    const ts = [];
    for (let i = 0; i < 3; i++) {
      const s = now();
      const r = await pipe.generate({ promptEmbeds: cond.encoderHiddenStates, pooledPromptEmbeds: cond.pooledProjections,
        height: 1024, width: 1024, numInferenceSteps: 28, seed: 0 });
      r.images.dispose();
      await sync();
      if (i > 0) ts.push(now() - s);
    }
    await end(name, cap, { quantize, encode_and_free_ms: encode_ms, generate_ms: median(ts), all_ms: ts });
  } catch (e) {
    await end(name, cap, { quantize, error: String(e.message ?? e).split('\n')[0] });
  } finally {
    await freeAll(made);
  }
}
ids.qwen.dispose();

// ---- report
const P = result.presets, fx = (x, d = 1) => (typeof x === 'number' ? x.toFixed(d) : '—');
console.log(`X2I memory presets under allocator caps (real sizes, random bf16 weights, 1024²) — ${result.date}`);
console.log('| preset | cap | what | time | peak allocated | peak reserved | fits |');
console.log('|---|---:|---|---:|---:|---:|---|');
const what = { 'train-full': 'all models on the GPU, encoders in the step', 'train-48gb': 'precomputed features, checkpointing, bf16',
  'train-24gb': 'precomputed features, checkpointing, FP8 block weights', 'generate-24gb': 'Qwen encodes and is freed; FP8 transformer, VAE',
  'generate-24gb-bf16': 'Qwen encodes and is freed; bf16 transformer, VAE' };
for (const [k, p] of Object.entries(P)) {
  const t = p.step_ms ? `${fx(p.step_ms)} ms/step${p.vs_train_full ? ` (${fx(p.vs_train_full, 2)}× train-full)` : ''}` : p.generate_ms ? `${fx(p.generate_ms)} ms/image` : '—';
  const fits = p.error ? `no: ${p.error.slice(0, 80)}` : p.cap_GiB ? (p.peak_reserved_GiB <= p.cap_GiB ? 'yes' : 'no') : '(no cap)';
  console.log(`| ${k} | ${p.cap_GiB ? p.cap_GiB + ' GiB' : '—'} | ${what[k]} | ${t} | ${fx(p.peak_allocated_GiB, 2)} GiB | ${fx(p.peak_reserved_GiB, 2)} GiB | ${fits} |`);
}
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 2));
