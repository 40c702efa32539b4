import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { Tensor } from '../../lib/index.js';
import { golden, goldenIoFiles, parseSafetensorsBytes, rawSafetensors, tmpDir } from '../helpers.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const ST_BYTES: Record<string, number> = { F32: 4, F64: 8, I64: 8, I32: 4, BF16: 2, F16: 2, U8: 1, BOOL: 1 };

function disposeAll(ts: Record<string, Tensor>) {
  for (const t of Object.values(ts)) t.dispose();
}

describe('golden io.safetensors files', () => {
  const files = goldenIoFiles();
  it('finds every golden folder', () => {
    expect(files.length).toBeGreaterThanOrEqual(8);
  });
  for (const file of files) {
    it(`loads ${path.basename(path.dirname(file))} with the right keys, shapes and values`, async () => {
      const buf = fs.readFileSync(file);
      const ref = parseSafetensorsBytes(buf);
      const ts = await x2i.loadSafetensors(file);
      try {
        expect(Object.keys(ts).sort()).toEqual(Object.keys(ref.header).sort());
        for (const [name, e] of Object.entries(ref.header)) {
          const t = ts[name];
          expect(t.shape, name).toEqual(e.shape);
          expect(t.nbytes, name).toBe(e.data_offsets[1] - e.data_offsets[0]);
          expect(ST_BYTES[e.dtype], `${name} dtype ${e.dtype}`).toBeDefined();
          const bytes = ref.data.subarray(e.data_offsets[0], e.data_offsets[1]);
          const arr = await t.toArray();
          expect(Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).equals(bytes), name).toBe(true);
        }
      } finally {
        disposeAll(ts);
      }
    });
  }
});

describe('saveSafetensors', () => {
  it('writes files byte-identical to the reference writer', async () => {
    for (const rel of ['flux-transformer/diffusion_pytorch_model.safetensors', 'qwen2_5_vl/model.safetensors',
      'x2i-distill-loss/io.safetensors', 'alignnet/alignnet.safetensors']) {
      const src = path.join(golden, rel);
      const ts = await x2i.loadSafetensors(src);
      const out = path.join(dir, 'copy.safetensors');
      await x2i.saveSafetensors(out, ts);
      disposeAll(ts);
      expect(fs.readFileSync(out).equals(fs.readFileSync(src)), rel).toBe(true);
    }
  });

  it('round-trips every dtype and metadata, and the file is valid safetensors byte for byte', async () => {
    const src: Record<string, Tensor> = {
      f32: Tensor.fromArray(new Float32Array([1.5, -2, 3e-38, 7]), [2, 2]),
      f64: Tensor.fromArray(new Float64Array([Math.PI]), [1]),
      bf16: Tensor.fromArray(new Uint16Array([0x3f80, 0x7f80, 0x0001]), [3], { dtype: 'bfloat16' }),
      f16: Tensor.fromArray(new Uint16Array([0x3c00, 0xfc00]), [2, 1], { dtype: 'float16' }),
      i64: Tensor.fromArray(new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n]), [2]),
      i32: Tensor.fromArray(new Int32Array([-7, 7, 0]), [3]),
      u8: Tensor.fromArray(new Uint8Array([0, 255]), [2]),
      b: Tensor.fromArray(new Uint8Array([1, 0, 1]), [3], { dtype: 'bool' }),
      i8: Tensor.fromArray(new Int8Array([-128, 127]), [2]),
      i16: Tensor.fromArray(new Int16Array([-3]), [1]),
      u16: Tensor.fromArray(new Uint16Array([65535]), [1], { dtype: 'uint16' }),
      u32: Tensor.fromArray(new Uint32Array([4e9]), [1]),
      u64: Tensor.fromArray(new BigUint64Array([2n ** 64n - 1n]), [1]),
      f8: Tensor.fromArray(new Uint8Array([0x38, 0xb8]), [2], { dtype: 'float8_e4m3fn' }),
      f8b: Tensor.fromArray(new Uint8Array([0x3c]), [1], { dtype: 'float8_e5m2' }),
      c64: Tensor.fromArray(new Float32Array([1, 2, 3, 4]), [2], { dtype: 'complex64' }),
      empty: Tensor.fromArray(new Float32Array(0), [0, 3]),
      scalar: Tensor.fromArray(new Float32Array([5]), []),
    };
    const file = path.join(dir, 'all.safetensors');
    await x2i.saveSafetensors(file, src, { format: 'pt', note: 'ünïcode ✓' });
    // the format, checked independently of the library
    const buf = fs.readFileSync(file);
    const p = parseSafetensorsBytes(buf);
    expect((8 + p.headerLength) % 8).toBe(0);
    expect(p.metadata).toEqual({ format: 'pt', note: 'ünïcode ✓' });
    const ranges = Object.values(p.header).map((e) => e.data_offsets).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let end = 0;
    for (const [b0, b1] of ranges) {
      expect(b0).toBe(end); // contiguous, no holes, no overlaps
      end = b1;
    }
    expect(end).toBe(p.data.length);
    expect(p.header.bf16).toEqual({ dtype: 'BF16', shape: [3], data_offsets: expect.any(Array) });
    expect(p.header.c64.dtype).toBe('C64');
    expect(p.header.f8.dtype).toBe('F8_E4M3');
    // reads back identically
    const back = await x2i.loadSafetensors(file);
    const header = await x2i.readSafetensorsHeader(file);
    expect(header.metadata).toEqual({ format: 'pt', note: 'ünïcode ✓' });
    expect(Object.keys(back).sort()).toEqual(Object.keys(src).sort());
    for (const [k, t] of Object.entries(src)) {
      expect(back[k].dtype, k).toBe(t.dtype);
      expect(back[k].shape, k).toEqual(t.shape);
      expect(await back[k].toArray(), k).toEqual(await t.toArray());
      const e = p.header[k];
      const arr = await t.toArray();
      expect(Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength)
        .equals(p.data.subarray(e.data_offsets[0], e.data_offsets[1])), k).toBe(true);
    }
    disposeAll(src);
    disposeAll(back);
  });

  it('replaces an existing file atomically and leaves no temporary file', async () => {
    const file = path.join(dir, 'atomic.safetensors');
    using a = Tensor.fromArray(new Float32Array([1]), [1]);
    using b = Tensor.fromArray(new Float32Array([2, 3]), [2]);
    await x2i.saveSafetensors(file, { w: a });
    await x2i.saveSafetensors(file, { w: b });
    const back = await x2i.loadSafetensors(file);
    expect(Array.from(await back.w.toArray() as Float32Array)).toEqual([2, 3]);
    disposeAll(back);
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('keeps the previous file when a save fails', async () => {
    const file = path.join(dir, 'keep.safetensors');
    using a = Tensor.fromArray(new Float32Array([1]), [1]);
    await x2i.saveSafetensors(file, { w: a });
    const before = fs.readFileSync(file);
    const gone = Tensor.fromArray(new Float32Array([2]), [1]);
    gone.dispose();
    await expect(x2i.saveSafetensors(file, { w: gone })).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    await expect(x2i.saveSafetensors(path.join(dir, 'no/such/dir/x.safetensors'), { w: a }))
      .rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    await expect(x2i.saveSafetensors(file, { w: a }, { n: 3 as unknown as string })).rejects.toThrow(/metadata\['n'\]/);
  });
});

describe('sharded checkpoints', () => {
  it('loads through *.safetensors.index.json and through the folder', async () => {
    const d = path.join(dir, 'sharded');
    fs.mkdirSync(d);
    using a = Tensor.fromArray(new Float32Array([1, 2]), [2]);
    using b = Tensor.fromArray(new Float32Array([3]), [1]);
    using c = Tensor.fromArray(new Int32Array([4]), [1]);
    await x2i.saveSafetensors(path.join(d, 'model-00001-of-00002.safetensors'), { a, b });
    await x2i.saveSafetensors(path.join(d, 'model-00002-of-00002.safetensors'), { c });
    const index = { metadata: { total_size: 16 }, weight_map: {
      a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' } };
    fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify(index));
    for (const p of [path.join(d, 'model.safetensors.index.json'), d]) {
      const ts = await x2i.loadSafetensors(p);
      expect(Object.keys(ts).sort()).toEqual(['a', 'b', 'c']);
      expect(Array.from(await ts.c.toArray() as Int32Array)).toEqual([4]);
      disposeAll(ts);
    }
    const bad = { weight_map: { ...index.weight_map, d: 'model-00002-of-00002.safetensors' } };
    fs.writeFileSync(path.join(d, 'bad.safetensors.index.json'), JSON.stringify(bad));
    const base = x2i.memory().tensors;
    await expect(x2i.loadSafetensors(path.join(d, 'bad.safetensors.index.json')))
      .rejects.toThrow(/model-00002-of-00002.safetensors lacks 1 tensor\(s\) the index lists: d/);
    expect(x2i.memory().tensors).toBe(base);
  });

  it('loads straight into another dtype', async () => {
    const ts = await x2i.loadSafetensors(path.join(golden, 'qwen2_5_vl', 'io.safetensors'), { dtype: 'bfloat16' });
    expect(ts['text.hidden_states_x2i'].dtype).toBe('bfloat16');
    expect(ts['text.input_ids'].dtype).toBe('int64'); // integer tensors keep their dtype
    disposeAll(ts);
  });
});

describe('malformed safetensors are rejected with clear errors and the process survives', () => {
  const data = Buffer.alloc(16, 1);
  const good = { w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } };
  const cases: [string, Buffer, string, RegExp][] = [
    ['truncated below 8 bytes', Buffer.from([1, 2, 3]), 'ERR_SAFETENSORS_TRUNCATED', /shorter than the 8-byte header length/],
    ['truncated data', rawSafetensors(good, data.subarray(0, 10)), 'ERR_SAFETENSORS_RANGE', /run past the end of the data section/],
    ['header length past the end', rawSafetensors(good, data, 4096), 'ERR_SAFETENSORS_TRUNCATED', /runs past the end of the file/],
    ['absurd header length', rawSafetensors(good, data, 2 ** 52), 'ERR_SAFETENSORS_HEADER', /exceeds the 100000000-byte limit/],
    ['non-JSON header', rawSafetensors('{"w": {dtype', data), 'ERR_SAFETENSORS_HEADER', /not valid UTF-8 JSON/],
    ['JSON array header', rawSafetensors('[1,2,3]', data), 'ERR_SAFETENSORS_HEADER', /not a JSON object/],
    ['unknown dtype', rawSafetensors({ w: { ...good.w, dtype: 'F7' } }, data), 'ERR_SAFETENSORS_DTYPE', /tensor 'w' has unknown dtype "F7"/],
    ['6-bit floats', rawSafetensors({ w: { ...good.w, dtype: 'F6_E2M3' } }, data), 'ERR_SAFETENSORS_DTYPE', /no 6-bit float/],
    ['shape/size mismatch', rawSafetensors({ w: { ...good.w, shape: [3, 2] } }, data), 'ERR_SAFETENSORS_RANGE', /shape \[3, 2\] × F32 is 24 bytes but data_offsets \[0, 16\] span 16/],
    ['out-of-range offsets', rawSafetensors({ w: { ...good.w, shape: [2, 4], data_offsets: [0, 32] } }, data), 'ERR_SAFETENSORS_RANGE', /run past the end/],
    ['reversed offsets', rawSafetensors({ w: { ...good.w, data_offsets: [16, 0] } }, data), 'ERR_SAFETENSORS_HEADER', /0 <= begin <= end/],
    ['negative shape', rawSafetensors({ w: { ...good.w, shape: [-4, -1] } }, data), 'ERR_SAFETENSORS_HEADER', /non-negative integers/],
    ['overlapping offsets', rawSafetensors({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
      b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, data), 'ERR_SAFETENSORS_RANGE', /tensors 'a' \[0, 12\) and 'b' \[8, 16\) overlap/],
    ['bad metadata', rawSafetensors({ __metadata__: { a: 1 }, ...good }, data), 'ERR_SAFETENSORS_HEADER', /__metadata__\['a'\] is number/],
  ];
  for (const [name, bytes, code, msg] of cases) {
    it(name, async () => {
      const file = path.join(dir, `bad-${name.replace(/\W+/g, '-')}.safetensors`);
      fs.writeFileSync(file, bytes);
      const base = x2i.memory().tensors;
      const err = await x2i.loadSafetensors(file).then(() => null, (e) => e);
      expect(err).toBeInstanceOf(x2i.X2IError);
      expect(err.code).toBe(code);
      expect(err.message).toMatch(msg);
      expect(err.message).toContain(file); // names the file
      expect(x2i.memory().tensors).toBe(base);
    });
  }

  it('missing files', async () => {
    await expect(x2i.loadSafetensors(path.join(dir, 'nope.safetensors')))
      .rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND', message: expect.stringContaining('nope.safetensors') });
    await expect(x2i.loadSafetensors(path.join(dir, 'nope.safetensors.index.json')))
      .rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
    await expect(x2i.loadTorchCheckpoint(path.join(dir, 'nope.bin'))).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
  });

  it('the native reader re-checks ranges it is handed (a file changed after its header was read)', async () => {
    const { addon } = await import('../../lib/core/native.js');
    const file = path.join(dir, 'small.safetensors');
    fs.writeFileSync(file, rawSafetensors(good, data));
    await expect(addon().readSafetensors(file, 8, [['w', 'float32', [1000], 0, 4000]]))
      .rejects.toMatchObject({ code: 'ERR_SAFETENSORS_RANGE' });
    await expect(addon().readSafetensors(file, 8, [['w', 'float32', [4], 0, 8]]))
      .rejects.toMatchObject({ code: 'ERR_SAFETENSORS_RANGE' });
    await expect(addon().readSafetensors(file, 8, [['w', 'nope', [4], 0, 16]]))
      .rejects.toMatchObject({ code: 'ERR_INVALID_DTYPE' });
  });
});

describe('loadTorchCheckpoint', () => {
  it('reads the official X2I AlignNet .bin (torch.save zip, module. prefixes) = the safetensors copy', async () => {
    const bin = await x2i.loadTorchCheckpoint(path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin'));
    const st = await x2i.loadSafetensors(path.join(golden, 'alignnet', 'alignnet.safetensors'));
    const stripped = Object.keys(bin).map((k) => k.replace(/^module\./, '')).sort();
    expect(stripped).toEqual(Object.keys(st).sort());
    for (const [k, t] of Object.entries(bin)) {
      const s = st[k.replace(/^module\./, '')];
      expect(t.shape, k).toEqual(s.shape);
      expect(await t.toArray(), k).toEqual(await s.toArray());
    }
    disposeAll(bin);
    disposeAll(st);
  });

  it('moves and casts on request', async () => {
    const bin = await x2i.loadTorchCheckpoint(path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin'),
      { dtype: 'bfloat16' });
    expect(Object.values(bin).every((t) => t.dtype === 'bfloat16')).toBe(true);
    disposeAll(bin);
  });

  it('rejects files that are not torch.save archives', async () => {
    const f = path.join(dir, 'not-a-zip.bin');
    fs.writeFileSync(f, 'hello world, not a pickle');
    await expect(x2i.loadTorchCheckpoint(f)).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_FORMAT' });
    const z = path.join(dir, 'broken-zip.bin');
    fs.writeFileSync(z, Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(100, 7)]));
    await expect(x2i.loadTorchCheckpoint(z)).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_ZIP',
      message: expect.stringMatching(/broken-zip\.bin: no end-of-central-directory record/) });
    const st = path.join(golden, 'alignnet', 'alignnet.safetensors');
    await expect(x2i.loadTorchCheckpoint(st)).rejects.toThrow(/not a torch.save zip archive/);
  });
});
