// Qwen2.5-VL-7B-size encoder on a GPU (issue 5), random bf16 weights (QwenVLEncoder.fromConfig): the
// language model's prefill of 4 × 512 tokens with all-layer capture (X2I's AlignNet input) against the same
// forward without capture, and against transformers in the same run (--baseline bench/baselines/qwen_prefill.py);
// the vision tower on one 448² image (1024 patches → 256 tokens), timed as the prefill with the image minus the
// same-length prefill without it.
//   node bench/qwen.mjs [--baseline bench/baselines/qwen_prefill.py] [--json out.json]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { QWEN_7B } from './real_sizes.mjs';

const { values: args } = parseArgs({ options: { baseline: { type: 'string' }, json: { type: 'string' } } });
if (!x2i.cuda.isAvailable()) { console.error('bench/qwen.mjs needs CUDA'); process.exit(1); }
const B = 4, S = 512, IMG = 448;
const config = QWEN_7B;
const result = { date: new Date().toISOString(), batch: B, seq: S, image: IMG };
const median = async (fn, n = 10) => {
  for (let i = 0; i < 3; i++) await fn();
  const ts = [];
  for (let i = 0; i < n; i++) { const t0 = performance.now(); await fn(); ts.push(performance.now() - t0); }
  return ts.sort((a, b) => a - b)[Math.floor(n / 2)];
};
const t0 = performance.now();
const m = await x2i.QwenVLEncoder.fromConfig(config, { device: 'cuda', dtype: 'bfloat16', seed: 0 });
result.build_s = (performance.now() - t0) / 1000;

// text: random ids, the last 64 positions of two rows left-padded (X2I pads on the left)
const ids = new BigInt64Array(B * S), mask = new BigInt64Array(B * S);
for (let i = 0; i < B * S; i++) {
  const pad = (i / S | 0) % 2 === 1 && i % S < 64;
  ids[i] = pad ? 151643n : BigInt(1000 + ((i * 7919) % 150000));
  mask[i] = pad ? 0n : 1n;
}
const inputIds = await x2i.Tensor.fromArray(ids, [B, S]).to({ device: 'cuda' });
const attentionMask = await x2i.Tensor.fromArray(mask, [B, S]).to({ device: 'cuda' });
const run = async (opts) => { const r = await m.forward({ inputIds, attentionMask, ...opts }); r.hiddenStates.dispose(); };
result.capture_ms = await median(() => run({}));
result.no_capture_ms = await median(() => run({ capture: false }));
result.capture_overhead = result.capture_ms / result.no_capture_ms - 1;
// linears (2 FLOPs per MAC per token) + attention (QKᵀ and PV over the full S × S, as the dense mask computes)
const H = 3584, I = 18944, kv = 512, L = 28;
const flops = 2 * B * S * L * (2 * H * H + 2 * H * kv + 3 * H * I) + 4 * B * S * S * H * L;
result.prefill_TFLOPs = flops / (result.capture_ms * 1e-3) / 1e12;
inputIds.dispose(); attentionMask.dispose();

// vision: one image in a 512-token prompt vs the same prompt with text tokens in its place
const g = IMG / 14, merged = (g / 2) * (g / 2);
const vids = new BigInt64Array(S);
for (let i = 0; i < S; i++) vids[i] = i === 10 ? 151652n : i > 10 && i <= 10 + merged ? 151655n : i === 11 + merged ? 151653n : BigInt(2000 + i);
const tids = vids.map((v) => (v === 151655n ? 3000n : v));
const imgIds = await x2i.Tensor.fromArray(vids, [1, S]).to({ device: 'cuda' });
const txtIds = await x2i.Tensor.fromArray(tids, [1, S]).to({ device: 'cuda' });
const pixelValues = await x2i.randn([g * g, 3 * 2 * 14 * 14], { seed: 5, device: 'cuda', dtype: 'bfloat16' });
const imageGridThw = x2i.Tensor.fromArray(new BigInt64Array([1n, BigInt(g), BigInt(g)]), [1, 3]);
const withImage = await median(async () => (await m.forward({ inputIds: imgIds, pixelValues, imageGridThw })).hiddenStates.dispose());
const textOnly = await median(async () => (await m.forward({ inputIds: txtIds })).hiddenStates.dispose());
result.vision = { prefill_with_image_ms: withImage, prefill_text_only_ms: textOnly, vision_ms: withImage - textOnly, patches: g * g };
m.dispose();

if (args.baseline) {
  const out = path.join(os.tmpdir(), `qwen_prefill-${process.pid}.json`);
  const r = spawnSync('python3', [args.baseline, '--batch', String(B), '--seq', String(S), '--image', String(IMG), '--json', out],
    { encoding: 'utf8', timeout: 400_000 });
  if (r.status === 0 && fs.existsSync(out)) result.baseline = JSON.parse(fs.readFileSync(out, 'utf8'));
  else result.baselineError = ((r.stderr || '') + (r.stdout || '')).split('\n').slice(-15).join('\n');
}

const f = (x, d = 1) => (typeof x === 'number' ? x.toFixed(d) : '—');
const b = result.baseline ?? {};
console.log(`Qwen2.5-VL-7B-size encoder, bf16, random weights — ${result.date} (built in ${f(result.build_s)} s)`);
console.log('| | x2i | transformers (same run) | x2i vs transformers |');
console.log('|---|---:|---:|---:|');
console.log(`| prefill ${B} × ${S}, all ${L + 1} hidden states | ${f(result.capture_ms)} ms (${f(result.prefill_TFLOPs, 0)} TFLOP/s) | ${f(b.prefill_all_layers_ms)} ms | ${b.prefill_all_layers_ms ? (b.prefill_all_layers_ms / result.capture_ms).toFixed(2) + '×' : '—'} |`);
console.log(`| prefill ${B} × ${S}, last state only | ${f(result.no_capture_ms)} ms | ${f(b.prefill_ms)} ms | ${b.prefill_ms ? (b.prefill_ms / result.no_capture_ms).toFixed(2) + '×' : '—'} |`);
console.log(`| vision tower, one ${IMG}² image (${g * g} patches) | ${f(result.vision.vision_ms)} ms | ${f(b.vision_ms)} ms | ${b.vision_ms ? (b.vision_ms / result.vision.vision_ms).toFixed(2) + '×' : '—'} |`);
console.log(`capture overhead: ${(result.capture_overhead * 100).toFixed(2)}% (goal ≤ 3%); transformers' own: ${b.prefill_ms ? ((b.prefill_all_layers_ms / b.prefill_ms - 1) * 100).toFixed(2) + '%' : '—'}`);
console.log(`vision: prefill with the image ${f(withImage)} ms, the same length text-only ${f(textOnly)} ms`);
if (b.error) console.log('baseline error:', b.error);
if (result.baselineError) console.log('baseline failed:', result.baselineError);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 2));
