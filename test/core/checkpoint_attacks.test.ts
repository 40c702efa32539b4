// The attack suite of issue 12 for checkpoint files: every hostile file is loaded in its own child process
// (test/core/checkpoint_child.mjs through dist/), so that a crash shows as a signal or an exit code. Expected: no
// signal, no hang, an X2IError naming the file and what was wrong, no tensor (no heap bytes) handed back.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { golden, root, tmpDir } from '../helpers.js';
import { Pickler, f32, picklePayload, torchSave, zipStored } from './checkpoint_writer.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const child = path.join(root, 'test', 'core', 'checkpoint_child.mjs');

interface Outcome { signal: NodeJS.Signals | null; code: number | null; timedOut: boolean; result?: Record<string, unknown>;
  stderr: string }

function run(op: string, file: string, kind = 'torch', timeoutMs = 30_000): Promise<Outcome> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [child, op, file, kind], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '', timedOut = false;
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => { timedOut = true; p.kill('SIGKILL'); }, timeoutMs);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      let result: Record<string, unknown> | undefined;
      try { result = JSON.parse(out.trim().split('\n').pop() ?? ''); } catch { /* no result */ }
      resolve({ signal: timedOut ? null : signal, code, timedOut, result, stderr: err.slice(-2000) });
    });
  });
}

/** Runs the cases two at a time (one child per case). */
async function runAll(cases: { file: string; kind?: string }[]): Promise<Outcome[]> {
  const out: Outcome[] = new Array(cases.length);
  let next = 0;
  await Promise.all([0, 1].map(async () => {
    while (next < cases.length) {
      const i = next++;
      out[i] = await run('load', cases[i].file, cases[i].kind);
    }
  }));
  return out;
}

function expectRejected(o: Outcome, file: string, code: RegExp, message?: RegExp) {
  const what = `${path.basename(file)}: ${JSON.stringify(o.result)} ${o.stderr}`;
  expect(o.signal, what).toBeNull();
  expect(o.timedOut, what).toBe(false);
  expect(o.code, what).toBe(0);
  expect(o.result?.ok, what).toBe(false);
  expect(o.result?.name, what).toBe('X2IError');
  expect(String(o.result?.code), what).toMatch(code);
  expect(String(o.result?.message), what).toContain(file);
  if (message) expect(String(o.result?.message), what).toMatch(message);
}

const goldenBin = path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin');
let good: Buffer;
beforeAll(() => {
  expect(fs.existsSync(path.join(root, 'dist', 'index.js')), 'dist/ is built (npm run build:ts)').toBe(true);
  good = torchSave({ w: { storage: '0', size: [2, 2] }, sub: { b: { storage: '1', size: [3], offset: 1 } } },
    { 0: f32([1, 2, 3, 4]), 1: f32([5, 6, 7, 8]) });
});

function write(name: string, data: Buffer): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, data);
  return f;
}

describe('checkpoint attacks, each in a child process', () => {
  it('a valid file loads in a child (the harness works)', async () => {
    const o = await run('load', write('good.bin', good));
    expect(o.signal).toBeNull();
    expect(o.result).toMatchObject({ ok: true, names: ['w', 'sub.b'], values: { w: [1, 2, 3, 4], 'sub.b': [6, 7, 8] } });
  });

  it('the official AlignNet .bin truncated at 24 cut points: 0 signals, 0 hangs, clear errors', async () => {
    const bin = fs.readFileSync(goldenBin);
    const cuts = [...Array.from({ length: 20 }, (_, i) => Math.floor((i * bin.length) / 20)),
      bin.length - 1, bin.length - 21, bin.length - 23, bin.length - 100];
    const files = cuts.map((c) => write(`cut-${c}.bin`, bin.subarray(0, c)));
    const outs = await runAll(files.map((file) => ({ file })));
    outs.forEach((o, i) => expectRejected(o, files[i], /^ERR_CHECKPOINT_/));
  }, 180_000);

  it('the LightControl .bin (module.<i>.<param>, as the official training saves it) truncated: clear errors', async () => {
    const bin = fs.readFileSync(path.join(golden, 'lightcontrol', 'lightcontrol.bin'));
    const cuts = [100, Math.floor(bin.length / 3), Math.floor(bin.length / 2), bin.length - 100, bin.length - 22, bin.length - 1];
    const files = cuts.map((c) => write(`lc-cut-${c}.bin`, bin.subarray(0, c)));
    const outs = await runAll(files.map((file) => ({ file })));
    outs.forEach((o, i) => expectRejected(o, files[i], /^ERR_CHECKPOINT_/));
  }, 120_000);

  it('hostile LoRA files onto the transformer: clear errors naming the file or key, no crash', async () => {
    const x2i = await import('../../lib/index.js');
    const src = await x2i.loadSafetensors(path.join(golden, 'flux-lora', 'lora_diffusers.safetensors'));
    const A = src['transformer.transformer_blocks.0.attn.to_q.lora_A.weight'], B = src['transformer.transformer_blocks.0.attn.to_q.lora_B.weight'];
    const q = 'transformer.transformer_blocks.0.attn.to_q';
    const nan = x2i.Tensor.fromArray(new Float32Array([NaN]), []), big = x2i.Tensor.fromArray(new Float32Array(4), [2, 2]);
    const save = async (name: string, t: Record<string, InstanceType<typeof x2i.Tensor>>, meta?: Record<string, string>) => {
      const f = path.join(dir, name);
      await x2i.saveSafetensors(f, t, meta);
      return f;
    };
    const cases: [string, RegExp, RegExp][] = [
      [await save('meta-not-json.safetensors', { [`${q}.lora_A.weight`]: A, [`${q}.lora_B.weight`]: B }, { lora_adapter_metadata: '{not json' }),
        /ERR_BAD_CHECKPOINT/, /lora_adapter_metadata/],
      [await save('meta-r-string.safetensors', { [`${q}.lora_A.weight`]: A, [`${q}.lora_B.weight`]: B },
        { lora_adapter_metadata: JSON.stringify({ 'transformer.r': 'four', 'transformer.lora_alpha': 8 }) }), /ERR_BAD_CHECKPOINT/, /'r'/],
      [await save('swapped.safetensors', { [`${q}.lora_A.weight`]: B, [`${q}.lora_B.weight`]: A }), /ERR_CHECKPOINT_SHAPE/, /low-rank pair|shape/],
      [await save('alpha-nan.safetensors', { [`${q}.lora_A.weight`]: A, [`${q}.lora_B.weight`]: B, [`${q}.alpha`]: nan }), /ERR_BAD_CHECKPOINT/, /alpha/],
      [await save('alpha-2x2.safetensors', { [`${q}.lora_A.weight`]: A, [`${q}.lora_B.weight`]: B, [`${q}.alpha`]: big }), /ERR_CHECKPOINT_SHAPE/, /alpha/],
      [await save('proto.safetensors', { 'transformer.__proto__.lora_A.weight': A, 'transformer.__proto__.lora_B.weight': B }),
        /ERR_CHECKPOINT_KEY/, /__proto__/],
      [await save('overlap.safetensors', { [`${q}.lora_A.weight`]: A, [`${q}.lora_B.weight`]: B,
        'double_blocks.0.img_attn.qkv.lora_A.weight': A, 'double_blocks.0.img_attn.qkv.lora_B.weight': x2i.Tensor.fromArray(new Float32Array(96 * 4), [96, 4]) }),
        /ERR_INVALID_ARG/, /cover the same rows/],
      [await save('empty.safetensors', {}), /ERR_CHECKPOINT_KEY/, /no LoRA tensors/],
    ];
    const outs = await Promise.all(cases.map(([file]) => run('lora', file, 'st')));
    outs.forEach((o, i) => {
      const [file, code, message] = cases[i];
      const what = `${path.basename(file)}: ${JSON.stringify(o.result)} ${o.stderr}`;
      expect(o.signal, what).toBeNull();
      expect(o.timedOut, what).toBe(false);
      expect(o.result?.ok, what).toBe(false);
      expect(o.result?.name, what).toBe('X2IError');
      expect(String(o.result?.code), what).toMatch(code);
      expect(String(o.result?.message), what).toMatch(message);
      expect(String(o.result?.message), what).toContain(path.basename(file).replace(/\.safetensors$/, ''));
    });
    for (const t of [...Object.values(src), nan, big]) t.dispose();
  }, 120_000);

  it('our own file truncated at every 1/8 and cut into its records, and with its tail cut off', async () => {
    const cuts = [1, 4, 30, ...Array.from({ length: 7 }, (_, i) => Math.floor(((i + 1) * good.length) / 8))];
    const files = cuts.map((c) => write(`own-cut-${c}.bin`, good.subarray(0, c)));
    const outs = await runAll(files.map((file) => ({ file })));
    outs.forEach((o, i) => expectRejected(o, files[i], /^ERR_CHECKPOINT_/));
  }, 120_000);

  it('lying storages and views: no heap bytes handed back', async () => {
    const cases: [string, Buffer, RegExp][] = [
      // 4,096 floats declared over a 4-byte record (the heap-leak case of the issue)
      ['storage-larger.bin', torchSave({ w: { storage: '0', numel: 4096, size: [4096] } }, { 0: f32([1]) }),
        /declares 4096 elements of float32 \(16384 bytes\) but its record holds 4 bytes/],
      ['storage-huge.bin', torchSave({ w: { storage: '0', numel: 2 ** 50, size: [2 ** 20] } }, { 0: f32([1]) }),
        /declares/],
      ['view-offset.bin', torchSave({ w: { storage: '0', size: [2], offset: 3 } }, { 0: f32([1, 2, 3, 4]) }),
        /runs past its storage '0' of 4 elements/],
      ['view-stride.bin', torchSave({ w: { storage: '0', size: [3], stride: [2] } }, { 0: f32([1, 2, 3, 4]) }),
        /runs past its storage/],
      ['view-huge.bin', torchSave({ w: { storage: '0', size: [2 ** 31, 2 ** 31], stride: [2 ** 31, 1] } },
        { 0: f32([1, 2, 3, 4]) }), /runs past its storage/],
      ['view-negative-stride.bin', torchSave({ w: { storage: '0', size: [2], stride: [-1] } }, { 0: f32([1, 2]) }),
        /stride is a tuple|expected a tuple of non-negative integers/],
      ['view-negative-size.bin', torchSave({ w: { storage: '0', size: [-2] } }, { 0: f32([1, 2]) }),
        /non-negative integers/],
      ['storage-missing.bin', torchSave({ w: { storage: '7', numel: 1, size: [1] } }, { 0: f32([1]) }),
        /storage '7' has no record/],
    ];
    const files = cases.map(([n, b]) => write(n, b));
    const outs = await runAll(files.map((file) => ({ file })));
    outs.forEach((o, i) => expectRejected(o, files[i], /^ERR_CHECKPOINT_(RANGE|PICKLE|FORMAT)$/, cases[i][2]));
  }, 120_000);

  it('zip entries that lie about their sizes and offsets', async () => {
    const findCentral = (b: Buffer, name: string) => {
      for (let i = b.length - 22; i >= 0; --i)
        if (b.readUInt32LE(i) === 0x02014b50 && b.toString('utf8', i + 46, i + 46 + name.length) === name) return i;
      throw new Error(name);
    };
    const findLocal = (b: Buffer, name: string) => {
      for (let i = 0; i < b.length; ++i)
        if (b.readUInt32LE(i) === 0x04034b50 && b.toString('utf8', i + 30, i + 30 + name.length) === name) return i;
      throw new Error(name);
    };
    const mutate = (fn: (b: Buffer) => void) => { const b = Buffer.from(good); fn(b); return b; };
    const cases: [string, Buffer, RegExp][] = [
      ['size-past-eof.bin', mutate((b) => { const c = findCentral(b, 'archive/data/0');
        b.writeUInt32LE(1 << 30, c + 20); b.writeUInt32LE(1 << 30, c + 24); }), /larger than the archive|run past/],
      ['central-vs-local.bin', mutate((b) => { const c = findCentral(b, 'archive/data/0');
        b.writeUInt32LE(20, c + 20); b.writeUInt32LE(20, c + 24); }), /differs from the directory's|record holds/],
      ['size-into-directory.bin', mutate((b) => { const c = findCentral(b, 'archive/version');
        b.writeUInt32LE(400, c + 20); b.writeUInt32LE(400, c + 24);
        const l = findLocal(b, 'archive/version'); b.writeUInt32LE(400, l + 18); b.writeUInt32LE(400, l + 22); }),
      /run past the archive's data/],
      ['offset-past-eof.bin', mutate((b) => { b.writeUInt32LE(0x7fffffff, findCentral(b, 'archive/data.pkl') + 42); }),
        /local header offset/],
      ['offset-wrong.bin', mutate((b) => { b.writeUInt32LE(5, findCentral(b, 'archive/data/1') + 42); }),
        /no local header/],
      ['local-name.bin', mutate((b) => { b.write('X', findLocal(b, 'archive/data/1') + 30 + 13); }), /local header names/],
      ['directory-past-eof.bin', mutate((b) => { b.writeUInt32LE(b.length * 2, b.length - 22 + 16); }),
        /central directory/],
      ['entry-count.bin', mutate((b) => { b.writeUInt16LE(60000, b.length - 22 + 10); }), /entries cannot fit/],
      ['compressed.bin', torchSave({ w: { storage: '0', size: [1] } }, { 0: f32([1]) },
        { methodOf: { 'archive/data/0': 8 } }), /is compressed \(method 8\)/],
      ['no-pickle.bin', zipStored([['archive/data/0', f32([1])]]), /no <name>\/data.pkl record/],
      ['not-zip.bin', Buffer.from('hello, not a zip at all'), /not a torch.save zip archive/],
    ];
    const files = cases.map(([n, b]) => write(n, b));
    const outs = await runAll(files.map((file) => ({ file })));
    outs.forEach((o, i) => expectRejected(o, files[i], /^ERR_CHECKPOINT_(ZIP|FORMAT|RANGE)$/, cases[i][2]));
  }, 120_000);

  it('pickles nested 10^6 deep, cyclic, or running off their end', async () => {
    const marks = new Pickler().op(0x80, 2).raw(Buffer.alloc(1_000_000, 0x28)).op(0x2e).bytes();
    const lists = new Pickler().op(0x80, 2).raw(Buffer.alloc(1_000_000, 0x5d)).op(0x2e).bytes();
    // dicts nested 10^6 deep through the memo, without growing the stack: d0 = {}; repeat: d = {}; prev['k'] = d
    const deep = new Pickler().op(0x80, 2, 0x7d, 0x71, 0);
    const step = new Pickler().op(0x68, 0).str('k').op(0x7d, 0x71, 0, 0x73, 0x30).bytes();
    deep.raw(Buffer.concat(Array(1_000_000).fill(step))).op(0x2e);
    const cyclic = new Pickler().op(0x80, 2, 0x7d, 0x71, 0).str('me').op(0x68, 0, 0x73, 0x2e).bytes();
    const runOff = picklePayload({ w: { storage: '0', size: [1] } }, { 0: 4 }).subarray(0, 40);
    const bigString = new Pickler().op(0x80, 2).raw('X').raw(Buffer.from([0xff, 0xff, 0xff, 0x7f])).op(0x2e).bytes();
    const cases: [string, Buffer, RegExp][] = [
      ['marks.bin', marks, /more than 1000 MARKs/],
      ['lists.bin', lists, /malformed stack|expected a dict/],
      ['deep.bin', deep.bytes(), /nest deeper than 64/],
      ['cyclic.bin', cyclic, /nest deeper than 64/],
      ['run-off.bin', runOff, /ends inside an opcode|unterminated GLOBAL/],
      ['big-string.bin', bigString, /ends inside an opcode/],
      ['bad-opcode.bin', new Pickler().op(0x80, 2, 0x69).raw('os\nsystem\n').op(0x2e).bytes(), /opcode 0x69/],
    ];
    const files = cases.map(([n, pk]) => write(n, torchSave({}, { 0: f32([1]) }, { pickle: pk })));
    const outs = await runAll(files.map((file) => ({ file })));
    outs.forEach((o, i) => expectRejected(o, files[i], /^ERR_CHECKPOINT_(PICKLE|FORMAT)$/, cases[i][2]));
  }, 120_000);

  it('malicious globals are refused by name and never run', async () => {
    const marker = path.join(dir, 'pwned');
    const viaGlobal = (m: string, n: string) => new Pickler().op(0x80, 2).global(m, n)
      .op(0x28).str(`touch ${marker}`).op(0x74, 0x52, 0x2e).bytes();
    const viaStack = (m: string, n: string) => new Pickler().op(0x80, 4).str(m).str(n).op(0x93)
      .op(0x28).str(`touch ${marker}`).op(0x74, 0x52, 0x2e).bytes();
    const cases: [string, Buffer, string][] = [
      ['os-system.bin', viaGlobal('os', 'system'), 'os.system'],
      ['posix-system.bin', viaGlobal('posix', 'system'), 'posix.system'],
      ['eval.bin', viaGlobal('builtins', 'eval'), 'builtins.eval'],
      ['exec-stack.bin', viaStack('builtins', 'exec'), 'builtins.exec'],
      ['subprocess.bin', viaStack('subprocess', 'Popen'), 'subprocess.Popen'],
      ['torch-load.bin', viaGlobal('torch', 'load'), 'torch.load'],
      ['getattr.bin', viaGlobal('builtins', 'getattr'), 'builtins.getattr'],
    ];
    const files = cases.map(([n, pk]) => write(n, torchSave({}, { 0: f32([1]) }, { pickle: pk })));
    const outs = await runAll(files.map((file) => ({ file })));
    outs.forEach((o, i) => expectRejected(o, files[i], /^ERR_CHECKPOINT_GLOBAL$/,
      new RegExp(`global '${cases[i][2].replace('.', '\\.')}'`)));
    expect(fs.existsSync(marker)).toBe(false);
  }, 120_000);

  it('a file truncated and overwritten under loaded tensors (CPU, default options): the tensors keep their values', async () => {
    const st = write('under.safetensors', fs.readFileSync(path.join(golden, 'alignnet', 'alignnet.safetensors')));
    const bin = write('under.bin', fs.readFileSync(goldenBin));
    for (const [file, kind] of [[st, 'st'], [bin, 'torch']]) {
      const o = await run('truncate-under', file, kind);
      expect(o.signal, `${file} ${o.stderr}`).toBeNull();
      expect(o.result, `${file} ${o.stderr}`).toMatchObject({ ok: true, same: true });
    }
  }, 60_000);
  it('audio files: garbage, truncated and lying headers are named errors, never a crash', async () => {
    const wav = fs.readFileSync(path.join(golden, 'minicpm_o', 'audio.wav'));
    const fixtures = path.join(root, 'test', 'fixtures', 'audio');
    const liar = Buffer.from(wav); liar.writeUInt32LE(0x7fffffff, 40);           // data chunk size far past the end
    const noChannels = Buffer.from(wav); noChannels.writeUInt16LE(0, 22);         // 0 channels
    const noRate = Buffer.from(wav); noRate.writeUInt32LE(0, 24);                 // 0 Hz
    const bits = Buffer.from(wav); bits.writeUInt16LE(7, 34);                     // 7-bit samples
    const cases = [
      write('garbage.wav', Buffer.from('this is not audio at all, only text'.repeat(20))),
      write('empty.wav', Buffer.alloc(0)),
      write('header-only.wav', wav.subarray(0, 44)),
      write('half.wav', wav.subarray(0, 23)),
      write('liar.wav', liar), write('no-channels.wav', noChannels), write('no-rate.wav', noRate), write('bits.wav', bits),
      write('cut.mp3', fs.readFileSync(path.join(fixtures, 'fox.mp3')).subarray(0, 700)),
      write('cut.flac', fs.readFileSync(path.join(fixtures, 'fox.flac')).subarray(0, 300)),
      write('cut.ogg', fs.readFileSync(path.join(fixtures, 'fox.ogg')).subarray(0, 200)),
      write('noise.ogg', Buffer.concat([Buffer.from('OggS'), Buffer.alloc(4000, 0xab)])),
    ];
    const outs: Outcome[] = [];
    for (let i = 0; i < cases.length; i += 3)
      outs.push(...await Promise.all(cases.slice(i, i + 3).map((file) => run('audio', file, 'audio', 60_000))));
    outs.forEach((o, i) => {
      const what = `${path.basename(cases[i])}: ${JSON.stringify(o.result)} ${o.stderr}`;
      expect(o.signal, what).toBeNull();
      expect(o.timedOut, what).toBe(false);
      expect(o.code, what).toBe(0);
      // a file that still decodes to samples gives features; anything else is an X2IError naming the file
      if (o.result?.ok) expect(o.result.shape?.[0], what).toBe(80);
      else {
        expect(o.result?.name, what).toBe('X2IError');
        expect(String(o.result?.message), what).toContain(path.basename(cases[i]));
      }
    });
    for (const n of ['garbage.wav', 'empty.wav', 'half.wav', 'no-rate.wav', 'noise.ogg'])
      expect(outs[cases.findIndex((c) => c.endsWith(n))].result?.ok, n).toBe(false);
  }, 180_000);
});
