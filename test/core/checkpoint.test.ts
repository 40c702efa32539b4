// Tensor records any key can live in, and the torch.save reader (lib/core/torch_checkpoint.ts) on well-formed files:
// views, shared storages, nested dicts, zip64, dtypes, mmap. The hostile files: checkpoint_attacks.test.ts.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { Tensor } from '../../lib/index.js';
import { golden, tmpDir } from '../helpers.js';
import { f32, torchSave } from './checkpoint_writer.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const META: Record<string, string> = JSON.parse('{"__proto__": "meta", "constructor": "c"}');
const HOSTILE_NAMES = ['__proto__', 'constructor', 'toString', '', 'hasOwnProperty', '__metadata__x'];

function disposeAll(ts: Record<string, Tensor>) {
  for (const t of Object.values(ts)) t.dispose();
}

async function arr(t: Tensor): Promise<number[]> {
  return Array.from(await t.toArray() as Float32Array);
}

describe('tensor records any name can live in', () => {
  it('safetensors: __proto__, constructor, toString and the empty name are own properties and round-trip', async () => {
    const src: Record<string, Tensor> = {};
    HOSTILE_NAMES.forEach((n, i) => Object.defineProperty(src, n, {
      value: Tensor.fromArray(new Float32Array([i, i + 0.5]), [2]), enumerable: true, writable: true, configurable: true,
    }));
    const file = path.join(dir, 'names.safetensors');
    await x2i.saveSafetensors(file, src, META);
    const header = JSON.parse(fs.readFileSync(file).subarray(8, 8 + Number(fs.readFileSync(file).readBigUInt64LE(0))).toString());
    expect(Object.keys(header).sort()).toEqual([...HOSTILE_NAMES, '__metadata__'].sort());
    const h = await x2i.readSafetensorsHeader(file);
    expect(Object.keys(h.metadata).sort()).toEqual(['__proto__', 'constructor']);
    const ts = await x2i.loadSafetensors(file);
    expect(Object.getPrototypeOf(ts)).toBe(Object.prototype);
    expect(Object.keys(ts).sort()).toEqual([...HOSTILE_NAMES].sort());
    for (const [i, n] of HOSTILE_NAMES.entries()) {
      expect(Object.hasOwn(ts, n), n).toBe(true);
      expect(ts[n]).toBeInstanceOf(Tensor);
      expect(await arr(ts[n]), n).toEqual([i, i + 0.5]);
    }
    const again = path.join(dir, 'names2.safetensors');
    await x2i.saveSafetensors(again, ts, META);
    expect(fs.readFileSync(again).equals(fs.readFileSync(file))).toBe(true);
    disposeAll(ts);
    disposeAll(src);
  });

  it('through a sharded index too', async () => {
    const a: Record<string, Tensor> = {};
    Object.defineProperty(a, '__proto__', { value: Tensor.fromArray(new Float32Array([7]), [1]), enumerable: true });
    await x2i.saveSafetensors(path.join(dir, 's1.safetensors'), a);
    await x2i.saveSafetensors(path.join(dir, 's2.safetensors'), { toString: Tensor.fromArray(new Float32Array([8]), [1]) });
    const index = path.join(dir, 'm.safetensors.index.json');
    fs.writeFileSync(index, '{"weight_map": {"__proto__": "s1.safetensors", "toString": "s2.safetensors"}}');
    const ts = await x2i.loadSafetensors(index);
    expect(Object.keys(ts).sort()).toEqual(['__proto__', 'toString']);
    expect(await arr(ts['__proto__'])).toEqual([7]);
    disposeAll(ts);
  });

  it('torch.save: the same names are own properties', async () => {
    const dict: Parameters<typeof torchSave>[0] = {};
    const storages: Record<string, Buffer> = {};
    HOSTILE_NAMES.forEach((n, i) => {
      Object.defineProperty(dict, n, { value: { storage: String(i), size: [1] }, enumerable: true });
      storages[String(i)] = f32([i]);
    });
    const file = path.join(dir, 'names.bin');
    fs.writeFileSync(file, torchSave(dict, storages));
    const ts = await x2i.loadTorchCheckpoint(file);
    expect(Object.keys(ts)).toEqual(HOSTILE_NAMES);
    for (const [i, n] of HOSTILE_NAMES.entries()) expect(await arr(ts[n])).toEqual([i]);
    disposeAll(ts);
  });
});

describe('the torch.save reader', () => {
  it('reads views: offsets, strides, storages shared between tensors', async () => {
    const file = path.join(dir, 'views.bin');
    fs.writeFileSync(file, torchSave({
      whole: { storage: 's', size: [2, 3] },
      t: { storage: 's', size: [3, 2], stride: [1, 3] },  // the transpose
      tail: { storage: 's', size: [2], offset: 4 },
      every2: { storage: 's', size: [3], stride: [2] },
      scalar: { storage: 's', size: [], offset: 5 },
      empty: { storage: 'e', size: [0, 4] },
      bcast: { storage: 'one', size: [2, 2], stride: [0, 0] },
    }, { s: f32([0, 1, 2, 3, 4, 5]), e: Buffer.alloc(0), one: f32([9]) }));
    const ts = await x2i.loadTorchCheckpoint(file);
    expect(Object.keys(ts)).toEqual(['whole', 't', 'tail', 'every2', 'scalar', 'empty', 'bcast']);
    expect(ts.whole.shape).toEqual([2, 3]);
    expect(await arr(ts.whole)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(ts.t.shape).toEqual([3, 2]);
    expect(await arr(ts.t)).toEqual([0, 3, 1, 4, 2, 5]);
    expect(await arr(ts.tail)).toEqual([4, 5]);
    expect(await arr(ts.every2)).toEqual([0, 2, 4]);
    expect(ts.scalar.shape).toEqual([]);
    expect(await arr(ts.scalar)).toEqual([5]);
    expect(ts.empty.shape).toEqual([0, 4]);
    expect(await arr(ts.bcast)).toEqual([9, 9, 9, 9]);
    disposeAll(ts);
  });

  it('flattens nested dicts (ComfyUI {config, state_dict}) and skips values that are not tensors', async () => {
    const file = path.join(dir, 'comfy.bin');
    fs.writeFileSync(file, torchSave({
      config: { name: 'x', scale: 0.5, layers: 3, big: 2 ** 40, flag: true, none: null },
      state_dict: { 'conv.weight': { storage: '0', size: [2] }, inner: { b: { storage: '1', size: [1] } } },
    }, { 0: f32([1, 2]), 1: f32([3]) }, { archive: 'my_model' }));
    const ts = await x2i.loadTorchCheckpoint(file);
    expect(Object.keys(ts)).toEqual(['state_dict.conv.weight', 'state_dict.inner.b']);
    expect(await arr(ts['state_dict.inner.b'])).toEqual([3]);
    disposeAll(ts);
  });

  it('reads zip64 archives and every storage type', async () => {
    const file = path.join(dir, 'z64.bin');
    const i64 = Buffer.alloc(16); i64.writeBigInt64LE(-5n, 0); i64.writeBigInt64LE(1n << 40n, 8);
    fs.writeFileSync(file, torchSave({
      f: { storage: 'f', size: [2] }, d: { storage: 'd', type: 'DoubleStorage', size: [1] },
      h: { storage: 'h', type: 'HalfStorage', size: [1] }, bf: { storage: 'bf', type: 'BFloat16Storage', size: [1] },
      l: { storage: 'l', type: 'LongStorage', size: [2] }, b: { storage: 'b', type: 'BoolStorage', size: [2] },
      u: { storage: 'u', type: 'ByteStorage', size: [1] }, i: { storage: 'i', type: 'IntStorage', size: [1] },
    }, {
      f: f32([1.5, -2]), d: Buffer.from(new Float64Array([0.25]).buffer), h: Buffer.from([0x00, 0x3c]),
      bf: Buffer.from([0x80, 0x3f]), l: i64, b: Buffer.from([1, 0]), u: Buffer.from([200]),
      i: Buffer.from(new Int32Array([-7]).buffer),
    }, { zip64: true }));
    const ts = await x2i.loadTorchCheckpoint(file);
    expect(Object.fromEntries(Object.entries(ts).map(([k, t]) => [k, t.dtype]))).toEqual({
      f: 'float32', d: 'float64', h: 'float16', bf: 'bfloat16', l: 'int64', b: 'bool', u: 'uint8', i: 'int32' });
    expect(await arr(ts.f)).toEqual([1.5, -2]);
    expect(Array.from(await (await ts.h.to({ dtype: 'float32' })).toArray() as Float32Array)).toEqual([1]);
    expect(Array.from(await (await ts.bf.to({ dtype: 'float32' })).toArray() as Float32Array)).toEqual([1]);
    expect(Array.from(await ts.l.toArray() as BigInt64Array)).toEqual([-5n, 1n << 40n]);
    expect(Array.from(await ts.i.toArray() as Int32Array)).toEqual([-7]);
    disposeAll(ts);
  });

  it('reads the official AlignNet .bin the same with and without mmap, and casts on request', async () => {
    const bin = path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin');
    const a = await x2i.loadTorchCheckpoint(bin);
    const b = await x2i.loadTorchCheckpoint(bin, { mmap: true });
    const c = await x2i.loadTorchCheckpoint(bin, { dtype: 'float64' });
    expect(Object.keys(a)).toEqual(Object.keys(b));
    for (const k of Object.keys(a)) {
      expect(await a[k].toArray(), k).toEqual(await b[k].toArray());
      expect(c[k].dtype).toBe('float64');
    }
    disposeAll(a); disposeAll(b); disposeAll(c);
  });

  it('safetensors loads the same with and without mmap; mmap must be a boolean', async () => {
    const file = path.join(golden, 'alignnet', 'alignnet.safetensors');
    const a = await x2i.loadSafetensors(file);
    const b = await x2i.loadSafetensors(file, { mmap: true });
    for (const k of Object.keys(a)) expect(await a[k].toArray(), k).toEqual(await b[k].toArray());
    disposeAll(a); disposeAll(b);
    await expect(x2i.loadSafetensors(file, { mmap: 'yes' as unknown as boolean }))
      .rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });

  it('the native reader re-checks views it is handed', async () => {
    const { addon } = await import('../../lib/core/native.js');
    const file = path.join(dir, 'raw.bin');
    fs.writeFileSync(file, f32([1, 2, 3, 4]));
    await expect(addon().readSafetensors(file, 0, [['w', 'float32', [2], 0, 16, [1], 3]]))
      .rejects.toMatchObject({ code: 'ERR_SAFETENSORS_RANGE' });
    await expect(addon().readSafetensors(file, 0, [['w', 'float32', [3], 0, 16, [2], 0]]))
      .rejects.toMatchObject({ code: 'ERR_SAFETENSORS_RANGE' });
    await expect(addon().readSafetensors(file, 0, [['w', 'float32', [2], 0, 32, [1], 0]]))
      .rejects.toMatchObject({ code: 'ERR_SAFETENSORS_RANGE' });
    await expect(addon().readSafetensors(file, 0, [['w', 'float32', [2], 0, 16, [-1] as number[], 0]]))
      .rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    const [t] = await addon().readSafetensors(file, 0, [['w', 'float32', [2], 0, 16, [2], 1]]);
    expect(Array.from(await t.toArray() as Float32Array)).toEqual([2, 4]);
    t.dispose();
  });
});
