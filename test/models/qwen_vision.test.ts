import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { QwenVLEncoder, preprocessImages, preprocessVideo, smartResize } from '../../lib/index.js';
import { roundHalfEven } from '../../lib/models/qwen_vision.js';
import { golden } from '../helpers.js';

const img = (w: number, h: number, f: (x: number, y: number, c: number) => number) => {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) data[(y * w + x) * 3 + c] = f(x, y, c);
  return { data, width: w, height: h };
};

describe('Qwen2-VL preprocessing', () => {
  it('smart_resize: multiples of 28, banker\'s rounding, pixel bounds, aspect ratio', () => {
    expect(roundHalfEven(2.5)).toBe(2);
    expect(roundHalfEven(3.5)).toBe(4);
    expect(smartResize(56, 56)).toEqual({ height: 56, width: 56 });
    expect(smartResize(70, 70)).toEqual({ height: 56, width: 56 });      // 70/28 = 2.5 → 2 (ties to even)
    expect(smartResize(98, 98)).toEqual({ height: 112, width: 112 });    // 3.5 → 4
    expect(smartResize(1080, 1920, 28, 3136, 128 * 128)).toEqual({ height: 84, width: 168 });
    expect(smartResize(10, 10)).toEqual({ height: 56, width: 56 });      // raised to min_pixels
    expect(() => smartResize(10, 3000)).toThrow(/aspect ratio/);
  });

  it('patchify: each row is one 14×14 patch (C, T, 14, 14), rows grouped by 2×2 merge units', async () => {
    // value = row index of the 14-px patch in the image (y/14) × 16 + column index (x/14), the same on all channels
    const im = img(56, 56, (x, y) => Math.floor(y / 14) * 16 + Math.floor(x / 14));
    const r = await preprocessImages([im]);
    expect(r.imageGridThw.shape).toEqual([1, 3]);
    expect(Array.from(await r.imageGridThw.toArray() as BigInt64Array, Number)).toEqual([1, 4, 4]);
    expect(r.pixelValues.shape).toEqual([16, 1176]);
    expect(r.imageTokens).toEqual([4]);
    const v = await r.pixelValues.toArray() as Float32Array;
    const [mean, std] = [0.48145466, 0.26862954];
    const patchOf = (row: number) => Math.round((v[row * 1176] * std + mean) * 255) + 0;  // + 0: no -0
    // merge unit (0,0): patches (0,0) (0,1) (1,0) (1,1); unit (0,1): (0,2) (0,3) (1,2) (1,3); ...
    expect(Array.from({ length: 16 }, (_, i) => patchOf(i))).toEqual([0, 1, 16, 17, 2, 3, 18, 19, 32, 33, 48, 49, 34, 35, 50, 51]);
  });

  it('an image through preprocessing runs through the model (4 merged tokens)', async () => {
    using m = await QwenVLEncoder.fromPretrained(path.join(golden, 'qwen2_5_vl'));
    const io = await x2i.loadSafetensors(path.join(golden, 'qwen2_5_vl', 'io.safetensors'));
    const r = await preprocessImages([img(60, 50, (x, y, c) => (x * 3 + y * 5 + c * 70) % 256)]);
    const out = await m.forward({ inputIds: io['image.input_ids'], pixelValues: r.pixelValues, imageGridThw: r.imageGridThw });
    expect(out.hiddenStates.shape).toEqual([1, 4, 13, 64]);
    expect(Array.from(await out.hiddenStates.toArray() as Float32Array).every(Number.isFinite)).toBe(true);
  });

  it('video: frames in temporal pairs, an odd count repeats the last; RGBA is accepted', async () => {
    const frames = [0, 1, 2].map((k) => img(56, 56, (x, y, c) => (x + y + c + 40 * k) % 256));
    const v = await preprocessVideo(frames);
    expect(Array.from(await v.videoGridThw.toArray() as BigInt64Array, Number)).toEqual([2, 4, 4]);
    expect(v.videoTokens).toEqual([8]);
    const rgba = { data: new Uint8Array(56 * 56 * 4).fill(200), width: 56, height: 56, channels: 4 };
    expect((await preprocessImages([rgba])).pixelValues.shape).toEqual([16, 1176]);
    await expect(preprocessImages([{ data: new Uint8Array(10), width: 56, height: 56 }])).rejects.toThrow(/10 bytes, expected 56×56×3/);
  });
});

describe('encodePrompt (tokenize, preprocess, prefill in one call)', () => {
  // a stand-in tokenizer whose ids fit the tiny golden model's vocabulary (300)
  const fake = {
    x2iPrompt: (t: string) => `X:${t}`,
    applyChatTemplate: (m: { content: unknown }[]) => JSON.stringify(m),
    encode(text: string, opts: { maxLength?: number; imageTokens?: number[][] }) {
      const ids: bigint[] = [];
      if (text.startsWith('[')) {
        ids.push(5n, 292n);
        for (let i = 0; i < (opts.imageTokens?.[0]?.[0] ?? 0); i++) ids.push(290n);
        ids.push(293n);
      }
      for (const ch of text.slice(0, 6)) ids.push(BigInt(ch.charCodeAt(0) % 280));
      const L = opts.maxLength ?? 512;
      const pad = L - ids.length;
      return { inputIds: x2i.Tensor.fromArray(BigInt64Array.from([...Array(pad).fill(0n), ...ids]), [1, L]),
        attentionMask: x2i.Tensor.fromArray(BigInt64Array.from([...Array(pad).fill(0n), ...ids.map(() => 1n)]), [1, L]) };
    },
  } as unknown as x2i.QwenTokenizer;

  it('text and image prompts equal the manual steps', async () => {
    using m = await QwenVLEncoder.fromPretrained(path.join(golden, 'qwen2_5_vl'));
    const a = await m.encodePrompt('a cat', { tokenizer: fake, maxLength: 16 });
    const e = fake.encode('X:a cat', { maxLength: 16 });
    const b = await m.forward({ inputIds: e.inputIds, attentionMask: e.attentionMask });
    expect(await a.hiddenStates.toArray()).toEqual(await b.hiddenStates.toArray());
    const picture = img(56, 56, (x, y, c) => (x * 7 + y + c * 50) % 256);
    const withImage = await m.encodePrompt({ text: 'smile', images: [picture] }, { tokenizer: fake, maxLength: 24 });
    const pre = await preprocessImages([picture]);
    const e2 = fake.encode(fake.applyChatTemplate([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'smile' }] }]),
      { maxLength: 24, imageTokens: [pre.imageTokens] });
    const b2 = await m.forward({ inputIds: e2.inputIds, attentionMask: e2.attentionMask, pixelValues: pre.pixelValues, imageGridThw: pre.imageGridThw });
    expect(await withImage.hiddenStates.toArray()).toEqual(await b2.hiddenStates.toArray());
    await expect(m.encodePrompt({}, { tokenizer: fake })).rejects.toThrow(/a string or \{ text\?, images\?, video\? \}/);
  });
});
