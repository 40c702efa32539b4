// Two-process training on the CPU through the 'store' backend (the code paths of the NCCL runs, but for the
// transport): x2i.launch starts the ranks of test/fixtures/distributed-worker.mjs; their results are compared
// with one process doing the same work.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { golden, root, tmpDir } from '../helpers.js';

const tmp = tmpDir();
const worker = path.join(root, 'test', 'fixtures', 'distributed-worker.mjs');

const freePort = () => new Promise<number>((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
});
const weights = async (file: string) => {
  const w = await x2i.loadSafetensors(file);
  const out: Record<string, number[]> = {};
  for (const [k, t] of Object.entries(w)) out[k] = Array.from(await t.toArray() as Float32Array), t.dispose();
  return out;
};
const maxRelDiff = (a: Record<string, number[]>, b: Record<string, number[]>) => {
  let m = 0;
  for (const k of Object.keys(a)) {
    const num = Math.hypot(...a[k].map((v, i) => v - b[k][i])), den = Math.hypot(...b[k]) || 1;
    m = Math.max(m, num / den);
  }
  return m;
};
async function runRanks(mode: 'data' | 'split' | 'single', name: string, accumulation = 1, abort = '') {
  const out = path.join(tmp, name);
  const n = mode === 'single' ? 1 : 2;
  const codes = await x2i.launch(worker, { nprocPerNode: n, masterPort: await freePort(),
    env: { X2I_TEST_MODE: mode, X2I_TEST_OUT: out, X2I_TEST_CKPT: path.join(tmp, `${name}-ckpt`), X2I_TEST_ACCUMULATION: String(accumulation),
      X2I_TEST_ABORT: abort } });
  expect(codes).toEqual(new Array(n).fill(0));
  return Promise.all([...Array(n).keys()].map(async (r) => ({ ...JSON.parse(fs.readFileSync(`${out}.${r}.json`, 'utf8')),
    weights: fs.existsSync(`${out}.${r}.safetensors`) ? await weights(`${out}.${r}.safetensors`) : null })));
}
// the reference: one process, the same worker (so the same threads and the same float sums)
const single = async (accumulation: number) => (await runRanks('single', `single-${accumulation}`, accumulation))[0];

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('ProcessGroup (store backend, 2 processes)', () => {
  it('all-reduce, broadcast, ordered send/recv, barrier; clear errors', async () => {
    const script = path.join(tmp, 'pg.mjs');
    fs.writeFileSync(script, `import * as x2i from ${JSON.stringify(path.join(root, 'dist', 'index.js'))};
import fs from 'node:fs';
const g = await x2i.ProcessGroup.init({ backend: 'store', timeoutMs: 60000 });
const t = x2i.Tensor.fromArray(new Float64Array([g.rank + 1, 0.1 * (g.rank + 1)]), [2]);
await g.allReduce(t);
const m = x2i.Tensor.fromArray(new Float32Array([g.rank + 1]), [1]);
await g.allReduce(m, 'mean');
const b = x2i.Tensor.fromArray(new Int32Array([g.rank === 1 ? 42 : 0]), [1]);
await g.broadcast(b, 1);
const got = [];
for (let i = 0; i < 5; i++) {
  if (g.rank === 0) await g.send(x2i.Tensor.fromArray(new Float32Array([i, 10 * i]), [2]), 1);
  else { const r = x2i.Tensor.fromArray(new Float32Array(2), [2]); await g.recv(r, 0); got.push(...(await r.toArray())); }
}
let err = '';
if (g.rank === 1) { try { await g.send(t, 1); } catch (e) { err = e.message; } }
await g.barrier();
fs.writeFileSync(process.env.OUT + g.rank, JSON.stringify({ t: Array.from(await t.toArray()), m: Array.from(await m.toArray()),
  b: Array.from(await b.toArray()), got, err, rank: g.rank, worldSize: g.worldSize, backend: g.backend }));
g.dispose();
`);
    const outp = path.join(tmp, 'pg-out-');
    expect(await x2i.launch(script, { nprocPerNode: 2, masterPort: await freePort(), env: { OUT: outp } })).toEqual([0, 0]);
    const [r0, r1] = [0, 1].map((r) => JSON.parse(fs.readFileSync(outp + r, 'utf8')));
    for (const r of [r0, r1]) {
      expect(r.t).toEqual([3, 0.1 + 0.2]);
      expect(r.m).toEqual([1.5]);
      expect(r.b).toEqual([42]);
      expect(r.worldSize).toBe(2);
      expect(r.backend).toBe('store');
    }
    expect(r1.got).toEqual([0, 0, 1, 10, 2, 20, 3, 30, 4, 40]);
    expect(r1.err).toMatch(/send: to itself/);
    await expect(x2i.ProcessGroup.init({ rank: 2, worldSize: 2 })).rejects.toThrow(/rank/);
  });
});

describe('LoraTrainer data parallel (2 processes)', () => {
  it('two ranks, one micro-batch each per step = one process accumulating two (adapter, losses, one checkpoint)', async () => {
    const ft = path.join(root, 'test', 'fixtures', 'finetune-worker.mjs');
    const launchRanks = async (mode: 'data' | 'single', n: number) => {
      const out = path.join(tmp, `ft-${mode}`);
      const codes = await x2i.launch(ft, { nprocPerNode: n, masterPort: await freePort(),
        env: { X2I_TEST_MODE: mode, X2I_TEST_OUT: out, X2I_TEST_CKPT: path.join(tmp, `ft-${mode}-ckpt`) } });
      expect(codes).toEqual(new Array(n).fill(0));
      return Promise.all([...Array(n).keys()].map(async (r) => ({ ...JSON.parse(fs.readFileSync(`${out}.${r}.json`, 'utf8')),
        weights: await weights(`${out}.${r}.safetensors`) })));
    };
    const [r0, r1] = await launchRanks('data', 2);
    const [ref] = await launchRanks('single', 1);
    expect([r0.step, r1.step, ref.step]).toEqual([2, 2, 2]);
    expect(maxRelDiff(r1.weights, r0.weights)).toBe(0);  // identical ranks (rank 1's adapter started elsewhere)
    expect(maxRelDiff(r0.weights, ref.weights)).toBeLessThan(1e-5);
    expect([r0.losses[0], r1.losses[0], r0.losses[1], r1.losses[1]].map((l) => l.toPrecision(6))).toEqual(ref.losses.map((l: number) => l.toPrecision(6)));
    expect(fs.existsSync(x2i.LoraTrainer.latestCheckpoint(path.join(tmp, 'ft-data-ckpt')))).toBe(true);
  }, 120_000);
});

describe('X2ITrainer parallel modes (2 processes)', () => {
  it("data: two ranks, one micro-batch each per step = one process accumulating two (weights, both ranks, checkpoint)", async () => {
    const [r0, r1] = await runRanks('data', 'data');
    expect([r0.role, r1.role]).toEqual(['data', 'data']);
    expect(r0.step).toBe(2);
    const ref = await single(2);
    expect(ref.step).toBe(2);
    expect(maxRelDiff(r1.weights, r0.weights)).toBe(0);  // the ranks stay identical (rank 1 started from other weights)
    expect(maxRelDiff(r0.weights, ref.weights)).toBeLessThan(1e-6);
    // each rank's losses are those of its micro-batches in the one-process run
    expect([r0.losses[0], r1.losses[0], r0.losses[1], r1.losses[1]]).toEqual(ref.losses);
    // rank 0 wrote the checkpoint, loadable as an AlignNet
    using back = await x2i.AlignNet.fromPretrained(path.join(x2i.X2ITrainer.latestCheckpoint(path.join(tmp, 'data-ckpt')), 'alignnet.safetensors'));
    expect(back.info.layers).toBe(5);
  }, 120_000);

  it('split: the teacher rank sends its taps, the student rank trains exactly as one process would', async () => {
    const [t, s] = await runRanks('split', 'split');
    expect([t.role, s.role]).toEqual(['teacher', 'student']);
    expect(t.losses.every((l: number | null) => l === null)).toBe(true);  // NaN in JSON
    expect(t.step).toBe(4);
    const ref = await single(1);
    expect(s.losses).toEqual(ref.losses);
    expect(ref.losses[3]).toBeLessThan(ref.losses[0]);
    expect(maxRelDiff(s.weights, ref.weights)).toBeLessThan(1e-6);
    expect(fs.existsSync(path.join(tmp, 'split-ckpt', 'trainer.json'))).toBe(true);
  }, 120_000);

  it('a stop on one rank stops every rank at the same micro-batch, with an agreeing checkpoint', async () => {
    for (const [mode, abort] of [['data', '1:1'], ['split', '0:2'], ['split', '1:2']] as const) {
      const name = `abort-${mode}-${abort.replace(':', '-')}`;
      const ranks = await runRanks(mode, name, 1, abort);
      const at = Number(abort.split(':')[1]);
      for (const r of ranks) expect(r.microStep, `${name} rank ${r.role}`).toBe(at);
      const meta = JSON.parse(fs.readFileSync(path.join(tmp, `${name}-ckpt`, 'trainer.json'), 'utf8'));
      expect(meta.microStep).toBe(at);
    }
  }, 120_000);

  it('options are checked', async () => {
    using flux = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'));
    const fake = { worldSize: 3, rank: 0, allReduce() {} } as unknown as x2i.ProcessGroup;
    expect(() => new x2i.X2ITrainer({ transformer: flux, alignNet: {} as x2i.AlignNet }, { parallel: { group: fake, mode: 'split' } }))
      .toThrow(/'split' needs 2 ranks/);
    expect(() => new x2i.X2ITrainer({ transformer: flux, alignNet: {} as x2i.AlignNet }, { parallel: { group: fake, mode: 'pipe' as 'data' } }))
      .toThrow(/parallel.mode/);
  });
});
