// The HTTP generation service on CUDA with the tiny random models (bf16): concurrent clients answered with correct
// images (batched), the same seed giving the same bytes, 429 beyond the queue, a client that leaves mid-stream
// stopped within one step, close() draining, SIGTERM draining a child process, and tensor and CUDA memory back to
// their baselines. Skipped without CUDA. Needs dist/ and the production dependencies (fastify, @fastify/multipart,
// sharp) in node_modules.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { events, waitFor, until as waitUntil } from '../fixtures/sse-client.mjs';
import * as x2i from '../../dist/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const hasCuda = x2i.cuda.isAvailable();
if (!hasCuda && process.env.X2I_REQUIRE_GPU === '1') throw new Error('X2I_REQUIRE_GPU=1 but CUDA is not available');
const skip = hasCuda ? false : 'CUDA is not available';
const gpuIt = (name, fn) => it(name, { skip, timeout: 180_000 }, fn);  // a hang is a failure, not a stalled suite

let model, server, sharp, tensorBaseline, cudaBaseline;
const post = (s, body, opts = {}) => fetch(`${s.url}${opts.path ?? '/v1/generate'}`, { method: 'POST', signal: opts.signal,
  headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const decode = async (buf) => {
  const img = sharp(Buffer.from(buf));
  const meta = await img.metadata();
  return { width: meta.width, height: meta.height, raw: await img.raw().toBuffer() };
};
const until = (cond, ms = 60_000) => waitUntil(cond, ms);
// the device as the model reports it ('cuda:0': a device index is always named)
const DEV = 'cuda:0';
const dev = (s) => s.stats().devices[DEV];

describe('the generation service on CUDA (tiny models)', { skip }, () => {
  before(async () => {
    sharp = (await import('sharp')).default;
    model = await x2i.randomServedModel({ device: 'cuda' });
    server = await x2i.createServer({ generator: model, port: 0, maxQueue: 16, maxBatch: 4, batchWindowMs: 40, maxSteps: 5000 });
    // the baselines after a first request of each batch shape class (cuBLAS's workspaces stay allocated after the
    // first products)
    await Promise.all([0, 1].map((seed) => post(server, { prompt: 'warm up', seed, numInferenceSteps: 1, height: 32, width: 32 })
      .then((r) => r.arrayBuffer())));
    await (await post(server, { prompt: 'warm up', numInferenceSteps: 1, height: 32, width: 32 })).arrayBuffer();
    tensorBaseline = x2i.memory().tensors;
    await x2i.cuda.synchronize();
    cudaBaseline = x2i.cuda.memory('cuda').allocated;
  }, { timeout: 180_000 });
  after(async () => {
    await server?.close();
    model?.dispose();
  }, { timeout: 60_000 });

  gpuIt('serves on cuda: health names the device and bf16', async () => {
    const h = await (await fetch(`${server.url}/health`)).json();
    assert.equal(h.models.default.device, DEV);
    assert.equal(h.models.default.dtype, 'bfloat16');
    assert.match(server.metrics(), /x2i_cuda_memory_bytes\{device="cuda:0",kind="allocated"\} \d+/);
  });

  gpuIt('N concurrent clients: every request answered, batched, of the requested size; the same seed twice, the same bytes', async () => {
    const bodies = Array.from({ length: 12 }, (_, i) => ({ prompt: `request ${i}`, seed: i, numInferenceSteps: 4,
      height: i % 2 ? 32 : 48, width: 32, response: 'json' }));
    const t0 = Date.now();
    const out = await Promise.all(bodies.map(async (b) => {
      const r = await post(server, b);
      assert.equal(r.status, 200);
      return r.json();
    }));
    assert.ok(Date.now() - t0 < 60_000);
    assert.ok(out.some((r) => r.batchSize > 1), 'batched');
    for (const [i, r] of out.entries()) {
      const img = await decode(Buffer.from(r.image, 'base64'));
      assert.deepEqual([img.width, img.height], [bodies[i].width, bodies[i].height]);
    }
    const once = { prompt: 'same seed', seed: 42, numInferenceSteps: 4, height: 32, width: 32 };
    const a = Buffer.from(await (await post(server, once)).arrayBuffer());
    const b = Buffer.from(await (await post(server, once)).arrayBuffer());
    assert.ok(a.equals(b));
    // the batched image agrees with the lone one up to bf16 rounding
    const lone = await decode(await (await post(server, { ...bodies[0], response: 'image' })).arrayBuffer());
    const batched = await decode(Buffer.from(out[0].image, 'base64'));
    let sum = 0;
    for (let k = 0; k < lone.raw.length; k++) sum += Math.abs(lone.raw[k] - batched.raw[k]);
    assert.ok(sum / lone.raw.length < 4, `mean |lone − batched| = ${sum / lone.raw.length} of 255`);
  });

  gpuIt('a client that disconnects mid-stream is stopped within one step; a full queue answers 429', async () => {
    const s0 = server.stats();
    const ac = new AbortController();
    const r = await post(server, { prompt: 'leaving', numInferenceSteps: 4000, height: 256, width: 256 }, { path: '/v1/generate/stream', signal: ac.signal });
    let last = 0;
    try {
      for await (const e of events(r)) {
        if (e.event === 'progress') last = e.data.step;
        if (last >= 3) { ac.abort(); break; }
      }
    } catch { /* the abort */ }
    await until(() => dev(server).inFlight === 0 && dev(server).batches > s0.devices[DEV].batches);
    const s1 = server.stats();
    assert.equal(s1.devices[DEV].abortedBatches - s0.devices[DEV].abortedBatches, 1);
    assert.ok(s1.stepsAfterAbort - s0.stepsAfterAbort <= 1, `steps after the abort: ${s1.stepsAfterAbort - s0.stepsAfterAbort}`);
    assert.ok(s1.denoiseSteps - s0.denoiseSteps < last + 20, `ran ${s1.denoiseSteps - s0.denoiseSteps} steps after seeing ${last}`);

    const s = await x2i.createServer({ generator: model, port: 0, maxQueue: 1, maxBatch: 1, maxSteps: 10_000 });
    try {
      const ac2 = new AbortController();
      const long = await post(s, { prompt: 'hold', numInferenceSteps: 8000, height: 256, width: 256 }, { path: '/v1/generate/stream', signal: ac2.signal });
      const it2 = events(long);
      await waitFor(it2, 'start');
      const queued = post(s, { prompt: 'q', numInferenceSteps: 2, height: 32, width: 32 });
      await until(() => s.stats().devices[DEV].queued === 1);
      const refused = await post(s, { prompt: 'r', numInferenceSteps: 2, height: 32, width: 32 });
      assert.equal(refused.status, 429);
      assert.ok(Number(refused.headers.get('retry-after')) >= 1);
      ac2.abort();
      assert.equal((await queued).status, 200);
    } finally {
      await s.close();
    }
  });

  gpuIt('SIGTERM drains a child `x2i serve --tiny --device cuda`: the running request finishes, queued ones get 503, exit 0', async () => {
    const child = spawn(process.execPath, [path.join(root, 'test', 'fixtures', 'server-dist-child.mjs'), '--tiny', '--device', 'cuda',
      '--port', '0', '--max-batch', '1', '--max-steps', '5000'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    const exited = new Promise((r) => child.on('exit', (code) => r(code)));
    try {
      await until(() => /serving .* at (http:\S+)/.test(stderr), 120_000);
      const url = /serving .* at (http:\S+)/.exec(stderr)[1];
      const s = { url };
      const long = await post(s, { prompt: 'in flight', numInferenceSteps: 400, height: 128, width: 128 }, { path: '/v1/generate/stream' });
      const it2 = events(long);
      await waitFor(it2, 'start');
      const queued = post(s, { prompt: 'q', numInferenceSteps: 2 });
      await until(async () => (await (await fetch(`${url}/health`)).json()).devices[DEV].queued === 1);
      child.kill('SIGTERM');
      const q = await queued;
      assert.equal(q.status, 503);
      const rest = [];
      for await (const e of it2) rest.push(e.event);
      assert.equal(rest.at(-1), 'result');
      assert.equal(await exited, 0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  gpuIt('tensor and CUDA memory back to their baselines', async () => {
    await until(() => dev(server).inFlight === 0 && dev(server).queued === 0);
    if (global.gc) global.gc();
    assert.equal(x2i.memory().tensors, tensorBaseline);
    await x2i.cuda.synchronize();
    const allocated = x2i.cuda.memory('cuda').allocated;
    // what a request allocates is freed again (a few MiB of library workspaces for new shapes may stay)
    assert.ok(allocated <= cudaBaseline + 16 * 1024 * 1024, `allocated ${allocated} bytes after, ${cudaBaseline} before`);
  });
});
