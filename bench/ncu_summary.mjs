// Kernel time by kernel name from Nsight Compute CSV logs (ncu --csv --page raw --metrics gpu__time_duration.sum
// --log-file FILE), one column per file, largest first, with the difference of the last file to the first:
//   node bench/ncu_summary.mjs fused.csv unfused.csv [--top 40] [--grid (the grid size in the key: GEMM tilings)]
import fs from 'node:fs';
import { parseArgs } from 'node:util';

const { values: args, positionals: files } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '40' }, grid: { type: 'boolean', default: false } } });
if (files.length === 0) { console.error('usage: node bench/ncu_summary.mjs A.csv [B.csv ...] [--top 40]'); process.exit(2); }

// one CSV line → fields (quoted, "" escapes)
function fields(line) {
  const out = [];
  let cur = '', q = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (q) {
      if (c === '"' && line[i + 1] === '"') cur += '"', i++;
      else if (c === '"') q = false;
      else cur += c;
    } else if (c === '"') q = true;
    else if (c === ',') out.push(cur), cur = '';
    else cur += c;
  }
  out.push(cur);
  return out;
}

/** name → { n, us } from one log; the time column in ns, us or ms as its unit row says. */
function read(file) {
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('"'));
  const h = lines.findIndex((l) => l.includes('"Kernel Name"'));
  if (h < 0) throw new Error(`${file}: no "Kernel Name" header row (is it ncu --csv --page raw output?)`);
  const head = fields(lines[h]), name = head.indexOf('Kernel Name'), grid = head.indexOf('Grid Size'), time = head.indexOf('gpu__time_duration.sum');
  if (time < 0) throw new Error(`${file}: no gpu__time_duration.sum column; found ${head.join(', ')}`);
  const unit = fields(lines[h + 1] ?? '')[time];
  const scale = { ns: 1e-3, nsecond: 1e-3, usecond: 1, us: 1, msecond: 1e3, ms: 1e3 }[unit] ?? null;
  const rows = scale === null ? lines.slice(h + 1) : lines.slice(h + 2);
  const by = new Map();
  let total = 0, count = 0;
  for (const l of rows) {
    const f = fields(l);
    const us = Number(f[time].replace(/,/g, '')) * (scale ?? 1e-3);
    if (!Number.isFinite(us)) continue;
    const key = f[name].replace(/\(.*$/, '').replace(/^void /, '').slice(0, 110) + (args.grid && grid >= 0 ? ` ${f[grid]}` : '');
    const e = by.get(key) ?? { n: 0, us: 0 };
    e.n++, e.us += us, total += us, count++;
    by.set(key, e);
  }
  return { by, total, count, unit: unit ?? '?' };
}

const logs = files.map(read);
const names = [...new Set(logs.flatMap((l) => [...l.by.keys()]))];
const last = logs[logs.length - 1], first = logs[0];
names.sort((a, b) => Math.max(...logs.map((l) => l.by.get(b)?.us ?? 0)) - Math.max(...logs.map((l) => l.by.get(a)?.us ?? 0)));
const f1 = (x) => (x === undefined ? '—' : x.toFixed(1));
console.log(`| kernel | ${files.map((f) => `${f} (n, µs)`).join(' | ')} | last − first µs |`);
console.log(`|---|${files.map(() => '---:').join('|')}|---:|`);
console.log(`| **all** (${logs.map((l) => l.count).join(' / ')} kernels) | ${logs.map((l) => f1(l.total)).join(' | ')} | ${f1(last.total - first.total)} |`);
for (const k of names.slice(0, Number(args.top))) {
  const cells = logs.map((l) => (l.by.has(k) ? `${l.by.get(k).n}, ${f1(l.by.get(k).us)}` : '—'));
  console.log(`| ${k} | ${cells.join(' | ')} | ${f1((last.by.get(k)?.us ?? 0) - (first.by.get(k)?.us ?? 0))} |`);
}
