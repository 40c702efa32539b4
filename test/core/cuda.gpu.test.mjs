// GPU tests, in Node's own test runner so that they run on the GPU machine with only the compiled package
// (dist/) and the addon: `node --test test/gpu/`. They skip where CUDA is absent, unless X2I_REQUIRE_GPU=1.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as x2i from '../../dist/index.js';

const golden = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden');
const hasCuda = x2i.cuda.isAvailable();
if (!hasCuda && process.env.X2I_REQUIRE_GPU === '1') throw new Error('X2I_REQUIRE_GPU=1 but CUDA is not available: ' +
  JSON.stringify(x2i.buildInfo()));
const skip = hasCuda ? false : 'CUDA is not available';

const N = 1031; // odd, larger than one page of most kernels' tiles
const cases = {
  float32: () => Float32Array.from({ length: N }, (_, i) => Math.fround(Math.sin(i) * 1e3)),
  float64: () => Float64Array.from({ length: N }, (_, i) => Math.cos(i) * 1e-200),
  int32: () => Int32Array.from({ length: N }, (_, i) => (i % 2 ? -1 : 1) * (2 ** 31 - 1 - i)),
  int64: () => BigInt64Array.from({ length: N }, (_, i) => -(2n ** 62n) + BigInt(i) * 12345n),
  uint8: () => Uint8Array.from({ length: N }, (_, i) => i % 256),
  bool: () => Uint8Array.from({ length: N }, (_, i) => (i % 3 ? 1 : 0)),
  float16: () => Uint16Array.from({ length: N }, (_, i) => (i * 37) & 0x7bff),
  bfloat16: () => Uint16Array.from({ length: N }, (_, i) => (i * 41) & 0x7f7f),
  int8: () => Int8Array.from({ length: N }, (_, i) => (i % 256) - 128),
  int16: () => Int16Array.from({ length: N }, (_, i) => i * 31 - 16000),
};

// per-test skip, so that skipped tests are counted and visible
const gpuIt = (name, fn) => it(name, { skip }, fn);

describe('CUDA', () => {
  gpuIt('the addon was built with CUDA and LibTorch registered its CUDA backend', () => {
    const info = x2i.buildInfo();
    assert.equal(info.builtWithCuda, true);
    assert.equal(info.cudaBackendRegistered, true);
    assert.ok(x2i.cuda.deviceCount() >= 1);
  });

  for (const [dtype, make] of Object.entries(cases)) {
    gpuIt(`${dtype} round-trips exactly through cuda`, async () => {
      const data = make();
      const direct = x2i.Tensor.fromArray(data, [N], { dtype, device: 'cuda' });
      assert.equal(direct.device, 'cuda:0');
      assert.deepEqual(Array.from(await direct.toArray()), Array.from(data));
      const cpu = x2i.Tensor.fromArray(data, [N], { dtype });
      const moved = await cpu.to({ device: 'cuda:0' });
      const back = await moved.to({ device: 'cpu' });
      assert.equal(back.device, 'cpu');
      assert.deepEqual(Array.from(await back.toArray()), Array.from(data));
      for (const t of [direct, cpu, moved, back]) t.dispose();
    });
  }

  gpuIt('large transfers (staged through pinned buffers, odd sizes) are exact both ways', async () => {
    for (const [n, make, dtype] of [
      [9 * 2 ** 20 + 7, (n) => Float32Array.from({ length: n }, (_, i) => Math.fround(i * 0.37 - 1e5)), 'float32'],
      [33 * 2 ** 20 + 1, (n) => Uint8Array.from({ length: n }, (_, i) => (i * 131) & 255), 'uint8'],
      [5 * 2 ** 20 + 3, (n) => Uint16Array.from({ length: n }, (_, i) => (i * 7) & 0x7f7f), 'bfloat16'],
    ]) {
      const data = make(n);
      const cpu = x2i.Tensor.fromArray(data, [n], { dtype });
      const gpu = await cpu.to({ device: 'cuda' });
      const viaArray = await gpu.toArray();
      assert.ok(Buffer.from(viaArray.buffer).equals(Buffer.from(data.buffer)), `${dtype} toArray`);
      const back = await gpu.to({ device: 'cpu' });
      const arr = await back.toArray();
      assert.ok(Buffer.from(arr.buffer).equals(Buffer.from(data.buffer)), `${dtype} to(cpu)`);
      if (dtype === 'float32') {
        const g16 = await gpu.to({ device: 'cpu', dtype: 'bfloat16' });
        const c16 = await cpu.to({ dtype: 'bfloat16' });
        assert.ok(Buffer.from((await g16.toArray()).buffer).equals(Buffer.from((await c16.toArray()).buffer)));
        g16.dispose(); c16.dispose();
      }
      for (const t of [cpu, gpu, back]) t.dispose();
    }
  });

  gpuIt('a large safetensors file goes straight to cuda exactly', async () => {
    const os = await import('node:os');
    const fs = await import('node:fs');
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-gpu-')), 'big.safetensors');
    const a = await x2i.randn([3001, 2049], { seed: 4 });
    const b = await x2i.randn([7, 3], { seed: 5, dtype: 'float64' });
    await x2i.saveSafetensors(file, { a, b });
    const g = await x2i.loadSafetensors(file, { device: 'cuda' });
    assert.equal(g.a.device, 'cuda:0');
    assert.deepEqual(await g.a.toArray(), await a.toArray());
    assert.deepEqual(await g.b.toArray(), await b.toArray());
    for (const t of [a, b, g.a, g.b]) t.dispose();
    fs.rmSync(file);
  });

  gpuIt('casts on the GPU exactly as on the CPU', async () => {
    const cpu = await x2i.randn([257, 3], { seed: 5 });
    const gpu = await cpu.to({ device: 'cuda' });
    for (const dtype of ['bfloat16', 'float16', 'float64']) {
      const a = await cpu.to({ dtype });
      const b = await gpu.to({ dtype });
      assert.deepEqual(await b.toArray(), await a.toArray(), dtype);
      a.dispose(); b.dispose();
    }
    cpu.dispose(); gpu.dispose();
  });

  gpuIt('loads safetensors straight to cuda in bf16', async () => {
    const file = path.join(golden, 'flux-transformer', 'diffusion_pytorch_model.safetensors');
    const before = x2i.memory();
    const gpu = await x2i.loadSafetensors(file, { device: 'cuda', dtype: 'bfloat16' });
    const cpu = await x2i.loadSafetensors(file);
    assert.ok(Object.keys(gpu).length > 50);
    for (const [k, t] of Object.entries(gpu)) {
      assert.equal(t.device, 'cuda:0', k);
      assert.equal(t.dtype, 'bfloat16', k);
      const ref = await cpu[k].to({ dtype: 'bfloat16' });
      assert.deepEqual(await t.toArray(), await ref.toArray(), k);
      ref.dispose();
    }
    const mid = x2i.memory();
    assert.equal(mid.devices['cuda:0'].tensors - (before.devices['cuda:0']?.tensors ?? 0), Object.keys(gpu).length);
    for (const t of [...Object.values(gpu), ...Object.values(cpu)]) t.dispose();
    assert.equal(x2i.memory().tensors, before.tensors);
    assert.equal(x2i.memory().devices['cuda:0'].bytes, before.devices['cuda:0']?.bytes ?? 0);
  });

  gpuIt('saves cuda tensors', async () => {
    const os = await import('node:os');
    const fs = await import('node:fs');
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-gpu-')), 'w.safetensors');
    const t = await x2i.randn([33, 7], { seed: 9, device: 'cuda', dtype: 'bfloat16' });
    await x2i.saveSafetensors(file, { t });
    const back = await x2i.loadSafetensors(file);
    assert.deepEqual(await back.t.toArray(), await t.toArray());
    t.dispose(); back.t.dispose();
  });

  gpuIt('runs bf16 matmul on the GPU close to the float64 CPU result', async () => {
    const a = await x2i.randn([129, 65], { seed: 1 });
    const b = await x2i.randn([65, 33], { seed: 2 });
    const ref = await x2i.matmul(await a.to({ dtype: 'float64' }), await b.to({ dtype: 'float64' }));
    const g = await x2i.matmul(await a.to({ device: 'cuda', dtype: 'bfloat16' }), await b.to({ device: 'cuda', dtype: 'bfloat16' }));
    const got = await (await g.to({ device: 'cpu', dtype: 'float64' })).toArray();
    const want = await ref.toArray();
    let num = 0, den = 0;
    for (let i = 0; i < want.length; i++) { num += (got[i] - want[i]) ** 2; den += want[i] ** 2; }
    assert.ok(Math.sqrt(num / den) < 1e-2, `rel err ${Math.sqrt(num / den)}`);
  });

  gpuIt('same seed, same numbers on cpu and cuda', async () => {
    const a = await x2i.randn([1000], { seed: 3 });
    const b = await x2i.randn([1000], { seed: 3, device: 'cuda' });
    assert.deepEqual(await b.toArray(), await a.toArray());
  });

  gpuIt('rejects a device index that does not exist', async () => {
    const n = x2i.cuda.deviceCount();
    assert.throws(() => x2i.Tensor.fromArray(new Float32Array(1), [1], { device: `cuda:${n}` }),
      { code: 'ERR_INVALID_DEVICE' });
    await x2i.cuda.synchronize();
  });

  gpuIt('cuda.memory: the allocator counts a new tensor, peaks reset, the cache empties', async () => {
    const m0 = x2i.cuda.memory('cuda', { reset: true });
    const t = x2i.Tensor.fromArray(new Float32Array(1 << 24), [1 << 24], { device: 'cuda' });  // 64 MiB
    const m1 = x2i.cuda.memory();
    assert.ok(m1.allocated - m0.allocated >= 64 * 2 ** 20, JSON.stringify({ m0, m1 }));
    assert.ok(m1.peakAllocated >= m1.allocated && m1.reserved >= m1.allocated);
    t.dispose();
    await x2i.cuda.synchronize();
    const m2 = x2i.cuda.memory('cuda', { emptyCache: true });
    assert.ok(m2.allocated <= m0.allocated + 2 ** 20 && m2.peakAllocated >= m1.allocated, JSON.stringify({ m1, m2 }));
    assert.ok(m2.reserved <= m1.reserved - 64 * 2 ** 20, 'emptyCache gives the freed block back');
  });

  gpuIt('cuda.setMemoryLimit: an allocation beyond the cap is a clear out-of-memory error, not a crash; null lifts it', async () => {
    const m0 = x2i.cuda.memory('cuda', { emptyCache: true });
    assert.ok(m0.total > 2 ** 30, JSON.stringify(m0));
    x2i.cuda.setMemoryLimit(m0.reserved + 2 ** 30);  // 1 GiB beyond what is held now
    try {
      const fits = await x2i.zeros([2 ** 27], { device: 'cuda' });  // 512 MiB
      fits.dispose();
      await assert.rejects(x2i.zeros([2 ** 29], { device: 'cuda' }), (e) => e instanceof Error && /out of memory|CUDA|memory/i.test(e.message));
      assert.throws(() => x2i.cuda.setMemoryLimit(m0.total * 2), { code: 'ERR_INVALID_ARG' });
    } finally {
      x2i.cuda.setMemoryLimit(null);
    }
    const big = await x2i.zeros([2 ** 29], { device: 'cuda' });  // 2 GiB: fine without the cap
    big.dispose();
  });

  gpuIt('fromConfig draws random weights on the GPU: deterministic in the seed, finite outputs', async () => {
    const c = { model_type: 't5', vocab_size: 64, d_model: 32, d_kv: 8, d_ff: 48, num_layers: 2, num_heads: 4, feed_forward_proj: 'gated-gelu' };
    const a = await x2i.T5Encoder.fromConfig(c, { device: 'cuda', seed: 7 });
    const b = await x2i.T5Encoder.fromConfig(c, { device: 'cuda', seed: 7 });
    const ids = x2i.Tensor.fromArray(BigInt64Array.from({ length: 10 }, (_, i) => BigInt(i * 5 % 64)), [1, 10], { device: 'cuda' });
    const [ra, rb] = await Promise.all([a.forward({ inputIds: ids }), b.forward({ inputIds: ids })]);
    const va = await (await ra.lastHiddenState.to({ device: 'cpu', dtype: 'float32' })).toArray();
    const vb = await (await rb.lastHiddenState.to({ device: 'cpu', dtype: 'float32' })).toArray();
    assert.deepEqual(vb, va);
    assert.ok(va.every(Number.isFinite));
    const al = await x2i.AlignNet.fromConfig({ layers: 3, inputDim: 16, sequenceDim: 8, pooledDim: 4 }, { device: 'cuda', seed: 1 });
    assert.equal(al.dtype, 'bfloat16');
    const vae = await x2i.AutoencoderKL.fromConfig({ block_out_channels: [32, 32] }, { device: 'cuda' });
    const z = await x2i.randn([1, 16, 4, 4], { device: 'cuda', dtype: 'bfloat16' });
    const y = await vae.decode(z);
    assert.deepEqual(y.shape, [1, 3, 8, 8]);
    for (const m of [a, b, al, vae]) m.dispose();
  });
});
