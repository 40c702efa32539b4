import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { Tensor } from '../../lib/index.js';

type Case = { dtype: x2i.AnyDType; data: () => x2i.TypedArray };
const N = 37; // odd on purpose
const cases: Case[] = [
  { dtype: 'float32', data: () => Float32Array.from({ length: N }, (_, i) => Math.fround((i - 18) * 1.37e-3 + i ** 2)) },
  { dtype: 'float64', data: () => Float64Array.from({ length: N }, (_, i) => Math.PI * (i - 18) * 1e-300 + i) },
  { dtype: 'int32', data: () => Int32Array.from({ length: N }, (_, i) => (i % 2 ? -1 : 1) * (2 ** 31 - 1 - i)) },
  { dtype: 'int64', data: () => BigInt64Array.from({ length: N }, (_, i) => (i % 2 ? -1n : 1n) * (2n ** 62n + BigInt(i))) },
  { dtype: 'uint8', data: () => Uint8Array.from({ length: N }, (_, i) => (i * 71) % 256) },
  { dtype: 'bool', data: () => Uint8Array.from({ length: N }, (_, i) => i % 3 === 0 ? 1 : 0) },
  // every 16-bit pattern class: normals, subnormals, infinities, signed zeros
  { dtype: 'float16', data: () => Uint16Array.from({ length: N }, (_, i) => [0x3c00, 0x8000, 0x0001, 0x7c00, 0xfbff][i % 5] + (i >> 3)) },
  { dtype: 'bfloat16', data: () => Uint16Array.from({ length: N }, (_, i) => [0x3f80, 0x8000, 0x0001, 0x7f80, 0xc2f7][i % 5] + (i >> 3)) },
  { dtype: 'int8', data: () => Int8Array.from({ length: N }, (_, i) => i * 7 - 128) },
  { dtype: 'int16', data: () => Int16Array.from({ length: N }, (_, i) => i * 1777 - 32768) },
  { dtype: 'uint16', data: () => Uint16Array.from({ length: N }, (_, i) => i * 1777) },
  { dtype: 'uint32', data: () => Uint32Array.from({ length: N }, (_, i) => 2 ** 32 - 1 - i * 99991) },
  { dtype: 'uint64', data: () => BigUint64Array.from({ length: N }, (_, i) => 2n ** 64n - 1n - BigInt(i)) },
  { dtype: 'float8_e4m3fn', data: () => Uint8Array.from({ length: N }, (_, i) => (i * 13) % 256 === 0x7f ? 0 : (i * 13) % 256) },
];

describe('Tensor round trips', () => {
  for (const c of cases) {
    it(`${c.dtype} is exact`, async () => {
      const data = c.data();
      using t = Tensor.fromArray(data, [N], { dtype: c.dtype });
      expect(t.dtype).toBe(c.dtype);
      expect(t.shape).toEqual([N]);
      expect(t.device).toBe('cpu');
      const back = await t.toArray();
      expect(back.constructor).toBe(data.constructor);
      expect(Array.from(back as ArrayLike<unknown>)).toEqual(Array.from(data as ArrayLike<unknown>));
    });
  }

  it('keeps multi-dimensional shapes and empty tensors', async () => {
    using t = Tensor.fromArray(new Float32Array(24).map((_, i) => i), [2, 3, 4]);
    expect(t.shape).toEqual([2, 3, 4]);
    expect(t.numel).toBe(24);
    expect(t.nbytes).toBe(96);
    using e = Tensor.fromArray(new Float32Array(0), [3, 0]);
    expect(await e.toArray()).toEqual(new Float32Array(0));
    using s = Tensor.fromArray(new Float64Array([42]), []);
    expect(s.shape).toEqual([]);
    expect(Array.from(await s.toArray() as Float64Array)).toEqual([42]);
  });

  it('copies on creation: later writes to the source array do not reach the tensor', async () => {
    const src = new Float32Array([1, 2, 3]);
    using t = Tensor.fromArray(src, [3]);
    src[0] = 99;
    expect(Array.from(await t.toArray() as Float32Array)).toEqual([1, 2, 3]);
    const out = await t.toArray() as Float32Array;
    out[1] = -5; // the returned array is the caller's own
    expect(Array.from(await t.toArray() as Float32Array)).toEqual([1, 2, 3]);
  });

  it('reads a typed array view with a byte offset', async () => {
    const buf = new Float32Array([9, 9, 1, 2, 3, 9]);
    using t = Tensor.fromArray(buf.subarray(2, 5), [3]);
    expect(Array.from(await t.toArray() as Float32Array)).toEqual([1, 2, 3]);
  });

  it('normalises bool bytes to 0/1', async () => {
    using t = Tensor.fromArray(new Uint8Array([0, 2, 255, 1]), [4], { dtype: 'bool' });
    expect(Array.from(await t.toArray() as Uint8Array)).toEqual([0, 1, 1, 1]);
  });

  it('converts dtypes with to() and from a natural array', async () => {
    using t = Tensor.fromArray(new Float32Array([1, -2.5, 3.140625, 65504]), [4]);
    using b = await t.to({ dtype: 'bfloat16' });
    expect(b.dtype).toBe('bfloat16');
    // bf16 bits of 1, -2.5, 3.140625, 65504 (rounded to 65536)
    expect(Array.from(await b.toArray() as Uint16Array)).toEqual([0x3f80, 0xc020, 0x4049, 0x4780]);
    using h = await t.to({ dtype: 'float16' });
    expect(Array.from(await h.toArray() as Uint16Array)).toEqual([0x3c00, 0xc100, 0x4248, 0x7bff]);
    using back = await h.to({ dtype: 'float32' });
    expect(Array.from(await back.toArray() as Float32Array)).toEqual([1, -2.5, 3.140625, 65504]);
    using d = Tensor.fromArray(new Float64Array([0.5, 1.5]), [2], { dtype: 'float32' });
    expect(d.dtype).toBe('float32');
    using i = await d.to({ dtype: 'int64' });
    expect(Array.from(await i.toArray() as BigInt64Array)).toEqual([0n, 1n]);
  });

  it('draws seeded normals reproducibly', async () => {
    using a = await x2i.randn([1000], { seed: 7 });
    using b = await x2i.randn([1000], { seed: 7 });
    using c = await x2i.randn([1000], { seed: 8 });
    const [va, vb, vc] = [await a.toArray(), await b.toArray(), await c.toArray()] as Float32Array[];
    expect(va).toEqual(vb);
    expect(va).not.toEqual(vc);
    const mean = va.reduce((s, v) => s + v, 0) / va.length;
    const sd = Math.sqrt(va.reduce((s, v) => s + (v - mean) ** 2, 0) / va.length);
    expect(Math.abs(mean)).toBeLessThan(0.15);
    expect(Math.abs(sd - 1)).toBeLessThan(0.1);
  });

  it('multiplies matrices', async () => {
    using a = Tensor.fromArray(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
    using b = Tensor.fromArray(new Float32Array([1, 0, 0, 1, 1, 1]), [3, 2]);
    using c = await x2i.matmul(a, b);
    expect(c.shape).toEqual([2, 2]);
    expect(Array.from(await c.toArray() as Float32Array)).toEqual([4, 5, 10, 11]);
  });
});

describe('Tensor errors', () => {
  it('names the expected and found sizes', () => {
    expect(() => Tensor.fromArray(new Float32Array(5), [2, 3])).toThrow(
      /shape \[2, 3\] \(float32\) needs 6 elements but the Float32Array has 5/);
    try {
      Tensor.fromArray(new Float32Array(5), [2, 3]);
    } catch (e) {
      expect((e as x2i.X2IError).code).toBe('ERR_SHAPE_MISMATCH');
      expect(e).toBeInstanceOf(x2i.X2IError);
    }
  });

  it('rejects bad dtypes, devices, shapes and data', () => {
    expect(() => Tensor.fromArray(new Uint16Array(2), [2])).toThrow(/'bfloat16' \| 'float16'/);
    expect(() => Tensor.fromArray(new Float32Array(2), [2], { dtype: 'float99' as x2i.DType })).toThrow(/dtype/);
    expect(() => Tensor.fromArray(new Uint16Array(2), [2], { dtype: 'float32' })).toThrow(/cannot hold dtype 'float32'/);
    expect(() => Tensor.fromArray(new Float32Array(2), [2], { device: 'tpu' })).toThrow(/device/);
    expect(() => Tensor.fromArray(new Float32Array(2), [-2])).toThrow(/non-negative integers/);
    expect(() => Tensor.fromArray([1, 2] as unknown as Float32Array, [2])).toThrow(/typed array/);
  });

  it('reports CUDA as unavailable with a coded error on CPU builds', async () => {
    if (x2i.cuda.isAvailable()) return;
    expect(x2i.cuda.deviceCount()).toBe(0);
    expect(() => Tensor.fromArray(new Float32Array(2), [2], { device: 'cuda' })).toThrow(/CUDA is not available/);
    using t = Tensor.fromArray(new Float32Array(2), [2]);
    await expect(t.to({ device: 'cuda:0' })).rejects.toMatchObject({ code: 'ERR_CUDA_UNAVAILABLE' });
  });

  it('throws DisposedError after dispose, and dispose is idempotent', async () => {
    const t = Tensor.fromArray(new Float32Array(2), [2]);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    await expect(t.toArray()).rejects.toBeInstanceOf(x2i.DisposedError);
    await expect(t.to({ dtype: 'float64' })).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    expect(String(t)).toMatch(/disposed/);
  });
});

describe('memory()', () => {
  it('returns to its baseline after dispose, per device', async () => {
    const base = x2i.memory();
    const ts = [Tensor.fromArray(new Float32Array(1000), [1000]), await x2i.randn([10, 10], { dtype: 'float64' })];
    const mid = x2i.memory();
    expect(mid.tensors).toBe(base.tensors + 2);
    expect(mid.bytes).toBe(base.bytes + 4000 + 800);
    expect(mid.devices.cpu.tensors).toBe((base.devices.cpu?.tensors ?? 0) + 2);
    for (const t of ts) t.dispose();
    expect(x2i.memory().tensors).toBe(base.tensors);
    expect(x2i.memory().bytes).toBe(base.bytes);
  });

  it('Symbol.dispose frees at scope end', () => {
    const base = x2i.memory().tensors;
    {
      using t = Tensor.fromArray(new Float32Array(4), [4]);
      expect(x2i.memory().tensors).toBe(base + 1);
      expect(t.disposed).toBe(false);
    }
    expect(x2i.memory().tensors).toBe(base);
  });

  it('the finalizer frees tensors that were never disposed', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    expect(gc, 'run with --expose-gc (vitest.config.ts execArgv)').toBeTypeOf('function');
    if (!gc) return;
    const base = x2i.memory().tensors;
    (() => { for (let i = 0; i < 100; i++) Tensor.fromArray(new Float32Array(16), [16]); })();
    expect(x2i.memory().tensors).toBe(base + 100);
    for (let i = 0; i < 10 && x2i.memory().tensors > base; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(x2i.memory().tensors).toBe(base);
  });
});
