// FLUX.1 transformer benchmark on a GPU (issue 3): one double-stream and one single-stream block at
// FLUX.1-dev width (3072, 24 × 128 heads) and 4608 tokens (1024² image + 512 text), bf16, forward and
// forward+backward; a whole-model teacher forward at 1024²; bf16 vs float32 agreement of the whole model.
// The baseline (PyTorch eager and torch.compile of the same block math, a python3 script given as --baseline and
// called with `--json OUT`) runs from the machine's python3 in the same run.
//   node bench/flux.mjs [--baseline path/flux_blocks.py] [--json out.json] [--iters 10] [--no-model] [--no-fp32]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { probes } from '../dist/testing.js';

const { values: args } = parseArgs({ options: {
  baseline: { type: 'string' }, json: { type: 'string' }, iters: { type: 'string', default: '10' },
  'no-model': { type: 'boolean', default: false }, 'no-fp32': { type: 'boolean', default: false },
} });
if (!x2i.cuda.isAvailable()) { console.error('bench/flux.mjs needs CUDA'); process.exit(1); }
const iters = Number(args.iters);
const D = 3072, T = 512, N = 4096, L = T + N, side = 64;
const dev = 'cuda', dt = 'bfloat16';
const result = { date: new Date().toISOString(), tokens: L, runs: {} };

// ---- attention must run on the cuDNN or flash kernel
const backend = probes().sdpaBackend([1, 24, L, 128], dt, dev);
result.sdpaBackend = backend;
if (backend !== 'cudnn' && backend !== 'flash') {
  console.error(`SDPA picked '${backend}' for [1, 24, ${L}, 128] bf16: not the cuDNN/flash path; failing the benchmark`);
  process.exit(1);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
async function time(fn, n = iters, warm = 3) {
  for (let i = 0; i < warm; i++) await fn();
  const ts = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await fn(); // every call returns after the device finished
    ts.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(ts);
}

async function inputs(B = 1) {
  const imgIds = new Float32Array(N * 3);
  for (let n = 0; n < N; n++) { imgIds[3 * n + 1] = Math.floor(n / side); imgIds[3 * n + 2] = n % side; }
  return {
    hiddenStates: await x2i.randn([B, N, 64], { seed: 1, device: dev, dtype: dt }),
    encoderHiddenStates: await x2i.randn([B, T, 4096], { seed: 2, device: dev, dtype: dt }),
    pooledProjections: await x2i.randn([B, 768], { seed: 3, device: dev, dtype: dt }),
    timestep: x2i.Tensor.fromArray(new Float32Array(B).fill(1), [B], { device: dev }),
    guidance: x2i.Tensor.fromArray(new Float32Array(B).fill(3.5), [B], { device: dev }),
    imgIds: x2i.Tensor.fromArray(imgIds, [N, 3], { device: dev }),
    txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device: dev }),
  };
}
const dispose = (o) => { for (const v of Object.values(o ?? {})) if (v instanceof x2i.Tensor) v.dispose(); else if (v && typeof v === 'object') dispose(v); };

// FLOPs of one block at L tokens (the baseline's convention): linears 2·L·12·D², attention 4·L²·D.
const linF = 2 * L * 12 * D * D, attF = 4 * L * L * D;
const ins = await inputs();

// ---- blocks: a model with 0, 1 and 2 blocks of each kind (the model around the blocks: embedders, RoPE
// tables, final layer, the call); a block's cost is the 2-block minus the 1-block time. Forward+backward
// here is to the conditioning inputs only (the frozen student): linears 2× forward, attention 3× forward.
for (const precision of ['fast', 'reference']) {
  const t = {};
  for (const [name, nd, ns] of [['none', 0, 0], ['double', 1, 0], ['double2', 2, 0], ['single', 0, 1], ['single2', 0, 2]]) {
    const m = await x2i.FluxTransformer.fromConfig({ num_layers: nd, num_single_layers: ns }, { device: dev, dtype: dt, seed: 0, precision });
    const gradSample = await x2i.randn([1, N, 64], { seed: 4, device: dev, dtype: dt });
    t[name] = { fwd: await time(async () => dispose(await m.forward(ins))),
      fwdbwd: await time(async () => dispose(await m.forwardBackward(ins, { gradSample }))) };
    gradSample.dispose();
    m.dispose();
  }
  result.runs[`model_without_blocks_x2i_${precision}`] = { fwd_ms: t.none.fwd, fwdbwd_ms: t.none.fwdbwd };
  for (const kind of ['double', 'single']) {
    const fwd = t[`${kind}2`].fwd - t[kind].fwd, fwdbwd = t[`${kind}2`].fwdbwd - t[kind].fwdbwd;
    result.runs[`${kind}_x2i_${precision}`] = { fwd_ms: fwd, fwd_TFLOPs: (linF + attF) / fwd / 1e9, fwdbwd_ms: fwdbwd,
      fwdbwd_TFLOPs: (2 * linF + 3 * attF) / fwdbwd / 1e9, one_block_model_fwd_ms: t[kind].fwd, one_block_model_fwdbwd_ms: t[kind].fwdbwd };
  }
}

// ---- whole model, teacher forward at 1024², and bf16 vs float32
if (!args['no-model']) {
  const m = await x2i.FluxTransformer.fromConfig({}, { device: dev, dtype: dt, seed: 0 });
  result.parameters = m.parameters;
  const modelF = 19 * (linF + attF) + 38 * (linF + attF) + 2 * (N * 64 * D + T * 4096 * D + N * D * 64);
  const fwd = await time(async () => dispose(await m.forward(ins)), 5, 2);
  const fwdCap = await time(async () => dispose(await m.forward(ins, { capture: true })), 5, 2);
  result.runs.model_x2i = { fwd_ms: fwd, fwd_TFLOPs: modelF / fwd / 1e9, fwd_capture_ms: fwdCap };
  if (!args['no-fp32']) {
    const bf = await m.forward(ins, { capture: true });
    m.dispose();
    const m32 = await x2i.FluxTransformer.fromConfig({}, { device: dev, dtype: 'float32', seed: 0 });
    const ins32 = {};
    for (const [k, v] of Object.entries(ins)) ins32[k] = await v.to({ dtype: 'float32' });
    const fp = await m32.forward(ins32, { capture: true });
    result.bf16_vs_fp32 = {
      sample: await x2i.relativeError(bf.sample, fp.sample),
      doubleImg: await x2i.relativeError(bf.captures.doubleImg, fp.captures.doubleImg),
      doubleTxt: await x2i.relativeError(bf.captures.doubleTxt, fp.captures.doubleTxt),
      single: await x2i.relativeError(bf.captures.single, fp.captures.single),
    };
    dispose(bf); dispose(fp); dispose(ins32);
    m32.dispose();
  } else {
    m.dispose();
  }
}

// ---- the PyTorch baseline, same machine, same run
if (args.baseline) {
  const out = path.join(os.tmpdir(), `flux_blocks-${process.pid}.json`);
  const r = spawnSync('python3', [args.baseline, '--json', out], { encoding: 'utf8', timeout: 540_000 });
  if (r.status === 0) {
    const b = JSON.parse(fs.readFileSync(out, 'utf8'));
    result.baseline = b;
    for (const [k, v] of Object.entries(b.runs)) result.runs[k] = v;
  } else {
    result.baselineError = (r.stderr || r.error?.message || '').split('\n').slice(-5).join('\n');
  }
}

// ---- report
const row = (k) => result.runs[k];
console.log(`FLUX.1 blocks, ${L} tokens, batch 1, bf16, SDPA ${backend} — ${result.date}`);
console.log('| run | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |');
console.log('|---|---:|---:|---:|---:|');
for (const [k, r] of Object.entries(result.runs)) {
  if (!('fwdbwd_ms' in r)) continue;
  if (!('fwd_TFLOPs' in r)) { console.log(`| ${k} | ${r.fwd_ms.toFixed(2)} | | ${r.fwdbwd_ms.toFixed(2)} | |`); continue; }
  console.log(`| ${k} | ${r.fwd_ms.toFixed(2)} | ${r.fwd_TFLOPs.toFixed(0)} | ${r.fwdbwd_ms.toFixed(2)} | ${r.fwdbwd_TFLOPs.toFixed(0)} |`);
}
for (const kind of ['double', 'single']) {
  const x = row(`${kind}_x2i_fast`), e = row(`${kind}_eager`), c = row(`${kind}_compile`);
  if (x && e) console.log(`${kind} (x2i fast, cost of one block): fwd ${(e.fwd_ms / x.fwd_ms).toFixed(2)}× eager${c ? `, ${(c.fwd_ms / x.fwd_ms).toFixed(2)}× compile` : ''}; ` +
    `fwd+bwd ${(e.fwdbwd_ms / x.fwdbwd_ms).toFixed(2)}× eager${c ? `, ${(c.fwdbwd_ms / x.fwdbwd_ms).toFixed(2)}× compile` : ''} ` +
    '(the baseline\'s backward also computes weight gradients; the frozen student needs input gradients only)');
}
if (row('model_x2i')) {
  const r = row('model_x2i');
  console.log(`whole model (${(result.parameters / 1e9).toFixed(2)} B params) teacher forward at 1024²: ${r.fwd_ms.toFixed(1)} ms ` +
    `(${r.fwd_TFLOPs.toFixed(0)} TFLOP/s, ${(r.fwd_TFLOPs / 786 * 100).toFixed(0)}% of the 786 TFLOP/s GEMM ceiling), ` +
    `with capture ${r.fwd_capture_ms.toFixed(1)} ms`);
  if (result.baseline?.whole_model_forward_ms_estimate) console.log('baseline whole-model estimate (ms):', result.baseline.whole_model_forward_ms_estimate);
}
if (result.bf16_vs_fp32) console.log('bf16 vs float32 relative error:', result.bf16_vs_fp32);
if (result.baselineError) console.log('baseline failed:', result.baselineError);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 2));
