// Multi-GPU X2I training at real sizes (issue 6): the X2I step of bench/x2i_step.mjs (FLUX.1-dev, T5-XXL, CLIP-L,
// Qwen2.5-VL-7B, AlignNet; random bf16 weights; 1024², 512 tokens; batch 1 per rank) in three layouts, each in
// its own processes (one per GPU, x2i.launch, NCCL):
//   single  one GPU holds everything (the baseline of the scaling)
//   data    every GPU holds everything, data-parallel AlignNet (one all-reduce of its gradients per step)
//   split   GPU 0 the teacher (T5, CLIP, transformer), GPU 1 the student (Qwen, AlignNet, transformer)
// Throughput = samples per second of the whole group in the steady state (median step time after warm-up);
// scaling = throughput / single's. Layouts that need more GPUs than the machine has are reported as skipped.
//   node bench/x2i_parallel.mjs [--json out.json] [--steps 6] [--modes single,data,split]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { CLIP_L, QWEN_7B, T5_XXL } from './real_sizes.mjs';

const T = 512, device = x2i.ProcessGroup.localDevice(), dtype = 'bfloat16';
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function rank() {
  const mode = process.env.X2I_PAR_MODE, steps = Number(process.env.X2I_PAR_STEPS);
  const group = mode === 'single' ? null : await x2i.ProcessGroup.init({ backend: 'nccl' });
  const r = group?.rank ?? 0;
  const teacherSide = mode !== 'split' || r === 0, studentSide = mode !== 'split' || r === 1;
  const flux = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0 });
  const t5 = teacherSide ? await x2i.T5Encoder.fromConfig(T5_XXL, { device, dtype, seed: 1 }) : undefined;
  const clip = teacherSide ? await x2i.ClipTextEncoder.fromConfig(CLIP_L, { device, dtype, seed: 2 }) : undefined;
  const qwen = studentSide ? await x2i.QwenVLEncoder.fromConfig(QWEN_7B, { device, dtype, seed: 3 }) : undefined;
  const alignNet = await x2i.AlignNet.fromConfig({}, { device, dtype, seed: 4 });  // small; the split teacher does not train it
  const ids = (n, vocab, seed) => x2i.Tensor.fromArray(BigInt64Array.from({ length: n }, (_, i) => BigInt((i * 7919 + seed * 104729) % vocab)), [1, n], { device });
  const trainer = new x2i.X2ITrainer({ transformer: flux, alignNet, mllm: qwen, t5, clip },
    { seed: 0, parallel: group ? { group, mode } : null });
  const one = async () => {
    const owned = [];
    try {
      let teacher = { caption: '' }, student = { prompt: '' };
      if (teacherSide) {
        const a = await t5.forward({ inputIds: ids(T, 32128, 1) }), c = await clip.forward({ inputIds: ids(77, 49407, 2) });
        owned.push(a.hiddenStates, a.lastHiddenState, c.lastHiddenState, c.hiddenStates, c.pooledOutput);
        teacher = { encoderHiddenStates: a.lastHiddenState, pooledProjections: c.pooledOutput };
      }
      if (studentSide) {
        const { hiddenStates } = await qwen.forward({ inputIds: ids(T, 150000, 3) });
        owned.push(hiddenStates);
        student = { hiddenStates };
      }
      return await trainer.trainStep({ teacher, student });
    } finally {
      for (const t of owned) t.dispose();
    }
  };
  const ts = [];
  for (let i = 0; i < steps + 2; i++) {
    const t0 = performance.now();
    await one();
    await x2i.cuda.synchronize(device);
    if (i >= 2) ts.push(performance.now() - t0);
  }
  const mem = x2i.cuda.memory(device);
  fs.writeFileSync(`${process.env.X2I_PAR_OUT}.${r}.json`, JSON.stringify({ mode, rank: r, role: trainer.role, ms: median(ts), all_ms: ts,
    peak_allocated_GiB: mem.peakAllocated / 2 ** 30 }));
  await group?.close();
}

async function main() {
  const { values: args } = parseArgs({ options: { json: { type: 'string' }, steps: { type: 'string', default: '6' },
    modes: { type: 'string', default: 'single,data,split' } } });
  if (!x2i.cuda.isAvailable()) { console.error('bench/x2i_parallel.mjs needs CUDA'); process.exit(1); }
  const gpus = x2i.cuda.deviceCount();
  const result = { date: new Date().toISOString(), gpus, runs: {} };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-par-'));
  for (const mode of args.modes.split(',')) {
    const n = mode === 'single' ? 1 : mode === 'split' ? 2 : gpus;
    if (n > gpus || (mode !== 'single' && n < 2)) { result.runs[mode] = { skipped: `needs ${mode === 'single' ? 1 : 2}+ GPUs, the machine has ${gpus}` }; continue; }
    const out = path.join(tmp, mode);
    const codes = await x2i.launch(fileURLToPath(import.meta.url), { nprocPerNode: n, masterPort: 29600 + Object.keys(result.runs).length,
      env: { X2I_PAR_RANK_MAIN: '1', X2I_PAR_MODE: mode, X2I_PAR_OUT: out, X2I_PAR_STEPS: args.steps } });
    if (codes.some((c) => c !== 0)) { result.runs[mode] = { error: `exit codes ${codes}` }; continue; }
    const ranks = [...Array(n).keys()].map((r) => JSON.parse(fs.readFileSync(`${out}.${r}.json`, 'utf8')));
    // samples per second of the group: data — every rank one sample per step; split — the student's pace
    const stepMs = mode === 'split' ? ranks[1].ms : Math.max(...ranks.map((r) => r.ms));
    result.runs[mode] = { ranks, step_ms: stepMs, samples_per_s: (mode === 'data' ? n : 1) / (stepMs / 1000) };
  }
  const base = result.runs.single?.samples_per_s;
  console.log(`X2I training at real sizes on ${gpus} GPU(s) — ${result.date}`);
  console.log('| layout | GPUs | step ms | samples/s | scaling vs one GPU | peak allocated per GPU |');
  console.log('|---|---:|---:|---:|---:|---|');
  for (const [mode, r] of Object.entries(result.runs)) {
    if (!r.ranks) { console.log(`| ${mode} | — | — | — | — | ${r.skipped ?? r.error} |`); continue; }
    console.log(`| ${mode} | ${r.ranks.length} | ${r.step_ms.toFixed(1)} | ${r.samples_per_s.toFixed(2)} | ${base ? (r.samples_per_s / base).toFixed(2) + '×' : '—'} | ${r.ranks.map((k) => k.peak_allocated_GiB.toFixed(1) + ' GiB').join(', ')} |`);
  }
  if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 1));
}

if (process.env.X2I_PAR_RANK_MAIN === '1') await rank();
else await main();
