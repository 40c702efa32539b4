// CLIP's vision tower and CLIP score against transformers (float32): test/fixtures/clip holds a tiny random
// CLIPModel in the released layout and the reference outputs computed on the GPU machine by
// test/fixtures/clip/make_reference.py (transformers 5.17: CLIPVisionModel, the projections, CLIPImageProcessor).
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { ClipTextEncoder, Tensor } from '../../lib/index.js';
import { ClipVisionEncoder, preprocessClip } from '../../lib/models/clip_vision.js';
import { ClipScorer } from '../../lib/sample/evaluate.js';
import { decodeRgb } from '../../lib/core/image_decode.js';
import { relErr, root } from '../helpers.js';


const dir = path.join(root, 'test', 'fixtures', 'clip');
let io: Record<string, Tensor>;
let vision: ClipVisionEncoder;

beforeAll(async () => {
  io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
  vision = await ClipVisionEncoder.fromPretrained(dir);
});
afterAll(() => {
  vision.dispose();
  for (const t of Object.values(io)) t.dispose();
});

describe('ClipVisionEncoder (transformers CLIPVisionModel)', () => {
  it('the whole CLIPModel folder: last hidden state, pooled output and image embeddings', async () => {
    const out = await vision.forward({ pixelValues: io.pixel_values });
    expect(out.lastHiddenState.shape).toEqual([2, 26, 32]);
    expect(await relErr(out.lastHiddenState, io['vision.last_hidden_state'])).toBeLessThan(1e-4);
    expect(await relErr(out.poolerOutput, io['vision.pooler_output'])).toBeLessThan(1e-4);
    expect(await relErr(out.imageEmbeds!, io['vision.image_embeds'])).toBeLessThan(1e-4);
    for (const t of [out.lastHiddenState, out.poolerOutput, out.imageEmbeds!]) t.dispose();
  });

  it('preprocesses as CLIPImageProcessor (shortest edge, Pillow bicubic, centre crop, normalisation)', async () => {
    expect(vision.processor).toMatchObject({ shortestEdge: 30, cropSize: [30, 30] });
    const img = await decodeRgb(path.join(dir, 'image.png'));
    const px = await vision.preprocess([img]);
    expect(px.shape).toEqual([1, 3, 30, 30]);
    // Pillow's bicubic (the PIL processor) vs transformers 5's default torchvision path: at most one 8-bit level apart,
    // in a few pixels (24 of 2700 values here), identical elsewhere
    const [a, b] = [await px.toArray() as Float32Array, await io['image.pixel_values'].toArray() as Float32Array];
    const std = vision.processor.imageStd;
    let off = 0;
    a.forEach((v, i) => {
      const levels = Math.abs(v - b[i]) * std[Math.floor(i / 900)] * 255;
      expect(levels).toBeLessThan(1 + 1e-3);
      if (levels > 1e-3) off++;
    });
    expect(off).toBeLessThan(a.length * 0.02);
    px.dispose();
    await expect(preprocessClip([])).rejects.toThrow(/images/);
  });

  it('refuses pixel values of the wrong size, naming the expected shape', async () => {
    const bad = await x2i.randn([1, 3, 32, 32]);
    await expect(vision.forward({ pixelValues: bad })).rejects.toThrow(/pixelValues must be floating \[B, 3, 30, 30\], found float32 \[1, 3, 32, 32\]/);
    bad.dispose();
  });
});

describe('CLIP score', () => {
  it('the text projection of the same folder, and cosines equal to CLIPModel.logits_per_image / logit_scale.exp()', async () => {
    const text = await ClipTextEncoder.fromPretrained(dir);
    const t = await text.forward({ inputIds: io.input_ids });
    expect(await relErr(t.textEmbeds!, io['text.text_embeds'])).toBeLessThan(1e-4);
    for (const x of [t.lastHiddenState, t.pooledOutput, t.hiddenStates, t.textEmbeds!]) x.dispose();
    const scorer = new ClipScorer({ text, vision });
    const w = await x2i.loadSafetensors(path.join(dir, 'model.safetensors'));
    const scale = Math.exp((await w.logit_scale.toArray() as Float32Array)[0]);
    for (const v of Object.values(w)) v.dispose();
    // the embeddings of the reference pixel values, through the towers directly
    const v = await vision.forward({ pixelValues: io.pixel_values });
    const [a] = [v.imageEmbeds!];
    const norm = async (e: Tensor) => {
      const [n, d] = e.shape, all = await e.toArray() as Float32Array;
      return Array.from({ length: n }, (_, i) => { const r = all.slice(i * d, (i + 1) * d), l = Math.hypot(...r); return r.map((x) => x / l); });
    };
    const ia = await norm(a), ta = await scorer.embedTexts(io.input_ids);
    const logits = await io.logits_per_image.toArray() as Float32Array;
    for (let i = 0; i < 2; i++)
      for (let j = 0; j < 2; j++) {
        const cos = ia[i].reduce((s, x, k) => s + x * ta[j][k], 0);
        expect(Math.abs(cos * scale - logits[i * 2 + j])).toBeLessThan(1e-4 * Math.max(1, Math.abs(logits[i * 2 + j])));
      }
    for (const x of [v.lastHiddenState, v.poolerOutput, a]) x.dispose();
    // score(): images through the processor, 100 · max(cos, 0) per pair
    const img = await decodeRgb(path.join(dir, 'image.png'));
    const ids = Tensor.fromArray(new BigInt64Array([97n, 5n, 17n, 33n, 98n, 98n, 98n]), [1, 7]);
    const [s] = await scorer.score([img], ids);
    const [e] = await scorer.embedImages([img]), [u] = await scorer.embedTexts(ids);
    expect(s).toBeCloseTo(100 * Math.max(0, e.reduce((acc, x, k) => acc + x * u[k], 0)), 4);
    expect(Math.hypot(...e)).toBeCloseTo(1, 5);
    await expect(scorer.score([img, img], ids)).rejects.toThrow(/2 images for 1 prompts/);
    ids.dispose();
    text.dispose();
  });
});
