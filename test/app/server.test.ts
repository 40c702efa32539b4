// The HTTP generation service (x2i.createServer, `x2i serve`) on the CPU with random tiny models: started on loopback,
// driven by a real HTTP client (global fetch). Concurrent clients, batching, the bounded queue (429), a client that
// leaves mid-stream, malformed requests (400 naming the field), file paths under the root only, multipart uploads,
// LoRA names, teacher and student side by side, SIGTERM draining a child process (`x2i serve --tiny`), memory back
// to its baseline.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import * as x2i from '../../lib/index.js';
import { createServer, randomServedModel, type X2IServer } from '../../lib/index.js';
import { serveCommand } from '../../lib/app/serve.js';
import { events, waitFor, until as waitUntil } from '../fixtures/sse-client.mjs';
import { golden, root, settleGc, tmpDir } from '../helpers.js';

type Model = Awaited<ReturnType<typeof randomServedModel>>;
let model: Model;
let server: X2IServer;
let baseline: number;
const tmp = tmpDir();
const fileRoot = path.join(tmp, 'root');

/** A PNG of w×h pixels (a gradient). */
async function png(w: number, h: number): Promise<Buffer> {
  const raw = Buffer.alloc(w * h * 3);
  for (let i = 0; i < w * h; i++) raw.set([(i * 7) % 256, (i * 13) % 256, 128], i * 3);
  return sharp(raw, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
}

const post = (s: X2IServer, body: unknown, opts: { path?: string; headers?: Record<string, string>; signal?: AbortSignal } = {}) =>
  fetch(`${s.url}${opts.path ?? '/v1/generate'}`, { method: 'POST', signal: opts.signal,
    headers: { 'content-type': 'application/json', ...opts.headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });

async function decode(buf: Buffer | ArrayBuffer): Promise<{ width: number; height: number; raw: Buffer }> {
  const img = sharp(Buffer.from(buf as ArrayBuffer));
  const meta = await img.metadata();
  return { width: meta.width!, height: meta.height!, raw: await img.raw().toBuffer() };
}

const until = (cond: () => boolean | Promise<boolean>, ms = 30_000) => waitUntil(cond, ms);
const device = (s: X2IServer) => s.stats().devices.cpu;

beforeAll(async () => {
  fs.mkdirSync(path.join(fileRoot, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(fileRoot, 'sub', 'in.png'), await png(48, 40));
  fs.writeFileSync(path.join(tmp, 'outside.png'), await png(32, 32));
  fs.symlinkSync(path.join(tmp, 'outside.png'), path.join(fileRoot, 'link.png'));
  fs.symlinkSync(tmp, path.join(fileRoot, 'up'));
  model = await randomServedModel();
  await settleGc();
  baseline = x2i.memory().tensors;
  server = await createServer({ generator: model, port: 0, maxQueue: 16, maxBatch: 4, batchWindowMs: 40, maxSteps: 2000,
    bodyLimit: 2 * 2 ** 20, maxImageSide: 256, maxPixels: 200 * 200, fileRoot });
});
afterAll(async () => {
  await server?.close();
  model?.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('createServer', () => {
  it('answers a request with the PNG that X2IGenerator.generate makes; JSON with the seed and timings; the same seed, the same bytes', async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const body = { prompt: 'a red fox in the snow, 雪の中の赤い狐', seed: 7, height: 32, width: 48, numInferenceSteps: 4 };
    const r1 = await post(server, body);
    expect(r1.status).toBe(200);
    expect(r1.headers.get('content-type')).toBe('image/png');
    expect(r1.headers.get('x-x2i-seed')).toBe('7');
    expect(r1.headers.get('server-timing')).toMatch(/queue;dur=[\d.]+, encode;dur=[\d.]+, generate;dur=[\d.]+/);
    const a = Buffer.from(await r1.arrayBuffer());
    const img = await decode(a);
    expect([img.width, img.height]).toEqual([48, 32]);
    // the library's own result for the same options
    const direct = await model.generator.generate({ prompt: body.prompt, tokenizer: model.tokenizer as x2i.QwenTokenizer, maxLength: model.maxLength,
      seed: 7, height: 32, width: 48, numInferenceSteps: 4, guidanceScale: 3.5 });
    expect(a.equals(await direct.toPng(0))).toBe(true);
    direct.images.dispose();
    const r2 = await post(server, { ...body, response: 'json' });
    expect(r2.headers.get('content-type')).toMatch(/^application\/json/);
    const j = await r2.json();
    expect(j).toMatchObject({ format: 'png', mimeType: 'image/png', width: 48, height: 32, seed: 7, model: 'default', numInferenceSteps: 4,
      guidanceScale: 3.5, batchSize: 1 });
    for (const k of ['queueMs', 'encodeMs', 'generateMs', 'imageMs', 'totalMs']) expect(j.timings[k]).toBeGreaterThanOrEqual(0);
    expect(Buffer.from(j.image, 'base64').equals(a)).toBe(true);
    // accept: application/json does the same; another seed another image; defaults: 64² and a random seed, reported
    const r3 = await post(server, { ...body, seed: 8 }, { headers: { accept: 'application/json' } });
    expect(Buffer.from((await r3.json()).image, 'base64').equals(a)).toBe(false);
    const r4 = await post(server, { prompt: 'x', format: 'webp' });
    expect(r4.headers.get('content-type')).toBe('image/webp');
    expect(Number(r4.headers.get('x-x2i-seed'))).toBeGreaterThanOrEqual(0);
    expect((await decode(await r4.arrayBuffer())).width).toBe(64);
  });

  it('N concurrent clients: every request answered, batched, correct (the lone request\'s image up to float rounding), in bounded time', async () => {
    const steps0 = server.stats().denoiseSteps;
    const clients = 8, each = 2;
    const reqs = Array.from({ length: clients }, (_, c) => Array.from({ length: each }, (_, k) => ({
      prompt: `client ${c} request ${k}`, seed: 100 + c * each + k, numInferenceSteps: 3, ...(c % 2 ? { height: 32, width: 32 } : { height: 48, width: 32 }),
      response: 'json' })));
    const t0 = Date.now();
    const out = await Promise.all(reqs.map(async (list) => {
      const got = [];
      for (const b of list) {
        const r = await post(server, b);
        expect(r.status).toBe(200);
        got.push(await r.json());
      }
      return got;
    }));
    const seconds = (Date.now() - t0) / 1000;
    expect(seconds).toBeLessThan(60);
    const flat = out.flat(), bodies = reqs.flat();
    expect(flat).toHaveLength(clients * each);
    expect(flat.some((r) => r.batchSize > 1)).toBe(true);  // batching happened
    const st = server.stats();
    // batched: fewer denoising steps than one run per request
    expect(st.denoiseSteps - steps0).toBeLessThan(clients * each * 3);
    for (const [i, r] of flat.entries()) {
      const b = bodies[i];
      expect(r.seed).toBe(b.seed);
      const img = await decode(Buffer.from(r.image, 'base64'));
      expect([img.width, img.height]).toEqual([b.width, b.height]);
    }
    // a few of them again, alone (maxBatch 1 elsewhere: here one at a time): the same image up to rounding
    for (const i of [0, 3, 8]) {
      const lone = await decode(await (await post(server, { ...bodies[i], response: 'image' })).arrayBuffer());
      const batched = await decode(Buffer.from(flat[i].image, 'base64'));
      let worst = 0;
      for (let k = 0; k < lone.raw.length; k++) worst = Math.max(worst, Math.abs(lone.raw[k] - batched.raw[k]));
      expect(worst).toBeLessThanOrEqual(2);
    }
  });

  it('streams one progress event per denoising step, then the result', async () => {
    const r = await post(server, { prompt: 'a stream', seed: 3, numInferenceSteps: 5, height: 32, width: 32 }, { path: '/v1/generate/stream' });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const seen: { event: string; data: any }[] = [];
    for await (const e of events(r)) seen.push(e);
    expect(seen.map((e) => e.event)).toEqual(['queued', 'start', 'progress', 'progress', 'progress', 'progress', 'progress', 'result']);
    expect(seen.filter((e) => e.event === 'progress').map((e) => e.data)).toEqual([1, 2, 3, 4, 5].map((step) => ({ step, total: 5 })));
    const res = seen.at(-1)!.data;
    expect(res).toMatchObject({ seed: 3, width: 32, height: 32 });
    const same = Buffer.from(await (await post(server, { prompt: 'a stream', seed: 3, numInferenceSteps: 5, height: 32, width: 32 })).arrayBuffer());
    expect(Buffer.from(res.image, 'base64').equals(same)).toBe(true);
    // ?stream=1 on /v1/generate is the same
    const q = await post(server, { prompt: 'q', numInferenceSteps: 1, height: 32, width: 32 }, { path: '/v1/generate?stream=1' });
    const names = [];
    for await (const e of events(q)) names.push(e.event);
    expect(names).toEqual(['queued', 'start', 'progress', 'result']);
  });

  it('a client that disconnects mid-stream has its work stopped at the next step boundary', async () => {
    const before = server.stats();
    const ac = new AbortController();
    const r = await post(server, { prompt: 'leaving early', numInferenceSteps: 1500, height: 128, width: 128 },
      { path: '/v1/generate/stream', signal: ac.signal });
    let last = 0;
    try {
      for await (const e of events(r)) {
        if (e.event === 'progress') last = e.data.step;
        if (last >= 3) { ac.abort(); break; }
      }
    } catch { /* the abort */ }
    await until(() => device(server).inFlight === 0 && device(server).batches > before.devices.cpu.batches);
    const after = server.stats();
    expect(after.abortedRequests.running - before.abortedRequests.running).toBe(1);
    expect(after.devices.cpu.abortedBatches - before.devices.cpu.abortedBatches).toBe(1);
    // steps that finished after the server saw the client go: at most the one in flight
    expect(after.stepsAfterAbort - before.stepsAfterAbort).toBeLessThanOrEqual(1);
    const ran = after.denoiseSteps - before.denoiseSteps;
    expect(ran).toBeGreaterThanOrEqual(last);
    expect(ran).toBeLessThan(last + 10);  // not 1500
    expect(after.requests['499']).toBeGreaterThanOrEqual(1);
    // a queued request whose client leaves never runs
    const ac2 = new AbortController(), ac3 = new AbortController();
    const long = post(server, { prompt: 'long', numInferenceSteps: 1500, height: 128, width: 128 }, { path: '/v1/generate/stream', signal: ac2.signal });
    const started = (await long).body!.getReader();
    await until(() => device(server).inFlight === 1);
    const queued = post(server, { prompt: 'queued', numInferenceSteps: 2, height: 64, width: 64 }, { signal: ac3.signal }).catch((e) => e);
    await until(() => device(server).queued === 1);
    ac3.abort();
    expect(await queued).toBeInstanceOf(Error);
    await until(() => device(server).queued === 0);
    expect(server.stats().abortedRequests.queued - before.abortedRequests.queued).toBe(1);
    ac2.abort();
    await started.cancel().catch(() => undefined);
    await until(() => device(server).inFlight === 0);
  });

  it('the bounded queue: over maxQueue waiting requests, 429 with Retry-After; the accepted ones are answered', async () => {
    const s = await createServer({ generator: model, port: 0, maxQueue: 2, maxBatch: 1, maxSteps: 5000 });
    try {
      const ac = new AbortController();
      const long = await post(s, { prompt: 'hold the device', numInferenceSteps: 3000, height: 128, width: 128 }, { path: '/v1/generate/stream', signal: ac.signal });
      const it = events(long);
      await waitFor(it, 'start');
      const small = { prompt: 'small', numInferenceSteps: 2, height: 32, width: 32 };
      const accepted = [post(s, small)];
      await until(() => s.stats().devices.cpu.queued === 1);
      accepted.push(post(s, small));
      await until(() => s.stats().devices.cpu.queued === 2);
      const refused = await post(s, small);
      expect(refused.status).toBe(429);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect((await refused.json()).error).toMatchObject({ code: 'queue_full', field: null });
      expect(s.stats().devices.cpu.queued).toBe(2);
      expect(s.metrics()).toMatch(/x2i_queue_length\{device="cpu"\} 2/);
      ac.abort();  // free the device: the two queued ones run
      for (const r of await Promise.all(accepted)) {
        expect(r.status).toBe(200);
        expect((await decode(await r.arrayBuffer())).width).toBe(32);
      }
      expect(s.stats().requests['429']).toBe(1);
    } finally {
      await s.close();
    }
  });

  it('malformed requests get 400 naming the field', async () => {
    const cases: [unknown, string | null, string][] = [
      ['{"prompt": "x",', null, 'invalid_json'],
      [[1, 2], null, 'invalid_body'],
      [{ prompt: 5 }, 'prompt', 'invalid_field'],
      [{ seed: 1 }, 'prompt', 'missing_field'],
      [{ prompt: 'x', seed: -1 }, 'seed', 'invalid_field'],
      [{ prompt: 'x', seed: 1.5 }, 'seed', 'invalid_field'],
      [{ prompt: 'x', seed: '3' }, 'seed', 'invalid_field'],
      [{ prompt: 'x', height: 33 }, 'height', 'invalid_field'],
      [{ prompt: 'x', height: 0 }, 'height', 'invalid_field'],
      [{ prompt: 'x', width: 1024 }, 'width', 'invalid_field'],   // > maxImageSide 256
      [{ prompt: 'x', width: 256, height: 256 }, 'height', 'invalid_field'],   // > maxPixels
      [{ prompt: 'x', numInferenceSteps: 0 }, 'numInferenceSteps', 'invalid_field'],
      [{ prompt: 'x', numInferenceSteps: 1e9 }, 'numInferenceSteps', 'invalid_field'],
      [{ prompt: 'x', guidanceScale: 'high' }, 'guidanceScale', 'invalid_field'],
      [{ prompt: 'x', guidanceScale: 1e6 }, 'guidanceScale', 'invalid_field'],
      [{ prompt: 'x', steps: 4 }, 'steps', 'unknown_field'],
      [{ prompt: 'x', __proto__x: 1 }, '__proto__x', 'unknown_field'],
      [{ prompt: 'x', model: 'teacher' }, 'model', 'invalid_field'],
      [{ prompt: 'x', format: 'gif' }, 'format', 'invalid_field'],
      [{ prompt: 'x', response: 'xml' }, 'response', 'invalid_field'],
      [{ prompt: 'x', loraScales: { nope: 1 } }, 'loraScales.nope', 'invalid_field'],
      [{ prompt: 'x', loraScales: [1] }, 'loraScales', 'invalid_field'],
      [{ prompt: 'x', promptImages: 'abc' }, 'promptImages', 'invalid_field'],
      [{ prompt: 'x', image: 'not base64 at all!' }, 'image', 'invalid_image'],
      [{ prompt: 'x', image: Buffer.from('not an image').toString('base64') }, 'image', 'invalid_image'],
      [{ prompt: 'x', image: 12 }, 'image', 'invalid_field'],
      [{ prompt: 'x', image: { path: 'sub/in.png', extra: 1 } }, 'image.extra', 'unknown_field'],
      [{ prompt: 'x', mask: (await png(8, 8)).toString('base64') }, 'mask', 'invalid_field'],
      [{ prompt: 'x', strength: 0.5 }, 'strength', 'invalid_field'],
      [{ prompt: 'x', image: (await png(32, 32)).toString('base64'), strength: 2 }, 'strength', 'invalid_field'],
      [{ prompt: 'x', image: (await png(32, 32)).toString('base64'), strength: 0.1, numInferenceSteps: 2 }, 'strength', 'invalid_field'],
      [{ prompt: 'x', image: (await png(512, 64)).toString('base64') }, 'image', 'image_too_large'],   // a side over 256
      [{ prompt: 'x', promptImages: [(await png(210, 210)).toString('base64')] }, 'promptImages[0]', 'image_too_large'],  // over maxPixels
      [{ prompt: 'x', image: { path: '../outside.png' } }, 'image.path', 'path_not_allowed'],
      [{ prompt: 'x', image: { path: path.join(tmp, 'outside.png') } }, 'image.path', 'path_not_allowed'],
      [{ prompt: 'x', image: { path: 'link.png' } }, 'image.path', 'path_not_allowed'],          // a symlink out of the root
      [{ prompt: 'x', image: { path: 'up/outside.png' } }, 'image.path', 'path_not_allowed'],    // a linked folder out of it
      [{ prompt: 'x', image: { path: 'missing.png' } }, 'image.path', 'file_not_found'],
      [{ prompt: 'x', image: { path: 'sub' } }, 'image.path', 'invalid_field'],
    ];
    const before = server.stats().requests['400'] ?? 0;
    for (const [body, field, code] of cases) {
      const r = await post(server, body);
      const j = await r.json();
      expect([r.status, j.error?.field, j.error?.code], JSON.stringify(body).slice(0, 80)).toEqual([400, field, code]);
      expect(typeof j.error.message).toBe('string');
    }
    expect((server.stats().requests['400'] ?? 0) - before).toBe(cases.length);
    // the body limit (2 MiB): 413; a content type the service does not read: 415; an unknown route: 404
    const big = await post(server, { prompt: 'x'.repeat(3 * 2 ** 20) });
    expect([big.status, (await big.json()).error.code]).toEqual([413, 'body_too_large']);
    const text = await post(server, 'prompt=x', { headers: { 'content-type': 'text/plain' } });
    expect([text.status, (await text.json()).error.code]).toEqual([415, 'unsupported_media_type']);
    const bigUpload = new FormData();
    bigUpload.append('prompt', 'x');
    bigUpload.append('image', new Blob([Buffer.alloc(3 * 2 ** 20)]), 'big.png');
    const bu = await fetch(`${server.url}/v1/generate`, { method: 'POST', body: bigUpload });
    expect([bu.status, (await bu.json()).error.code]).toEqual([413, 'body_too_large']);
    const none = await fetch(`${server.url}/v2/nothing`);
    expect([none.status, (await none.json()).error.code]).toEqual([404, 'not_found']);
    // a server without fileRoot takes no paths
    const s = await createServer({ generator: model, port: 0 });
    try {
      const r = await post(s, { prompt: 'x', image: { path: path.join(fileRoot, 'sub', 'in.png') } });
      expect([r.status, (await r.json()).error]).toEqual([400, expect.objectContaining({ field: 'image.path', code: 'path_not_allowed' })]);
    } finally {
      await s.close();
    }
  });

  it('image-to-image from a path under the root, base64, a data: URL and a multipart upload; prompt images', async () => {
    const inPng = fs.readFileSync(path.join(fileRoot, 'sub', 'in.png'));
    const common = { prompt: 'repaint', seed: 4, numInferenceSteps: 4, strength: 0.5 };
    const viaPath = Buffer.from(await (await post(server, { ...common, image: { path: 'sub/in.png' } })).arrayBuffer());
    expect([(await decode(viaPath)).width, (await decode(viaPath)).height]).toEqual([48, 40]);  // the image's size
    const viaB64 = Buffer.from(await (await post(server, { ...common, image: inPng.toString('base64') })).arrayBuffer());
    const viaUrl = Buffer.from(await (await post(server, { ...common, image: `data:image/png;base64,${inPng.toString('base64')}` })).arrayBuffer());
    expect(viaB64.equals(viaPath) && viaUrl.equals(viaPath)).toBe(true);
    const form = new FormData();
    form.append('prompt', 'repaint');
    form.append('seed', '4');
    form.append('numInferenceSteps', '4');
    form.append('strength', '0.5');
    form.append('image', new Blob([inPng], { type: 'image/png' }), 'in.png');
    const mp = await fetch(`${server.url}/v1/generate`, { method: 'POST', body: form });
    expect(mp.status).toBe(200);
    expect(Buffer.from(await mp.arrayBuffer()).equals(viaPath)).toBe(true);
    // multipart with the JSON in `request`; an unknown upload is refused by name; a bad number too
    const form2 = new FormData();
    form2.append('request', JSON.stringify({ ...common, height: 32, width: 32 }));
    form2.append('image', new Blob([inPng], { type: 'image/png' }), 'in.png');
    const mp2 = await fetch(`${server.url}/v1/generate`, { method: 'POST', body: form2 });
    expect((await decode(await mp2.arrayBuffer())).width).toBe(32);
    const form3 = new FormData();
    form3.append('prompt', 'x');
    form3.append('picture', new Blob([inPng]), 'p.png');
    const mp3 = await fetch(`${server.url}/v1/generate`, { method: 'POST', body: form3 });
    expect([mp3.status, (await mp3.json()).error.field]).toEqual([400, 'picture']);
    const form4 = new FormData();
    form4.append('prompt', 'x');
    form4.append('seed', 'seven');
    const mp4 = await fetch(`${server.url}/v1/generate`, { method: 'POST', body: form4 });
    expect([mp4.status, (await mp4.json()).error.field]).toEqual([400, 'seed']);
    // the student reads prompt images (JSON base64 or uploads): another image than the text alone
    const text = Buffer.from(await (await post(server, { prompt: 'look', seed: 1, numInferenceSteps: 2 })).arrayBuffer());
    const withImage = await post(server, { prompt: 'look', seed: 1, numInferenceSteps: 2, promptImages: [(await png(56, 56)).toString('base64')] });
    expect(withImage.status).toBe(200);
    expect(Buffer.from(await withImage.arrayBuffer()).equals(text)).toBe(false);
    const inpaint = await post(server, { ...common, image: inPng.toString('base64'), mask: (await png(48, 40)).toString('base64') });
    expect(inpaint.status).toBe(200);
  });

  it('GET /health and Prometheus /metrics', async () => {
    const h = await fetch(`${server.url}/health`);
    expect(h.status).toBe(200);
    expect(await h.json()).toMatchObject({ status: 'ok', models: { default: { kind: 'student', device: 'cpu', dtype: 'float32' } },
      devices: { cpu: { capacity: 16 } } });
    const m = await fetch(`${server.url}/metrics`);
    expect(m.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await m.text();
    for (const name of ['x2i_queue_length{device="cpu"}', 'x2i_in_flight_requests{device="cpu"}', 'x2i_requests_total{code="200"}',
      'x2i_request_duration_seconds_bucket{le="+Inf"}', 'x2i_request_duration_seconds_count', 'x2i_images_generated_total',
      'x2i_images_per_second', 'x2i_denoise_steps_total', 'x2i_tensors', 'x2i_batches_total{device="cpu"}'])
      expect(text).toContain(name);
    // well-formed exposition: every sample line is `name{labels} number`, every name declared by TYPE
    const declared = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((x) => x[1]));
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) {
      expect(line).toMatch(/^[a-z_][a-z0-9_]*(\{[^}]*\})? -?[\d.e+-]+$/);
      const name = line.split(/[{ ]/)[0].replace(/_(bucket|sum|count)$/, '');
      expect(declared.has(name) || declared.has(line.split(/[{ ]/)[0]), line).toBe(true);
    }
    const images = Number(/^x2i_images_generated_total (\d+)/m.exec(text)![1]);
    expect(images).toBe(server.stats().imagesGenerated);
    expect(images).toBeGreaterThan(20);
  });

  it('LoRA adapters by name (loraScales), per request; teacher and student side by side on one device queue', async () => {
    const m2 = await randomServedModel();  // the same weights as `model`, its own transformer
    const flux = m2.generator.pipeline.transformer;
    const name = await flux.loadLora(path.join(golden, 'flux-lora', 'lora_diffusers.safetensors'), { adapterName: 'style' });
    // the teacher: FLUX's T5 + CLIP (random, tiny) with real tokenizers, on the same transformer and VAE
    const t5Tok = x2i.T5Tokenizer.fromPretrained(path.join(golden, 'tokenizers', 't5-like-tokenizer.json'));
    const clipTok = x2i.ClipTokenizer.fromPretrained(path.join(golden, 'tokenizers', 'clip-like-tokenizer.json'));
    const t5 = await x2i.T5Encoder.fromConfig({ model_type: 't5', vocab_size: 256, d_model: 32, d_kv: 8, d_ff: 64, num_layers: 1, num_heads: 4,
      relative_attention_num_buckets: 32, relative_attention_max_distance: 128, layer_norm_epsilon: 1e-6, feed_forward_proj: 'gated-gelu' }, { seed: 5 });
    const clip = await x2i.ClipTextEncoder.fromConfig({ vocab_size: 512, hidden_size: 24, intermediate_size: 48, num_attention_heads: 2,
      num_hidden_layers: 1, max_position_embeddings: 77, eos_token_id: clipTok.eosId, layer_norm_eps: 1e-5, hidden_act: 'quick_gelu' }, { seed: 6 });
    const teacher = new x2i.FluxPipeline({ transformer: flux, vae: m2.generator.pipeline.vae, textEncoder: clip, textEncoder2: t5,
      tokenizer: clipTok, tokenizer2: t5Tok });
    const s = await createServer({ port: 0, models: { student: m2, teacher: { generator: teacher, defaults: { height: 32, width: 32, numInferenceSteps: 3 } } } });
    try {
      const body = { prompt: 'in a style', seed: 9, height: 32, width: 32, numInferenceSteps: 3 };
      const get = async (b: object) => {
        const r = await post(s, b);
        expect(r.status).toBe(200);
        return Buffer.from(await r.arrayBuffer());
      };
      const plain = Buffer.from(await (await post(server, body)).arrayBuffer());  // `model`: no adapter
      const adapter = await get(body);                                             // the adapter at its own scale, 1
      const off = await get({ ...body, loraScales: { [name]: 0 } });
      const on = await get({ ...body, loraScales: { [name]: 1 } });
      expect(off.equals(plain)).toBe(true);
      expect(adapter.equals(plain)).toBe(false);
      expect(on.equals(adapter)).toBe(true);
      // different scales never share a batch
      const both = await Promise.all([post(s, { ...body, loraScales: { [name]: 0 } }), post(s, body)]);
      expect(both.map((r) => r.headers.get('x-x2i-batch-size'))).toEqual(['1', '1']);
      // the teacher: text through T5 + CLIP; the student is the default model
      const t = await post(s, { prompt: 'a teacher prompt', model: 'teacher', seed: 2 });
      expect(t.status).toBe(200);
      expect((await decode(await t.arrayBuffer())).width).toBe(32);
      const direct = await teacher.generate({ prompt: 'a teacher prompt', seed: 2, height: 32, width: 32, numInferenceSteps: 3 });
      const again = Buffer.from(await (await post(s, { prompt: 'a teacher prompt', model: 'teacher', seed: 2 })).arrayBuffer());
      expect(again.equals(await direct.toPng(0))).toBe(true);
      direct.images.dispose();
      const ti = await post(s, { prompt: 'x', model: 'teacher', promptImages: [(await png(28, 28)).toString('base64')] });
      expect([ti.status, (await ti.json()).error.field]).toEqual([400, 'promptImages']);
      expect(Object.keys(s.stats().devices)).toEqual(['cpu']);
      expect((await (await fetch(`${s.url}/health`)).json()).models).toMatchObject({ student: { kind: 'student', loraAdapters: ['style'] },
        teacher: { kind: 'teacher' } });
    } finally {
      await s.close();
      m2.dispose();
      t5.dispose();
      clip.dispose();
    }
  });

  it('embedded: the routes on an existing Fastify app under a prefix, and server.handler in a node:http server', async () => {
    const { default: Fastify } = await import('fastify');
    const app = Fastify();
    app.get('/hello', async () => ({ hello: 'world' }));
    const s = await createServer({ generator: model, app, prefix: '/x2i' });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    try {
      expect(s.url).toBeUndefined();
      expect(await (await fetch(`${base}/hello`)).json()).toEqual({ hello: 'world' });
      const r = await fetch(`${base}/x2i/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'embedded', height: 32, width: 32, numInferenceSteps: 1 }) });
      expect(r.status).toBe(200);
      expect((await decode(await r.arrayBuffer())).width).toBe(32);
      expect((await fetch(`${base}/x2i/health`)).status).toBe(200);
    } finally {
      await s.close();
      await app.close();
    }
    const { createServer: httpServer } = await import('node:http');
    const s2 = await createServer({ generator: model, listen: false });
    const h = httpServer((req, res) => {
      if (req.url?.startsWith('/x2i/')) { req.url = req.url.slice(4); s2.handler(req, res); return; }
      res.end('mine');
    });
    await new Promise<void>((r) => h.listen(0, '127.0.0.1', r));
    try {
      const port = (h.address() as { port: number }).port;
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe('mine');
      const r = await fetch(`http://127.0.0.1:${port}/x2i/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'mounted', height: 32, width: 32, numInferenceSteps: 1 }) });
      expect(r.status).toBe(200);
    } finally {
      await s2.close();
      await new Promise((r) => h.close(r));
    }
  });

  it('close(): queued requests get 503, the running one finishes, new ones are refused', async () => {
    const s = await createServer({ generator: model, port: 0, maxBatch: 1, maxSteps: 5000 });
    const long = await post(s, { prompt: 'finish me', numInferenceSteps: 60, height: 64, width: 64 }, { path: '/v1/generate/stream' });
    const it = events(long);
    await waitFor(it, 'start');
    const queued = post(s, { prompt: 'queued', numInferenceSteps: 2, height: 32, width: 32 });
    await until(() => s.stats().devices.cpu.queued === 1);
    const closed = s.close();
    const q = await queued;
    expect([q.status, q.headers.get('retry-after'), (await q.json()).error.code]).toEqual([503, '5', 'shutting_down']);
    const rest: string[] = [];
    for await (const e of it) rest.push(e.event);
    expect(rest.at(-1)).toBe('result');
    await closed;
    await expect(post(s, { prompt: 'late' })).rejects.toThrow();  // the listener is closed
    expect(s.closing).toBe(true);
  });

  it('x2i serve --tiny in a child process: SIGTERM finishes the running request, refuses queued and new ones (503), exits 0', async () => {
    const child: ChildProcess = spawn(process.execPath, ['--import', path.join(root, 'test', 'fixtures', 'server-ts-register.mjs'),
      path.join(root, 'test', 'fixtures', 'server-child.mjs'), '--tiny', '--port', '0', '--max-batch', '1', '--max-steps', '5000'],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => { stderr += d; });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await until(() => /serving .* at (http:\S+)/.test(stderr), 60_000);
      const url = /serving .* at (http:\S+)/.exec(stderr)![1];
      const s = { url } as X2IServer;
      const long = await post(s, { prompt: 'in flight', numInferenceSteps: 120, height: 64, width: 64 }, { path: '/v1/generate/stream' });
      const it = events(long);
      await waitFor(it, 'start');
      const queued = [post(s, { prompt: 'q1', numInferenceSteps: 2 }), post(s, { prompt: 'q2', numInferenceSteps: 2 })];
      await until(async () => (await (await fetch(`${url}/health`)).json()).devices.cpu.queued === 2);
      child.kill('SIGTERM');
      for (const q of queued) {
        const r = await q;
        expect([r.status, (await r.json()).error.code]).toEqual([503, 'shutting_down']);
      }
      const late = await post(s, { prompt: 'late', numInferenceSteps: 2 }).catch((e) => e);
      if (late instanceof Response) expect(late.status).toBe(503);  // or refused outright once the listener has closed
      const rest: { event: string; data: any }[] = [];
      for await (const e of it) rest.push(e);
      expect(rest.at(-1)?.event).toBe('result');
      expect((await decode(Buffer.from(rest.at(-1)!.data.image, 'base64'))).width).toBe(64);
      expect(await exited).toBe(0);
      expect(stderr).toMatch(/SIGTERM: finishing 1 running request\(s\), refusing 2 queued/);
      expect(stderr).toMatch(/drained/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 120_000);

  it('x2i serve: bad flags are refused by name before any model loads', async () => {
    const stderr = process.stderr.write;
    let said = '';
    process.stderr.write = ((chunk: string) => { said += chunk; return true; }) as typeof process.stderr.write;
    try {
      expect(await serveCommand([])).toBe(2);
      expect(said).toMatch(/give --flux .* or --tiny/);
      expect(await serveCommand(['--tiny', '--flux', 'x'])).toBe(2);
      expect(await serveCommand(['--random', 'huge'])).toBe(2);
      expect(await serveCommand(['--flux', 'f', '--mllm', 'm'])).toBe(2);
      expect(said).toMatch(/needs both --mllm and --alignnet/);
    } finally {
      process.stderr.write = stderr;
    }
    await expect(serveCommand(['--tiny', '--port', 'eighty'])).rejects.toThrow(/--port: expected a number/);
    await expect(serveCommand(['--tiny', '--port', '70000'])).rejects.toThrow(/--port/);
    await expect(serveCommand(['--tiny', '--max-queue', '-1'])).rejects.toThrow(/--max-queue/);
    await expect(serveCommand(['--tiny', '--height', '30'])).rejects.toThrow(/--height: expected a positive multiple of 4/);
    await expect(serveCommand(['--tiny', '--file-root', path.join(tmp, 'nope')])).rejects.toThrow(/--file-root/);
    await expect(serveCommand(['--flux', path.join(tmp, 'nope')])).rejects.toThrow(/--flux: .*no such file/);
    await expect(serveCommand(['--tiny', '--port', String(server.port)])).rejects.toThrow(/--port: 127\.0\.0\.1:\d+ is in use/);
  });

  it('rejects bad options by name', async () => {
    await expect(createServer({})).rejects.toThrow(/give a generator/);
    await expect(createServer({ generator: {} as never })).rejects.toThrow(/expected an X2IGenerator, a FluxPipeline/);
    await expect(createServer({ generator: model, maxQueue: -1 })).rejects.toThrow(/maxQueue/);
    await expect(createServer({ generator: model, maxBatch: 0 })).rejects.toThrow(/maxBatch/);
    await expect(createServer({ generator: model, fileRoot: path.join(tmp, 'nope') })).rejects.toThrow(/fileRoot/);
    await expect(createServer({ generator: { ...model, defaults: { height: 30 } } })).rejects.toThrow(/defaults\.height/);
    const bare = new x2i.FluxPipeline({ transformer: model.generator.pipeline.transformer, vae: model.generator.pipeline.vae });
    await expect(createServer({ generator: bare })).rejects.toThrow(/needs textEncoder \(CLIP\) and textEncoder2 \(T5\)/);
  });

  it('memory is back to its baseline after every request: every tensor disposed, none left to the garbage collector', async () => {
    await until(() => device(server).inFlight === 0 && device(server).queued === 0);
    expect(x2i.memory().tensors).toBe(baseline);  // before any collection: disposed, not collected
    await settleGc();
    expect(x2i.memory().tensors).toBe(baseline);
  });
});
