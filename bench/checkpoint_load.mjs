// Checkpoint load speed on a multi-GB file: the torch.save reader (lib/core/torch_checkpoint.ts + the native
// byte-range reader, owned memory) against the previous one (LibTorch's zip reader and pickle_load, from an x2i.node
// built before it was removed: --old build-old/x2i.node), and safetensors with owned memory (the new default) against
// the zero-copy mapping (the previous default, now { mmap: true }).
//
//   node bench/checkpoint_load.mjs [--gib 2] [--runs 1] [--old build-old/x2i.node] [--json out.json]
//
// Writes a torch.save file (zip64, STORED, 64-byte aligned, as torch.save writes) and a safetensors file of the
// same tensors (float32 [2048, 4096], 32 MiB each) into os.tmpdir(), and deletes them after. Each measurement runs in
// its own child process (the two addons never share one), which loads twice (see --child); the page cache is warm
// (the files were just written): this measures the readers, not the disk. Times are of the load call alone; each
// child disposes what it loaded. A mapping (mmap, the old safetensors default) defers its page faults and reads to
// the first use of each tensor, which these times do not include.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};

if (process.argv[2] === '--child') {
  // Loads twice in one process: the first load pays for the process's first touch of fresh memory (slow on this VM),
  // the second reuses freed memory (the reader's own speed). old-torch loads once (it is the slow one).
  const [, , , mode, file, old] = process.argv;
  const x2i = await import(pathToFileURL(path.join(root, 'dist', 'index.js')).href);
  const addon = mode.startsWith('old-') ? createRequire(import.meta.url)(path.resolve(old)) : undefined;
  if (!addon) x2i.Tensor.fromArray(new Float32Array(1), [1]).dispose();  // loads the addon untimed
  const plan = mode === 'old-st' ? await x2i.readSafetensorsHeader(file) : undefined;
  const once = async () => {
    const t0 = process.hrtime.bigint();
    let rec;
    if (mode === 'old-torch') rec = await addon.loadTorchCheckpoint(file);
    else if (mode === 'old-st') rec = await addon.readSafetensors(file, plan.dataStart,
      plan.entries.map((e) => [e.name, e.dtype, e.shape, e.dataOffsets[0], e.dataOffsets[1]]));
    else if (mode.startsWith('torch')) rec = await x2i.loadTorchCheckpoint(file, { mmap: mode.endsWith('-mmap') });
    else rec = await x2i.loadSafetensors(file, { mmap: mode.endsWith('-mmap') });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    let n = 0, bytes = 0;
    for (const t of Object.values(rec)) { bytes += addon ? t.info().nbytes : t.nbytes; n++; t.dispose(); }
    return { s, n, bytes };
  };
  const first = await once();
  const second = mode === 'old-torch' ? undefined : await once();
  process.stdout.write(JSON.stringify({ s: first.s, s2: second?.s, n: first.n, bytes: first.bytes }) + '\n');
  process.exit(0);
}

const gib = Number(arg('gib', '2'));
const runs = Number(arg('runs', '1'));
const old = arg('old', path.join(root, 'build-old', 'x2i.node'));
const jsonOut = arg('json');
const TENSOR = 32 * 1024 * 1024;  // bytes: float32 [2048, 4096]
const count = Math.round((gib * 1024 ** 3) / TENSOR);
if (gib > 4) throw new Error('keep the files at 4 GiB or less on this machine');

const block = Buffer.alloc(TENSOR);
for (let i = 0; i < TENSOR; i += 4) block.writeFloatLE(Math.sin(i) * 0.02, i);
const crc = zlib.crc32(block);
const names = Array.from({ length: count }, (_, i) => `blocks.${i}.weight`);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-ckpt-bench-'));
const binFile = path.join(tmp, 'model.bin');
const stFile = path.join(tmp, 'model.safetensors');

function writeTorchSave(file) {
  const fd = fs.openSync(file, 'w');
  let pos = 0;
  const central = [];
  const put = (b) => { fs.writeSync(fd, b, 0, b.length, pos); pos += b.length; };
  const record = (name, data, dataCrc) => {
    const nb = Buffer.from(name);
    const pad = (64 - ((pos + 30 + nb.length + 4) % 64)) % 64;
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0); h.writeUInt16LE(45, 4); h.writeUInt32LE(dataCrc, 14);
    h.writeUInt32LE(0xffffffff, 18); h.writeUInt32LE(0xffffffff, 22); h.writeUInt16LE(nb.length, 26);
    h.writeUInt16LE(4 + pad + 20, 28);
    const x = Buffer.alloc(4 + pad + 20);
    x.writeUInt16LE(1, 0); x.writeUInt16LE(16, 2);
    x.writeBigUInt64LE(BigInt(data.length), 4); x.writeBigUInt64LE(BigInt(data.length), 12);
    x.writeUInt16LE(0x5346, 20); x.writeUInt16LE(pad, 22);
    const offset = pos;
    put(h); put(nb); put(x); put(data);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0); c.writeUInt16LE(45, 4); c.writeUInt16LE(45, 6); c.writeUInt32LE(dataCrc, 16);
    c.writeUInt32LE(0xffffffff, 20); c.writeUInt32LE(0xffffffff, 24); c.writeUInt32LE(0xffffffff, 42);
    c.writeUInt16LE(nb.length, 28); c.writeUInt16LE(28, 30);
    const cx = Buffer.alloc(28);
    cx.writeUInt16LE(1, 0); cx.writeUInt16LE(24, 2); cx.writeBigUInt64LE(BigInt(data.length), 4);
    cx.writeBigUInt64LE(BigInt(data.length), 12); cx.writeBigUInt64LE(BigInt(offset), 20);
    central.push(c, nb, cx);
  };
  // data.pkl: {name: _rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), 0, (2048, 4096), (4096, 1), False, OrderedDict())}
  const parts = [Buffer.from([0x80, 2, 0x7d, 0x28])];
  const str = (s) => { const b = Buffer.from(s); const n = Buffer.alloc(5); n[0] = 0x58; n.writeUInt32LE(b.length, 1); parts.push(n, b); };
  const int = (v) => { const b = Buffer.alloc(5); b[0] = 0x4a; b.writeInt32LE(v, 1); parts.push(b); };
  names.forEach((name, i) => {
    str(name);
    parts.push(Buffer.from('ctorch._utils\n_rebuild_tensor_v2\n(('));
    str('storage'); parts.push(Buffer.from('ctorch\nFloatStorage\n')); str(String(i)); str('cpu'); int(TENSOR / 4);
    parts.push(Buffer.from('tQ'));
    int(0); parts.push(Buffer.from('(')); int(2048); int(4096); parts.push(Buffer.from('t(')); int(4096); int(1);
    parts.push(Buffer.from('t\x89ccollections\nOrderedDict\n)RtR', 'latin1'));
  });
  parts.push(Buffer.from('u.'));
  const pkl = Buffer.concat(parts);
  record('model/data.pkl', pkl, zlib.crc32(pkl));
  record('model/byteorder', Buffer.from('little'), zlib.crc32(Buffer.from('little')));
  names.forEach((_, i) => record(`model/data/${i}`, block, crc));
  record('model/version', Buffer.from('3\n'), zlib.crc32(Buffer.from('3\n')));
  const cd = Buffer.concat(central);
  const cdOffset = pos;
  put(cd);
  const records = central.length / 3;
  const z = Buffer.alloc(56);
  z.writeUInt32LE(0x06064b50, 0); z.writeBigUInt64LE(44n, 4); z.writeUInt16LE(45, 12); z.writeUInt16LE(45, 14);
  z.writeBigUInt64LE(BigInt(records), 24); z.writeBigUInt64LE(BigInt(records), 32);
  z.writeBigUInt64LE(BigInt(cd.length), 40); z.writeBigUInt64LE(BigInt(cdOffset), 48);
  const loc = Buffer.alloc(20);
  loc.writeUInt32LE(0x07064b50, 0); loc.writeBigUInt64LE(BigInt(pos), 8); loc.writeUInt32LE(1, 16);
  const e = Buffer.alloc(22);
  e.writeUInt32LE(0x06054b50, 0); e.writeUInt16LE(0xffff, 8); e.writeUInt16LE(0xffff, 10);
  e.writeUInt32LE(0xffffffff, 12); e.writeUInt32LE(0xffffffff, 16);
  put(z); put(loc); put(e);
  fs.closeSync(fd);
}

function writeSafetensors(file) {
  const header = {};
  names.forEach((n, i) => { header[n] = { dtype: 'F32', shape: [2048, 4096], data_offsets: [i * TENSOR, (i + 1) * TENSOR] }; });
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const fd = fs.openSync(file, 'w');
  fs.writeSync(fd, len); fs.writeSync(fd, json);
  for (let i = 0; i < count; ++i) fs.writeSync(fd, block);
  fs.closeSync(fd);
}

function measure(mode, file) {
  const out = [];
  for (let r = 0; r < runs; ++r) {
    const p = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', mode, file, old],
      { encoding: 'utf8', env: process.env, maxBuffer: 1 << 24 });
    if (p.status !== 0) throw new Error(`${mode}: exit ${p.status} ${p.signal ?? ''}\n${p.stderr}`);
    out.push(JSON.parse(p.stdout.trim().split('\n').pop()));
  }
  const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
  const first = med(out.map((o) => o.s));
  const second = out[0].s2 === undefined ? undefined : med(out.map((o) => o.s2));
  const bytes = out[0].bytes;
  return { mode, first, second, firstGBps: bytes / first / 1e9, secondGBps: second && bytes / second / 1e9,
    runs: out, tensors: out[0].n, bytes };
}

try {
  writeTorchSave(binFile);
  writeSafetensors(stFile);
  process.stderr.write(`files: ${(fs.statSync(binFile).size / 1e9).toFixed(2)} GB torch.save (zip64), ` +
    `${(fs.statSync(stFile).size / 1e9).toFixed(2)} GB safetensors, ${count} tensors\n`);
  const haveOld = fs.existsSync(old);
  const rows = [];
  for (const [mode, file] of [['torch', binFile], ['torch-mmap', binFile], ...(haveOld ? [['old-torch', binFile]] : []),
    ['st', stFile], ['st-mmap', stFile], ...(haveOld ? [['old-st', stFile]] : [])]) {
    const r = measure(mode, file);
    rows.push(r);
    process.stderr.write(`${mode}: first load ${r.first.toFixed(3)} s = ${r.firstGBps.toFixed(2)} GB/s` +
      (r.second === undefined ? '' : `, second load ${r.second.toFixed(3)} s = ${r.secondGBps.toFixed(2)} GB/s`) + '\n');
  }
  const by = Object.fromEntries(rows.map((r) => [r.mode, r]));
  if (by['old-torch']) process.stderr.write(`torch.save first load, new / old: ${(by.torch.firstGBps / by['old-torch'].firstGBps).toFixed(2)}×\n`);
  const result = { date: new Date().toISOString(), cpus: os.cpus().length, cpu: os.cpus()[0]?.model, gib, runs, rows };
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(result, null, 2) + '\n');
  process.stdout.write(JSON.stringify(result) + '\n');
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
