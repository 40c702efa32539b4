// Unfused LoRA's one-pass kernel (native/kernels/low_rank.cu) at FLUX.1-dev's adapted layers, 1024² (4096 image,
// 4608 single-stream tokens), rank 16 per part, bf16 on CUDA: epilogue(y + k · u · upᵀ) per call, against its
// LibTorch twin (the unfused composition: float32 GEMM of rank width, add, epilogue, cast) and a device copy of the
// same bytes (the bandwidth yardstick: the kernel reads y (and the residual) and writes the output once).
//   node bench/low_rank.mjs [--json out.json] [--iters 50]
// Times are means over back-to-back calls inside the addon's worker (benchLowRankAdd), without the bridge's cost.
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { probes } from '../dist/testing.js';

const { values: args } = parseArgs({ options: { json: { type: 'string' }, iters: { type: 'string', default: '50' } } });
if (!x2i.cuda.isAvailable()) { console.error('bench/low_rank.mjs needs CUDA'); process.exit(1); }
const iters = Number(args.iters);
const layers = [
  { name: 'double img qkv (3 parts)', M: 4096, N: 9216, R: 48, parts: 3, epilogue: 'none' },
  { name: 'double img proj + gated residual', M: 4096, N: 3072, R: 16, epilogue: 'gated' },
  { name: 'double img mlp.0 + GELU', M: 4096, N: 12288, R: 16, epilogue: 'gelu' },
  { name: 'double img mlp.2 + gated residual', M: 4096, N: 3072, R: 16, epilogue: 'gated' },
  { name: 'single linear1 qkv (4 parts)', M: 4608, N: 9216, R: 64, parts: 4, epilogue: 'none' },
  { name: 'single linear1 mlp + GELU', M: 4608, N: 12288, R: 16, epilogue: 'gelu' },
  { name: 'single linear2 + gated residual', M: 4608, N: 3072, R: 16, epilogue: 'gated' },
];

function blockUp(N, R, parts) {
  const a = new Float32Array(N * R);
  const rows = Math.ceil(N / parts), cols = R / parts;
  for (let j = 0; j < N; ++j) for (let r = 0; r < R; ++r) if (Math.floor(j / rows) === Math.floor(r / cols)) a[j * R + r] = ((j * 7 + r * 13) % 17 - 8) * 1e-3;
  return a;
}

// The kernel's chunk mask of a block-diagonal up (bit c of tile t: rank columns [16c, 16c + 16) meet rows [64t, 64t + 64)).
function maskOf(N, R, parts) {
  const bits = new Int32Array(Math.ceil(N / 64));
  const rows = Math.ceil(N / parts), cols = R / parts;
  for (let j = 0; j < N; ++j) for (let r = 0; r < R; ++r) if (Math.floor(j / rows) === Math.floor(r / cols)) bits[j >> 6] |= 1 << (r >> 4);
  return bits;
}

const rows = [];
const dev = { device: 'cuda', dtype: 'bfloat16' };
for (const l of layers) {
  const yAug = await x2i.randn([l.M, l.N + l.R], { seed: 1, ...dev });
  const up = await (l.parts ? x2i.Tensor.fromArray(blockUp(l.N, l.R, l.parts), [l.N, l.R]).to(dev) : x2i.randn([l.N, l.R], { seed: 2, ...dev }));
  const res = await x2i.randn([l.M, l.N], { seed: 3, ...dev }), gate = await x2i.randn([1, l.N], { seed: 4, ...dev });
  const mask = l.parts ? await x2i.Tensor.fromArray(maskOf(l.N, l.R, l.parts), [Math.ceil(l.N / 64)]).to({ device: 'cuda' }) : undefined;
  const gated = l.epilogue === 'gated';
  // mean ms over `iters` back-to-back calls inside the worker (the bridge's cost left out)
  const time = (method) => probes().benchLowRankAdd(yAug.handle, l.R, up.handle, 0.8, l.epilogue,
    gated ? res.handle : undefined, gated ? gate.handle : undefined, method, mask?.handle ?? false, iters);
  const kernel = await time('kernel'), twin = await time('composite');
  const bytes = l.M * l.N * 2 * (gated ? 3 : 2);  // y (+ residual) read, output written
  const copyS = await probes().benchCopy(bytes / 2, 'cuda', 'cuda', 20);  // reads and writes bytes / 2
  const row = { ...l, kernel_ms: kernel, twin_ms: twin, copy_ms: copyS * 1e3, kernel_GBs: bytes / kernel / 1e6, copy_GBs: bytes / copyS / 1e9 };
  rows.push(row);
  for (const t of [yAug, up, res, gate, mask]) t?.dispose();
}
const r2 = (x) => x.toFixed(2), r3 = (x) => x.toFixed(3);
console.log(`Unfused LoRA's one-pass kernel, bf16, ${(await import('node:child_process')).spawnSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' }).stdout?.trim() ?? 'CUDA'} — ${new Date().toISOString()}`);
console.log('| layer (M × N, rank) | kernel ms | GB/s | copy of the same bytes ms (GB/s) | kernel / copy | LibTorch twin ms | twin / kernel |');
console.log('|---|---:|---:|---:|---:|---:|---:|');
for (const r of rows)
  console.log(`| ${r.name} (${r.M} × ${r.N}, ${r.R}) | ${r3(r.kernel_ms)} | ${r.kernel_GBs.toFixed(0)} | ${r3(r.copy_ms)} (${r.copy_GBs.toFixed(0)}) | ${r2(r.kernel_ms / r.copy_ms)} | ${r3(r.twin_ms)} | ${r2(r.twin_ms / r.kernel_ms)}× |`);
if (args.json) fs.writeFileSync(args.json, JSON.stringify({ date: new Date().toISOString(), iters, rows }, null, 2));
