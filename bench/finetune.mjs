// Fine-tuning on the frozen FLUX.1-dev-size transformer at real size (issue 13), random bf16 weights
// (FluxTransformer.fromConfig), batch 1, 1024² (4096 image tokens), 512 text tokens; the sample's packed latents and
// conditioning are given (random tensors: no VAE, no encoders in the step).
//   LoRA step = LoraTrainer.trainStep: rank 16, alpha 16 on the default targets (defaultLoraTargets), float32 adapter,
//               x_σ, the transformer's forward + backward into the adapter, clipping 1.0, AdamW; with and without
//               activation checkpointing.
//   LightControl step = LightControlTrainer.trainStep: the official 19 ControlNeXt branches (float32 masters) on a
//               1024² hint, their residuals added after each double block, backward into the branches, AdamW.
//   generation = 28 Euler steps at 1024² (one denoise call per step, as FluxPipeline; no VAE): no adapter, one frozen
//               rank-16 adapter on every default target loaded unfused (loadLora), the same after fuseLora().
// Peak memory: the caching allocator's peak over the timed calls (reset after the warm-ups). Baseline: the same
// steps and generation in PyTorch eager (--baseline bench/baselines/finetune_step.py: PEFT-style adapters on the
// fused BFL layers, float32 LoRA / branches under autocast bf16), run after this process has freed the GPU.
//   node bench/finetune.mjs [--baseline bench/baselines/finetune_step.py] [--json out.json] [--steps 5]
//                           [--gen-steps 28] [--gen-iters 2] [--compile (the baseline also times torch.compile)]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { loadFrozenAdapter, uniform } from './frozen_adapter.mjs';

const { values: args } = parseArgs({ options: {
  baseline: { type: 'string' }, json: { type: 'string' }, steps: { type: 'string', default: '5' },
  'gen-steps': { type: 'string', default: '28' }, 'gen-iters': { type: 'string', default: '2' },
  compile: { type: 'boolean', default: false },
  // the phases to run (default all): lora,lightcontrol,generate
  only: { type: 'string', default: 'lora,lightcontrol,generate' },
  // hidden: a tiny model on the CPU, to check the code path end to end
  tiny: { type: 'boolean', default: false }, device: { type: 'string' }, python: { type: 'string', default: process.env.X2I_PYTHON ?? 'python3' },
} });
const tiny = args.tiny;
const only = new Set(args.only.split(','));
const device = args.device ?? (tiny ? 'cpu' : 'cuda');
const onCuda = device.startsWith('cuda');
if (onCuda && !x2i.cuda.isAvailable()) { console.error('bench/finetune.mjs needs CUDA (or --tiny --device cpu)'); process.exit(1); }
const dtype = onCuda ? 'bfloat16' : 'float32', GiB = 2 ** 30;
const steps = Number(args.steps), genSteps = Number(args['gen-steps']), genIters = Number(args['gen-iters']);
const SIDE = tiny ? 32 : 1024, T = tiny ? 8 : 512;
const FLUX_CONFIG = tiny ? { num_layers: 2, num_single_layers: 2, attention_head_dim: 16, num_attention_heads: 2, joint_attention_dim: 32,
  pooled_projection_dim: 24, in_channels: 16, axes_dims_rope: [4, 6, 6] } : {};
const LC_CONFIG = tiny ? { in_channels: [16, 16], out_channels: [16, 32], groups: [4, 8], time_embed_dim: 32, embedding_channels: [8, 8, 16],
  control_out_channels: 32, num_branches: 2 } : {};
const N = (SIDE / 16) ** 2;
const result = { date: new Date().toISOString(), device: null, tiny, size: { height: SIDE, width: SIDE, imageTokens: N, textTokens: T },
  lora: { rank: 16, alpha: 16, targets: 'defaultLoraTargets' }, steps, genSteps, runs: {} };
const gib = (b) => b / GiB;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => performance.now();
const sync = async () => { if (onCuda) await x2i.cuda.synchronize(device); };
const resetPeak = () => { if (onCuda) x2i.cuda.memory(device, { reset: true }); };
const peak = () => (onCuda ? gib(x2i.cuda.memory(device).peakAllocated) : null);
const settle = () => new Promise((r) => setImmediate(r));  // dispose() frees once a model's queue is empty: a tick later

/** Median wall time of `iters` calls after `warm` warm-ups (a device synchronisation at each end), the peak over them. */
async function timed(fn, iters, warm) {
  for (let i = 0; i < warm; i++) await fn();
  await sync();
  resetPeak();
  const ts = [];
  let last;
  for (let i = 0; i < iters; i++) {
    const s = now();
    last = await fn();
    await sync();
    ts.push(now() - s);
  }
  return { ms: median(ts), all_ms: ts, peak_allocated_GiB: peak(), last };
}

function gpuName() {
  const r = spawnSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : null;
}
{
  const bi = x2i.buildInfo();
  result.build = Object.fromEntries(Object.entries(bi).filter(([, v]) => typeof v !== 'string' || v.length < 200));
}

// ---- the transformer (frozen) and one training sample
let t0 = now();
const flux = await x2i.FluxTransformer.fromConfig(FLUX_CONFIG, { device, dtype, seed: 0 });
result.build_s = (now() - t0) / 1000;
result.weights_GiB = onCuda ? gib(x2i.cuda.memory(device).allocated) : null;
const C = Number(flux.config.in_channels ?? 64), JOINT = Number(flux.config.joint_attention_dim ?? 4096);
const POOLED = Number(flux.config.pooled_projection_dim ?? 768);
const latents = await x2i.randn([1, N, C], { seed: 1, device, dtype: 'float32' });
const encoderHiddenStates = await x2i.randn([1, T, JOINT], { seed: 2, device, dtype });
const pooledProjections = await x2i.randn([1, POOLED], { seed: 3, device, dtype });
const conditioning = { encoderHiddenStates, pooledProjections };

// ---- LoRA training step, with and without activation checkpointing
const loraName = await flux.addLora({ rank: 16, alpha: 16, seed: 0 });
{
  const parts = await flux.loraWeights(loraName);
  result.lora.parameters = parts.reduce((n, p) => n + p.A.numel + p.B.numel, 0);
  result.lora.parts = parts.length;
  for (const p of parts) p.A.dispose(), p.B.dispose();
}
for (const checkpoint of only.has('lora') ? [false, true] : []) {
  const trainer = new x2i.LoraTrainer({ transformer: flux }, { height: SIDE, width: SIDE, lora: loraName, checkpoint, seed: 0 });
  try {
    const r = await timed(() => trainer.trainStep({ latents, conditioning }), steps, 2);
    result.runs[checkpoint ? 'lora_checkpoint' : 'lora'] = { ms: r.ms, all_ms: r.all_ms, peak_allocated_GiB: r.peak_allocated_GiB,
      loss: r.last.loss, gradNorm: r.last.gradNorm, sigma: r.last.sigma };
  } finally {
    trainer.dispose();
  }
}
flux.unloadLora(loraName);
await settle();

// ---- LightControl training step (the hint: a Tensor in [0, 1] on the device)
const hint = x2i.Tensor.fromArray(uniform(3 * SIDE * SIDE, 0.5, 7).map((v) => v + 0.5), [1, 3, SIDE, SIDE], { device });
{
  // the trainer reads a Tensor hint through imageForVae (lib/sample/image_input.ts), which copies it to the host
  // (float32, finiteness check, ·2 − 1) and back: that round trip is part of the step; its cost alone, emulated:
  const rt = [];
  for (let i = 0; i < 3; i++) {
    const s = now();
    const host = await hint.to({ dtype: 'float32', device: 'cpu' });
    const px = Float32Array.from(await host.toArray());
    for (let j = 0; j < px.length; j++) { if (!Number.isFinite(px[j])) throw new Error('non-finite'); px[j] = px[j] * 2 - 1; }
    const back = x2i.Tensor.fromArray(px, [1, 3, SIDE, SIDE], { device });
    await sync();
    rt.push(now() - s);
    host.dispose(), back.dispose();
  }
  result.hint_host_roundtrip_ms = median(rt);
}
const lightControl = await x2i.LightControl.fromConfig(LC_CONFIG, { device, dtype: 'float32', seed: 4 });
result.lightcontrol = { branches: lightControl.info?.branches ?? LC_CONFIG.num_branches ?? 19, parameters: lightControl.info?.parameters };
for (const checkpoint of only.has('lightcontrol') ? [false, true] : []) {
  const trainer = new x2i.LightControlTrainer({ transformer: flux, lightControl }, { height: SIDE, width: SIDE, checkpoint, seed: 0 });
  try {
    const r = await timed(() => trainer.trainStep({ latents, conditioning, hint }), steps, 2);
    result.runs[checkpoint ? 'lightcontrol_checkpoint' : 'lightcontrol'] = { ms: r.ms, all_ms: r.all_ms, peak_allocated_GiB: r.peak_allocated_GiB,
      loss: r.last.loss, gradNorm: r.last.gradNorm, sigma: r.last.sigma };
  } finally {
    trainer.dispose();
  }
}
lightControl.dispose();
hint.dispose();
await settle();

// ---- generation: genSteps Euler steps, one denoise call per step (as FluxPipeline), no VAE
const { timesteps, sigmas } = new x2i.FlowMatchEulerScheduler().setTimesteps(genSteps, { imageSeqLen: N });
const noise = await x2i.randn([1, N, C], { seed: 5, device, dtype });
const lh = 2 * (SIDE / 16);
const genInputs = { encoderHiddenStates, pooledProjections,
  guidance: x2i.Tensor.fromArray(new Float32Array([3.5]), [1], { device }),
  imgIds: x2i.FluxPipeline.imageIds(lh, lh, device), txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device }) };
async function generate() {
  let x = noise;
  for (let i = 0; i < genSteps; i++) {
    const r = await flux.denoise({ ...genInputs, hiddenStates: x }, [timesteps[i]], [sigmas[i], sigmas[i + 1]], { returnStepLatents: false });
    if (x !== noise) x.dispose();
    x = r.latents;
  }
  await sync();
  x.dispose();
}
const gen = async (name) => {
  const r = await timed(generate, genIters, 1);
  result.runs[name] = { ms: r.ms, all_ms: r.all_ms, peak_allocated_GiB: r.peak_allocated_GiB };
};
if (only.has('generate')) await gen('generate');
// one frozen adapter in the diffusers/PEFT layout on every default target: A [16, in], B [out, 16], small values
result.frozenAdapter = await loadFrozenAdapter(flux, { rank: 16 });
if (only.has('generate')) {
  await gen('generate_unfused');
  await flux.fuseLora();
  await gen('generate_fused');
}
flux.unloadLora();

for (const t of [latents, encoderHiddenStates, pooledProjections, noise, ...Object.values(genInputs).filter((t) => t !== encoderHiddenStates && t !== pooledProjections)])
  t.dispose();
flux.dispose();
await settle();
result.leftover_GiB = onCuda ? gib(x2i.cuda.memory(device, { emptyCache: true }).reserved) : null;

// ---- the PyTorch eager composition, once this process holds (almost) nothing on the GPU
if (args.baseline) {
  const out = path.join(os.tmpdir(), `finetune-${process.pid}.json`);
  const extra = [...(args.compile ? ['--compile'] : []), ...(tiny ? ['--tiny'] : [])];
  // the baseline skips the phases this run left out (--only)
  const parts = { lora: ['lora', 'lora_checkpoint'], lightcontrol: ['lightcontrol', 'lightcontrol_checkpoint'], generate: ['generate'] };
  const skipped = Object.entries(parts).filter(([k]) => !only.has(k)).flatMap(([, v]) => v);
  const r = spawnSync(args.python, [args.baseline, ...(skipped.length ? ['--skip', skipped.join(',')] : []), '--steps', String(steps),
    '--gen-steps', String(genSteps), '--gen-iters', String(genIters),
    ...extra, '--json', out], { encoding: 'utf8', timeout: 540_000 });
  if (fs.existsSync(out)) result.baseline = JSON.parse(fs.readFileSync(out, 'utf8'));  // a timeout keeps the phases done
  if (r.status !== 0 || r.error) result.baselineError = (String(r.error ?? '') + '\n' + (r.stderr || '') + (r.stdout || '')).split('\n').slice(-25).join('\n');
}

// ---- report
const f = (x, d = 1) => (typeof x === 'number' ? x.toFixed(d) : '—');
const b = result.baseline ?? {};
result.device = b.device ?? (onCuda ? gpuName() : 'cpu');
result.torch = b.torch ?? null;
const R = result.runs;
const ratio = (y, x) => (typeof y === 'number' && typeof x === 'number' && x > 0 ? y / x : null);
result.ratios = {
  // eager / x2i per run: time, and peak memory for the training steps
  ...Object.fromEntries(['lora', 'lora_checkpoint', 'lightcontrol', 'lightcontrol_checkpoint', 'generate', 'generate_unfused', 'generate_fused']
    .flatMap((k) => [[`${k}_time`, ratio(b[k]?.ms, R[k]?.ms)],
      ...(k.startsWith('generate') ? [] : [[`${k}_peak`, ratio(b[k]?.peak_allocated_GiB, R[k]?.peak_allocated_GiB)]])])),
  lora_compile_time: ratio(b.lora_compile?.ms, R.lora?.ms),
  // the acceptance ratios of issue 13 (x2i against itself)
  x2i_unfused_over_fused: ratio(R.generate_unfused?.ms, R.generate_fused?.ms),
  x2i_unfused_over_none: ratio(R.generate_unfused?.ms, R.generate?.ms),
  eager_unfused_over_fused: ratio(b.generate_unfused?.ms, b.generate_fused?.ms),
};
console.log(`Fine-tuning on FLUX.1-dev ${tiny ? '(TINY config, CPU check) ' : ''}size (${dtype} random weights; ${SIDE}², ${T} text tokens, B = 1) — ${result.date}`);
console.log(`device ${result.device ?? device}, torch ${result.torch ?? '—'}; weights ${f(result.weights_GiB, 2)} GiB, built in ${f(result.build_s)} s; ` +
  `LoRA rank 16 on ${result.lora.parts} parts (${f(result.lora.parameters / 1e6, 2)} M parameters)`);
console.log('| run | x2i ms | peak allocated | PyTorch eager ms | peak allocated | eager / x2i (time) | eager / x2i (peak) |');
console.log('|---|---:|---:|---:|---:|---:|---:|');
const row = (name, x, y) => console.log(`| ${name} | ${f(x?.ms)} | ${f(x?.peak_allocated_GiB, 2)} GiB | ${f(y?.ms)} | ${f(y?.peak_allocated_GiB, 2)} GiB | ` +
  `${ratio(y?.ms, x?.ms) ? f(ratio(y.ms, x.ms), 2) + '×' : '—'} | ${ratio(y?.peak_allocated_GiB, x?.peak_allocated_GiB) ? f(ratio(y.peak_allocated_GiB, x.peak_allocated_GiB), 2) + '×' : '—'} |`);
row('LoRA training step (rank 16, default targets)', R.lora, b.lora);
row('LoRA training step, activation checkpointing', R.lora_checkpoint, b.lora_checkpoint);
if (b.lora_compile) row('LoRA training step vs torch.compile', R.lora, b.lora_compile);
row(`LightControl training step (${result.lightcontrol.branches} branches)`, R.lightcontrol, b.lightcontrol);
row('LightControl training step, activation checkpointing', R.lightcontrol_checkpoint, b.lightcontrol_checkpoint);
row(`generation ${SIDE}², ${genSteps} steps, no adapter`, R.generate, b.generate);
row(`generation, one adapter unfused`, R.generate_unfused, b.generate_unfused);
row(`generation, the adapter fused`, R.generate_fused, b.generate_fused);
const Q = result.ratios;
console.log(`goals (issue 13): LoRA step eager/x2i ${f(Q.lora_time, 2)}× (≥ 1.5×), peak eager/x2i ${f(Q.lora_peak, 2)}× (> 1); ` +
  `LightControl step ${f(Q.lightcontrol_time, 2)}× (≥ 1.3×); x2i unfused/fused generation ${f(Q.x2i_unfused_over_fused, 3)} (≤ 1.05)`);
console.log(`x2i unfused/no adapter ${f(Q.x2i_unfused_over_none, 3)}; eager unfused/fused ${f(Q.eager_unfused_over_fused, 3)}; ` +
  `losses x2i ${f(R.lora?.loss, 3)} / eager ${f(b.lora?.loss, 3)}`);
console.log(`the LightControl step includes the hint's host round trip (imageForVae copies a Tensor hint to the host and back): ` +
  `${f(result.hint_host_roundtrip_ms)} ms of it, measured alone`);
if (b.lora_compile?.compile_s) console.log(`torch.compile: ${f(b.lora_compile.compile_s)} s to compile`);
if (result.baselineError) console.log(`baseline failed:\n${result.baselineError}`);
if (b.error) console.log(`baseline error:\n${b.error}`);
for (const [k, e] of Object.entries(b.errors ?? {})) console.log(`baseline error in ${k}:\n${e}`);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 1));
