// A child process of test/core/checkpoint_attacks.test.ts: one load (a checkpoint, a LoRA file onto the golden
// transformer, an audio file) through the built package (dist/), its outcome as
// one JSON line on stdout. A crash shows as a signal or an exit code in the parent.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const x2i = await import(pathToFileURL(path.join(root, 'dist', 'index.js')).href);
const [op, file, kind] = process.argv.slice(2);
const load = (f, opts) => (kind === 'st' ? x2i.loadSafetensors(f, opts) : x2i.loadTorchCheckpoint(f, opts));

async function values(ts) {
  const out = {};
  for (const [k, t] of Object.entries(ts)) out[k] = Array.from(await t.to({ dtype: 'float64' }).then((c) => c.toArray()));
  return out;
}

try {
  if (op === 'load') {
    const ts = await load(file);
    process.stdout.write(JSON.stringify({ ok: true, names: Object.keys(ts), values: await values(ts) }) + '\n');
  } else if (op === 'truncate-under') {
    // load with the default options, then truncate and overwrite the file, then use the tensors
    const ts = await load(file);
    const before = await values(ts);
    fs.truncateSync(file, 0);
    fs.writeFileSync(file, Buffer.alloc(10, 0xff));
    fs.truncateSync(file, 3);
    const after = await values(ts);
    const sum = await Promise.all(Object.values(ts).map((t) => t.to({ dtype: 'float32' })));
    process.stdout.write(JSON.stringify({ ok: true, same: JSON.stringify(before) === JSON.stringify(after),
      n: sum.length }) + '\n');
  } else if (op === 'lora') {
    // a LoRA file onto the golden tiny transformer
    const flux = await x2i.FluxTransformer.fromPretrained(path.join(root, 'test', 'fixtures', 'golden', 'flux-transformer'));
    const name = await flux.loadLora(file);
    process.stdout.write(JSON.stringify({ ok: true, names: [name] }) + '\n');
  } else if (op === 'audio') {
    // an audio file decoded, mixed to mono, resampled to 16 kHz, then its log-mel features
    const a = await x2i.audio.load(file);
    const f = await x2i.audio.logMel(a.waveform);
    process.stdout.write(JSON.stringify({ ok: true, names: [String(a.waveform.length)], shape: f.shape }) + '\n');
  } else {
    throw new Error(`unknown op ${op}`);
  }
} catch (e) {
  process.stdout.write(JSON.stringify({ ok: false, name: e?.constructor?.name, code: e?.code, message: e?.message }) + '\n');
}
