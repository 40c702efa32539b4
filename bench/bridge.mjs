// Benchmark of the N-API bridge itself: call overhead (sync call, async round trip) and copy bandwidth
// across the boundary (typed array <-> tensor, host <-> device) against a plain LibTorch copy of the same
// bytes, timed inside C++ in the same run.
//   node bench/bridge.mjs [--mib 256] [--json out.json]
import fs from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { probes } from '../dist/testing.js';

const { values: args } = parseArgs({ options: { mib: { type: 'string', default: '256' }, json: { type: 'string' },
  reps: { type: 'string', default: '7' } } });
const MiB = Number(args.mib);
const bytes = MiB * 2 ** 20;
const reps = Number(args.reps);
const probe = probes();  // the bridge probes (addon.testing)

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
async function time(fn, n = reps) {
  await fn(); // warm-up
  const ts = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    ts.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return median(ts);
}
const gbs = (b, s) => b / s / 1e9;

const rows = [];
const row = (name, value, unit, baseline, note = '') => {
  rows.push({ name, value, unit, baseline, ratio: baseline ? value / baseline : undefined, note });
};

// ---- call overhead
{
  const n = 2_000_000;
  for (let i = 0; i < 1e5; i++) probe.noop();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) probe.noop();
  row('sync call (noop)', Number(process.hrtime.bigint() - t0) / n, 'ns/call');
}
{
  const n = 20_000;
  for (let i = 0; i < 1000; i++) await probe.noopAsync();
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await probe.noopAsync();
  row('async round trip, sequential', Number(process.hrtime.bigint() - t0) / n / 1e3, 'µs/call');
  t0 = process.hrtime.bigint();
  for (let i = 0; i < n / 64; i++) await Promise.all(Array.from({ length: 64 }, () => probe.noopAsync()));
  row('async round trip, 64 in flight', Number(process.hrtime.bigint() - t0) / n / 1e3, 'µs/call');
}
{
  const n = 100_000;
  const data = new Float32Array(16);
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) x2i.Tensor.fromArray(data, [16]).dispose();
  row('Tensor.fromArray + dispose (16 floats)', Number(process.hrtime.bigint() - t0) / n / 1e3, 'µs/call');
  const t = x2i.Tensor.fromArray(data, [16]);
  t0 = process.hrtime.bigint();
  for (let i = 0; i < n / 10; i++) await t.toArray();
  row('tensor.toArray (16 floats)', Number(process.hrtime.bigint() - t0) / (n / 10) / 1e3, 'µs/call');
  t.dispose();
}

// ---- host copies across the boundary vs a LibTorch host copy of the same bytes
const host = new Float32Array(bytes / 4).map((_, i) => i % 1000);
const hostCopyWarm = await probe.benchCopy(bytes, 'cpu', 'cpu', reps);
const hostCopy = await probe.benchCopy(bytes, 'cpu', 'cpu', reps, false, true);
row(`LibTorch host copy_ into existing memory ${MiB} MiB`, gbs(bytes, hostCopyWarm), 'GB/s');
row(`LibTorch host copy_ into new memory ${MiB} MiB (baseline)`, gbs(bytes, hostCopy), 'GB/s', undefined,
  'what a new tensor costs in LibTorch');
{
  const s = await time(async () => x2i.Tensor.fromArray(host, [host.length]).dispose());
  row(`Tensor.fromArray ${MiB} MiB`, gbs(bytes, s), 'GB/s', gbs(bytes, hostCopy), 'one parallel copy on the JS thread');
  const t = x2i.Tensor.fromArray(host, [host.length]);
  const s2 = await time(async () => { await t.toArray(); });
  row(`tensor.toArray ${MiB} MiB`, gbs(bytes, s2), 'GB/s', gbs(bytes, hostCopy), 'one copy off-thread, zero-copy hand-over');
  t.dispose();
}

// ---- host <-> device
if (x2i.cuda.isAvailable()) {
  const h2dPageable = await probe.benchCopy(bytes, 'cpu', 'cuda', reps, false, true);
  const h2dPinned = await probe.benchCopy(bytes, 'cpu', 'cuda', reps, true, false);
  const d2hPageable = await probe.benchCopy(bytes, 'cuda', 'cpu', reps, false, true);
  const d2hPinned = await probe.benchCopy(bytes, 'cuda', 'cpu', reps, true, false);
  const d2d = await probe.benchCopy(bytes, 'cuda', 'cuda', reps, false);
  row(`LibTorch H2D copy_ pageable, new GPU tensor ${MiB} MiB (baseline)`, gbs(bytes, h2dPageable), 'GB/s');
  row(`LibTorch H2D copy_ pinned ${MiB} MiB (baseline)`, gbs(bytes, h2dPinned), 'GB/s');
  row(`LibTorch D2H copy_ pageable, new host tensor ${MiB} MiB (baseline)`, gbs(bytes, d2hPageable), 'GB/s');
  row(`LibTorch D2H copy_ pinned ${MiB} MiB (baseline)`, gbs(bytes, d2hPinned), 'GB/s');
  row(`LibTorch D2D copy_ ${MiB} MiB (read+write)`, 2 * gbs(bytes, d2d), 'GB/s', undefined, 'vs the card\'s ~3.0 TB/s');
  const cpuT = x2i.Tensor.fromArray(host, [host.length]);
  const s1 = await time(async () => (await cpuT.to({ device: 'cuda' })).dispose());
  row(`tensor.to('cuda') ${MiB} MiB`, gbs(bytes, s1), 'GB/s', gbs(bytes, h2dPageable), 'vs pageable copy_');
  const gpuT = await cpuT.to({ device: 'cuda' });
  const s2 = await time(async () => (await gpuT.to({ device: 'cpu' })).dispose());
  row(`tensor.to('cpu') from cuda ${MiB} MiB`, gbs(bytes, s2), 'GB/s', gbs(bytes, d2hPageable), 'vs pageable copy_');
  const s3 = await time(async () => { await gpuT.toArray(); });
  row(`cuda tensor.toArray ${MiB} MiB`, gbs(bytes, s3), 'GB/s', gbs(bytes, d2hPageable), 'vs pageable copy_');
  const s4 = await time(async () => x2i.Tensor.fromArray(host, [host.length], { device: 'cuda' }).dispose());
  row(`Tensor.fromArray(device 'cuda') ${MiB} MiB`, gbs(bytes, s4), 'GB/s', gbs(bytes, h2dPinned), 'memcpy to pinned + async upload');
  cpuT.dispose(); gpuT.dispose();
}

const info = x2i.buildInfo();
const header = `x2i bridge benchmark — ${new Date().toISOString()} — LibTorch ${info.libtorchVersion}, ` +
  `${x2i.cuda.isAvailable() ? `${x2i.cuda.deviceCount()} CUDA device(s)` : 'CPU only'}, ${os.cpus()[0]?.model} ×${os.cpus().length}`;
console.log(header);
console.log('| measurement | value | unit | vs baseline |');
console.log('|---|---:|---|---|');
for (const r of rows) {
  const v = r.value >= 100 ? r.value.toFixed(0) : r.value >= 10 ? r.value.toFixed(1) : r.value.toFixed(2);
  console.log(`| ${r.name} | ${v} | ${r.unit} | ${r.ratio ? `${(r.ratio * 100).toFixed(0)}% of baseline${r.note ? ` (${r.note})` : ''}` : r.note} |`);
}
if (args.json) fs.writeFileSync(args.json, JSON.stringify({ header, info, rows }, null, 2));
