// The HTTP generation service (x2i.createServer) at real size on CUDA: FLUX.1-dev-size transformer and VAE, a
// Qwen2.5-VL-7B-size X2I student and its AlignNet (x2i.randomServedModel({ size: 'flux-dev' }): random bf16 weights),
// 1024², 28 steps, 512 prompt tokens. For 1, 2 and 4 concurrent clients (each sending its requests one after another,
// every request another prompt and seed, over loopback HTTP with global fetch), the images per second and the p50 / p95
// latency seen by the clients, per server configuration (--max-batch: 1 = no batching; 4 = concurrent requests
// batched into one forward per step). Warm-up requests first, not timed. The baseline, in the same run: the same
// generations called in-process one after another (X2IGenerator.generate, then PNG encoding: no HTTP, no queue).
// The table goes to stdout; --json FILE writes every latency.
//   node bench/serve.mjs [--clients 1,2,4] [--requests 3] [--max-batch 1,4] [--steps 28] [--size 1024] [--json out.json]
//   node bench/serve.mjs --tiny --device cpu   (the tiny models: the code path end to end, no GPU)
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';

const { values: args } = parseArgs({ options: {
  clients: { type: 'string', default: '1,2,4' }, requests: { type: 'string', default: '3' }, 'max-batch': { type: 'string', default: '1,4' },
  'batch-window-ms': { type: 'string', default: '20' }, steps: { type: 'string' }, size: { type: 'string' }, warmup: { type: 'string', default: '1' },
  json: { type: 'string' }, tiny: { type: 'boolean', default: false }, device: { type: 'string' } } });
const tiny = args.tiny;
const device = args.device ?? (tiny ? 'cpu' : 'cuda');
const onCuda = device.startsWith('cuda');
if (onCuda && !x2i.cuda.isAvailable()) { console.error('bench/serve.mjs needs CUDA (or --tiny --device cpu)'); process.exit(1); }
const list = (s) => s.split(',').map((x) => Number(x.trim()));
const clientCounts = list(args.clients), maxBatches = list(args['max-batch']);
const perClient = Number(args.requests), warmup = Number(args.warmup);
const side = Number(args.size ?? (tiny ? 64 : 1024)), steps = Number(args.steps ?? (tiny ? 8 : 28));
for (const [k, v] of [['--requests', perClient], ['--size', side], ['--steps', steps], ['--warmup', warmup]])
  if (!Number.isSafeInteger(v) || v < 0) { console.error(`${k}: expected a non-negative integer, got ${v}`); process.exit(2); }
const GiB = 2 ** 30;
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]; };
const f = (x, d = 1) => (x === undefined || x === null || Number.isNaN(x) ? '—' : x.toFixed(d));

function gpuName() {
  const r = spawnSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : null;
}

const result = { date: new Date().toISOString(), device: onCuda ? gpuName() ?? device : device, tiny, size: side, steps, perClient,
  build: x2i.buildInfo(), runs: [] };
const t0 = performance.now();
const model = await x2i.randomServedModel({ size: tiny ? 'tiny' : 'flux-dev', device, seed: 0 });
result.build_s = (performance.now() - t0) / 1000;
if (onCuda) { await x2i.cuda.synchronize(device); result.weights_GiB = x2i.cuda.memory(device).allocated / GiB; }

let n = 0;
const request = async (url) => {
  const i = n++;
  const t = performance.now();
  const r = await fetch(`${url}/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: `a photograph of scene number ${i}, in the style of a study`, seed: i, height: side, width: side,
      numInferenceSteps: steps }) });
  const png = Buffer.from(await r.arrayBuffer());
  if (r.status !== 200) throw new Error(`request ${i}: HTTP ${r.status}: ${png.toString('utf8').slice(0, 300)}`);
  return { ms: performance.now() - t, batchSize: Number(r.headers.get('x-x2i-batch-size')), bytes: png.length };
};

// ---- the baseline: the same requests in-process, one after another
{
  const direct = async () => {
    const i = n++;
    const t = performance.now();
    const out = await model.generator.generate({ prompt: `a photograph of scene number ${i}, in the style of a study`, seed: i, height: side,
      width: side, numInferenceSteps: steps, tokenizer: model.tokenizer, maxLength: model.maxLength });
    try {
      await x2i.encodeImage(out.images, 0, 'png');
    } finally {
      out.images.dispose();
      out.stepLatents?.dispose();
    }
    return performance.now() - t;
  };
  for (let w = 0; w < warmup; w++) await direct();
  const count = Math.max(2, perClient);
  const start = performance.now();
  const ms = [];
  for (let k = 0; k < count; k++) ms.push(await direct());
  const seconds = (performance.now() - start) / 1000;
  result.direct = { requests: count, seconds, imagesPerSecond: count / seconds, p50_ms: pct(ms, 50), p95_ms: pct(ms, 95), latencies_ms: ms };
  console.error(`in-process: ${f(result.direct.imagesPerSecond, 3)} images/s, p50 ${f(result.direct.p50_ms / 1000, 2)} s`);
}

for (const maxBatch of maxBatches) {
  const server = await x2i.createServer({ generator: model, port: 0, maxQueue: 64, maxBatch, batchWindowMs: Number(args['batch-window-ms']),
    maxSteps: Math.max(100, steps), maxImageSide: Math.max(2048, side), maxPixels: Math.max(2048 * 2048, side * side) });
  try {
    for (let w = 0; w < warmup; w++) await request(server.url);
    for (const clients of clientCounts) {
      if (onCuda) x2i.cuda.memory(device, { reset: true });
      const start = performance.now();
      const per = await Promise.all(Array.from({ length: clients }, async () => {
        const out = [];
        for (let k = 0; k < perClient; k++) out.push(await request(server.url));
        return out;
      }));
      const seconds = (performance.now() - start) / 1000;
      const all = per.flat(), ms = all.map((x) => x.ms);
      const run = { maxBatch, clients, requests: all.length, seconds, imagesPerSecond: all.length / seconds, p50_ms: pct(ms, 50),
        p95_ms: pct(ms, 95), meanBatch: all.reduce((a, x) => a + x.batchSize, 0) / all.length, latencies_ms: ms,
        peak_allocated_GiB: onCuda ? x2i.cuda.memory(device).peakAllocated / GiB : null };
      result.runs.push(run);
      console.error(`max-batch ${maxBatch}, ${clients} client(s): ${f(run.imagesPerSecond, 3)} images/s, p50 ${f(run.p50_ms / 1000, 2)} s, ` +
        `p95 ${f(run.p95_ms / 1000, 2)} s, mean batch ${f(run.meanBatch, 2)}`);
    }
    result.metrics = server.metrics();
  } finally {
    await server.close();
  }
}
model.dispose();

console.log(`The generation service${tiny ? ' (TINY models, code-path check)' : ''}: ${tiny ? 'tiny' : 'FLUX.1-dev + Qwen2.5-VL-7B-size'} ` +
  `random ${onCuda ? 'bf16' : 'float32'} weights, ${side}², ${steps} steps, ${perClient} request(s) per client over loopback HTTP — ${result.date}`);
console.log(`device ${result.device}; models built in ${f(result.build_s)} s${result.weights_GiB ? `, ${f(result.weights_GiB, 1)} GiB of weights` : ''}`);
console.log('| max batch | clients | requests | images/s (service / in-process) | p50 latency | p95 latency | mean batch | peak allocated |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
{
  const d = result.direct;
  console.log(`| in-process baseline (no HTTP) | 1 | ${d.requests} | ${f(d.imagesPerSecond, 3)} | ${f(d.p50_ms / 1000, 2)} s | ${f(d.p95_ms / 1000, 2)} s | 1.00 | — |`);
}
for (const r of result.runs)
  console.log(`| ${r.maxBatch} | ${r.clients} | ${r.requests} | ${f(r.imagesPerSecond, 3)} (${f(r.imagesPerSecond / result.direct.imagesPerSecond, 2)}) | ${f(r.p50_ms / 1000, 2)} s | ${f(r.p95_ms / 1000, 2)} s | ` +
    `${f(r.meanBatch, 2)} | ${r.peak_allocated_GiB === null ? '—' : `${f(r.peak_allocated_GiB, 1)} GiB`} |`);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 1));
