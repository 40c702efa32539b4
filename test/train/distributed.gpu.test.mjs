// Multi-process training on the GPU machine: NCCL process groups (built where nccl.h was found), and the trainer's
// parallel modes on CUDA tensors. Two ranks on one GPU go through the 'store' backend (NCCL needs a GPU per rank);
// with two GPUs the same comparisons run over NCCL.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as x2i from '../../dist/index.js';
import { addon } from '../../dist/core/native.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const worker = path.join(here, '..', 'fixtures', 'distributed-worker.mjs');
const hasCuda = x2i.cuda.isAvailable();
if (!hasCuda && process.env.X2I_REQUIRE_GPU === '1') throw new Error('X2I_REQUIRE_GPU=1 but CUDA is not available');
const skip = hasCuda ? false : 'CUDA is not available';
const gpus = hasCuda ? x2i.cuda.deviceCount() : 0;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-dist-'));

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const weights = async (file) => {
  const w = await x2i.loadSafetensors(file);
  const out = {};
  for (const [k, t] of Object.entries(w)) out[k] = Array.from(await t.toArray()), t.dispose();
  return out;
};
const maxRelDiff = (a, b) => Math.max(...Object.keys(a).map((k) => Math.hypot(...a[k].map((v, i) => v - b[k][i])) / (Math.hypot(...b[k]) || 1)));
async function runRanks(mode, name, { backend = 'store', accumulation = 1 } = {}) {
  const out = path.join(tmp, name), n = mode === 'single' ? 1 : 2;
  const codes = await x2i.launch(worker, { nprocPerNode: n, masterPort: await freePort(), env: { X2I_TEST_MODE: mode, X2I_TEST_OUT: out,
    X2I_TEST_CKPT: path.join(tmp, `${name}-ckpt`), X2I_TEST_ACCUMULATION: String(accumulation), X2I_TEST_BACKEND: backend,
    X2I_TEST_DEVICE: 'cuda' } });
  assert.deepEqual(codes, new Array(n).fill(0));
  return Promise.all([...Array(n).keys()].map(async (r) => ({ ...JSON.parse(fs.readFileSync(`${out}.${r}.json`, 'utf8')),
    weights: fs.existsSync(`${out}.${r}.safetensors`) ? await weights(`${out}.${r}.safetensors`) : null })));
}
const close = (a, b, tol, what) => a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) <= tol * Math.abs(b[i]), `${what}[${i}]: ${v} vs ${b[i]}`));

describe('distributed (GPU)', () => {
  it('the CUDA build has NCCL process groups', { skip }, () => {
    assert.equal(addon().ncclAvailable(), true, 'nccl.h was not found at build time');
  });

  it('NCCL, one rank: all-reduce, broadcast and barrier on CUDA tensors; CPU tensors are a clear error', { skip }, async () => {
    const g = await x2i.ProcessGroup.init({ backend: 'nccl', rank: 0, worldSize: 1, masterPort: await freePort(), timeoutMs: 60_000 });
    assert.equal(g.backend, 'nccl');
    const t = x2i.Tensor.fromArray(new Float32Array([1, 2, 3]), [3], { device: 'cuda' });
    await g.allReduce(t);
    await g.broadcast(t, 0);
    await g.barrier();
    assert.deepEqual(Array.from(await t.toArray()), [1, 2, 3]);
    await assert.rejects(g.allReduce(x2i.Tensor.fromArray(new Float32Array(2), [2])), /must be on a CUDA device/);
    await g.close();
  });

  const transport = gpus >= 2 ? 'nccl' : 'store';
  it(`data mode on CUDA over ${transport}: two ranks = one process accumulating two`, { skip }, async () => {
    const [r0, r1] = await runRanks('data', 'data', { backend: transport });
    const ref = (await runRanks('single', 'single-2', { accumulation: 2 }))[0];
    assert.equal(maxRelDiff(r1.weights, r0.weights), 0);
    assert.ok(maxRelDiff(r0.weights, ref.weights) < 1e-4, `weights ${maxRelDiff(r0.weights, ref.weights)}`);
    close([r0.losses[0], r1.losses[0], r0.losses[1], r1.losses[1]], ref.losses, 1e-5, 'loss');
  });

  it(`split mode on CUDA over ${transport}: the student rank trains as one process`, { skip }, async () => {
    const [t, s] = await runRanks('split', 'split', { backend: transport });
    assert.deepEqual([t.role, s.role], ['teacher', 'student']);
    const ref = (await runRanks('single', 'single-1'))[0];
    close(s.losses, ref.losses, 1e-5, 'loss');
    assert.ok(maxRelDiff(s.weights, ref.weights) < 1e-4, `weights ${maxRelDiff(s.weights, ref.weights)}`);
  });
});
