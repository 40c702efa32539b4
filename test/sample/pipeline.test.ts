import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AutoencoderKL, FlowMatchEulerScheduler, FluxPipeline, FluxTransformer } from '../../lib/index.js';
import { golden, settleGc } from '../helpers.js';

let pipe: FluxPipeline;
let io: Record<string, x2i.Tensor>;
beforeAll(async () => {
  io = await x2i.loadSafetensors(path.join(golden, 'pipeline', 'io.safetensors'));
  const { config } = JSON.parse(fs.readFileSync(path.join(golden, 'scheduler', 'cases.json'), 'utf8'));
  pipe = new FluxPipeline({ transformer: await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer')),
    vae: await AutoencoderKL.fromPretrained(path.join(golden, 'vae')), scheduler: new FlowMatchEulerScheduler(config) });
});
afterAll(() => { pipe.transformer.dispose(); pipe.vae.dispose(); });

const base = () => ({ promptEmbeds: io.prompt_embeds, pooledPromptEmbeds: io.pooled_prompt_embeds, height: 32, width: 32,
  numInferenceSteps: 4, guidanceScale: 3.5 });

describe('FluxPipeline', () => {
  it('matches diffusers: every step\'s latents and the image', async () => {
    const r = await pipe.generate({ ...base(), latents: io.latents, returnStepLatents: true });
    expect(r.images.shape).toEqual([1, 3, 32, 32]);
    expect(await x2i.relativeError(r.stepLatents!, io.step_latents)).toBeLessThan(1e-3);
    expect(await x2i.relativeError(r.images, io.image)).toBeLessThan(1e-3);
    const png = await r.toPng();
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    const { default: sharp } = await import('sharp');
    const meta = await sharp(png).metadata();
    expect([meta.width, meta.height, meta.channels]).toEqual([32, 32, 3]);
    const raw = await sharp(png).raw().toBuffer();
    const want = Array.from(await io.image.toArray() as Float32Array);
    expect(raw[0]).toBe(Math.round(want[0] * 255));                  // pixel (0,0) red
    expect(raw[1]).toBe(Math.round(want[32 * 32] * 255));            // pixel (0,0) green
    expect((await x2i.encodeImage(r.images, 0, 'jpeg')).subarray(0, 2)).toEqual(Buffer.from([0xff, 0xd8]));
  });

  it('seeded noise is reproducible; progress events; abort between steps', async () => {
    const events: number[] = [];
    const a = await pipe.generate({ ...base(), seed: 7, onProgress: (p) => events.push(p.step) });
    const b = await pipe.generate({ ...base(), seed: 7 });
    const c = await pipe.generate({ ...base(), seed: 8 });
    expect(await a.images.toArray()).toEqual(await b.images.toArray());
    expect(await a.images.toArray()).not.toEqual(await c.images.toArray());
    expect(events).toEqual([1, 2, 3, 4, 4]);
    const ac = new AbortController();
    const p = pipe.generate({ ...base(), seed: 1, onProgress: (e) => { if (e.step === 2) ac.abort(new Error('stop')); }, signal: ac.signal });
    await expect(p).rejects.toThrow('stop');
    await settleGc();
    const before = x2i.memory().tensors;
    const ac2 = new AbortController();
    await expect(pipe.generate({ ...base(), seed: 2, onProgress: (e) => { if (e.step === 3) ac2.abort(); }, signal: ac2.signal })).rejects.toThrow();
    await settleGc();
    expect(x2i.memory().tensors).toBe(before);  // an aborted run leaks nothing
  });

  it('no tensor leak across 50 generate calls', async () => {
    await settleGc();
    const before = x2i.memory().tensors;
    for (let i = 0; i < 50; i++) (await pipe.generate({ ...base(), seed: i, numInferenceSteps: 2 })).images.dispose();
    await settleGc();
    expect(x2i.memory().tensors).toBe(before);
  });
});

describe('FluxPipeline with text encoders', () => {
  it('a prompt goes through T5 (sequence) and CLIP (pooled), as passing their embeddings does', async () => {
    const t5 = await x2i.T5Encoder.fromPretrained(path.join(golden, 't5-encoder'));
    const tok2 = { encode: (text: string | string[], o?: { maxLength?: number }) => {
      const L = Math.min(o?.maxLength ?? 7, 7);
      const ids = BigInt64Array.from({ length: L }, (_, i) => BigInt((String(text).charCodeAt(i % String(text).length) + i) % 120));
      return { inputIds: x2i.Tensor.fromArray(ids, [1, L]), attentionMask: x2i.Tensor.fromArray(new BigInt64Array(L).fill(1n), [1, L]) };
    } };
    const pooled = await x2i.randn([1, 24], { seed: 9 });
    const clipStub = { encodePrompt: async () => ({ lastHiddenState: await x2i.randn([1, 2, 2]), hiddenStates: await x2i.randn([1, 1, 2, 2]),
      pooledOutput: await pooled.to({}) }) } as unknown as x2i.ClipTextEncoder;
    const p2 = new FluxPipeline({ transformer: pipe.transformer, vae: pipe.vae, scheduler: pipe.scheduler, textEncoder: clipStub,
      textEncoder2: t5, tokenizer2: tok2 });
    const a = await p2.generate({ prompt: 'a red circle', height: 32, width: 32, numInferenceSteps: 2, seed: 3 });
    const e = await t5.forward({ inputIds: tok2.encode('a red circle', { maxLength: 512 }).inputIds });
    const b = await pipe.generate({ promptEmbeds: e.lastHiddenState, pooledPromptEmbeds: pooled, height: 32, width: 32, numInferenceSteps: 2, seed: 3 });
    expect(await a.images.toArray()).toEqual(await b.images.toArray());
    await expect(pipe.generate({ prompt: 'x', height: 32, width: 32 })).rejects.toThrow(/needs textEncoder \(CLIP\) and textEncoder2 \(T5\)/);
    t5.dispose();
  });

  it("the two encoders run together; when one fails, the other's outputs are disposed and its error is thrown", async () => {
    let inFlight = 0, most = 0;
    const slow = async <T>(make: () => Promise<T>) => {
      most = Math.max(most, ++inFlight);
      await new Promise((r) => setTimeout(r, 20));
      inFlight--;
      return make();
    };
    const t5Stub = { encodePrompt: () => slow(async () => ({ lastHiddenState: await x2i.randn([1, 3, 4]), hiddenStates: await x2i.randn([1, 2, 3, 4]) })) };
    const clipOk = { encodePrompt: () => slow(async () => ({ lastHiddenState: await x2i.randn([1, 2, 2]), hiddenStates: await x2i.randn([1, 1, 2, 2]),
      pooledOutput: await x2i.randn([1, 2]) })) };
    const clipBad = { encodePrompt: () => slow(async () => { throw new x2i.X2IError('clip broke', 'ERR_INVALID_ARG'); }) };
    const make = (clip: object) => new FluxPipeline({ transformer: pipe.transformer, vae: pipe.vae,
      textEncoder: clip as x2i.ClipTextEncoder, textEncoder2: t5Stub as unknown as x2i.T5Encoder });
    await settleGc();
    const before = x2i.memory().tensors;
    const e = await make(clipOk).encodePrompt('x');
    expect(most).toBe(2);
    expect([e.promptEmbeds.shape, e.pooledPromptEmbeds.shape]).toEqual([[1, 3, 4], [1, 2]]);
    e.promptEmbeds.dispose();
    e.pooledPromptEmbeds.dispose();
    await expect(make(clipBad).encodePrompt('x')).rejects.toThrow(/clip broke/);
    await settleGc();
    expect(x2i.memory().tensors).toBe(before);
  });
});
