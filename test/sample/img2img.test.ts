import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AutoencoderKL, FlowMatchEulerScheduler, FluxPipeline, FluxTransformer, outpaintCanvas } from '../../lib/index.js';
import { golden, settleGc, tmpDir } from '../helpers.js';

// The golden tiny FLUX (16 latent channels packed: 4 VAE channels) and the golden tiny VAE (factor 2): sizes are
// multiples of 4.
const S = 64;
let pipe: FluxPipeline;
let io: Record<string, x2i.Tensor>;
const tmp = tmpDir();

/** A smooth test picture: gradients and a disc, interleaved RGB. */
function picture(w = S, h = S): x2i.RgbImage {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const o = (y * w + x) * 3, disc = (x - w / 3) ** 2 + (y - h / 2) ** 2 < (h / 4) ** 2;
      data[o] = Math.round((255 * x) / (w - 1)); data[o + 1] = disc ? 230 : Math.round((255 * y) / (h - 1)); data[o + 2] = disc ? 20 : 128;
    }
  return { data, width: w, height: h, channels: 3 };
}

/** [1, 3, H, W] float in [0, 1] of an RgbImage (exactly the 8-bit values / 255). */
function toTensor(img: x2i.RgbImage, shape?: number[]): x2i.Tensor {
  const { width: w, height: h } = img, c = img.channels ?? 3;
  const f = new Float32Array(3 * w * h);
  for (let ch = 0; ch < 3; ch++) for (let i = 0; i < w * h; i++) f[ch * w * h + i] = img.data[i * c + ch] / 255;
  return x2i.Tensor.fromArray(f, shape ?? [1, 3, h, w]);
}

const base = () => ({ promptEmbeds: io.prompt_embeds, pooledPromptEmbeds: io.pooled_prompt_embeds, height: S, width: S,
  numInferenceSteps: 4, guidanceScale: 3.5 });

async function arr(t: x2i.Tensor): Promise<Float32Array> { return await t.toArray() as Float32Array; }

/** Max |a − b| over the columns [x0, x1) of [1, 3, H, W] images. */
function maxDiffCols(a: Float32Array, b: Float32Array, H: number, W: number, x0: number, x1: number): number {
  let m = 0;
  for (let c = 0; c < 3; c++) for (let y = 0; y < H; y++) for (let x = x0; x < x1; x++) {
    const i = (c * H + y) * W + x;
    m = Math.max(m, Math.abs(a[i] - b[i]));
  }
  return m;
}
const meanAbs = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + Math.abs(v - b[i]), 0) / a.length;

/** A mask [H, W] image: white (repaint) over the columns ≥ from. */
function rightMask(from: number, w = S, h = S): x2i.RgbImage {
  const data = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) for (let x = from; x < w; x++) data[y * w + x] = 255;
  return { data, width: w, height: h, channels: 1 };
}

beforeAll(async () => {
  io = await x2i.loadSafetensors(path.join(golden, 'pipeline', 'io.safetensors'));
  const { config } = JSON.parse(fs.readFileSync(path.join(golden, 'scheduler', 'cases.json'), 'utf8'));
  pipe = new FluxPipeline({ transformer: await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer')),
    vae: await AutoencoderKL.fromPretrained(path.join(golden, 'vae')), scheduler: new FlowMatchEulerScheduler(config) });
});
afterAll(() => { pipe.transformer.dispose(); pipe.vae.dispose(); fs.rmSync(tmp, { recursive: true, force: true }); });

describe('FluxPipeline image-to-image', () => {
  it('strength 1 is text-to-image from the same noise, exactly', async () => {
    const img = picture();
    const t2i = await pipe.generate({ ...base(), seed: 5 });
    const i2i = await pipe.generate({ ...base(), seed: 5, image: img, strength: 1 });
    expect(await arr(i2i.images)).toEqual(await arr(t2i.images));
    const noise = await x2i.randn([1, (S / 4) * (S / 4), 16], { seed: 11 });
    const a = await pipe.generate({ ...base(), latents: noise });
    const b = await pipe.generate({ ...base(), latents: noise, image: img, strength: 1 });
    expect(await arr(b.images)).toEqual(await arr(a.images));
    for (const t of [t2i.images, i2i.images, a.images, b.images, noise]) t.dispose();
  });

  it('strength 0.5 runs half the steps and stays closer to the image than strength 1', async () => {
    const img = picture(), want = toTensor(img);
    const events: Array<[number, number, string]> = [];
    const half = await pipe.generate({ ...base(), numInferenceSteps: 8, seed: 3, image: img, strength: 0.5,
      onProgress: (p) => events.push([p.step, p.total, p.phase]) });
    expect(events).toEqual([[1, 4, 'denoise'], [2, 4, 'denoise'], [3, 4, 'denoise'], [4, 4, 'denoise'], [4, 4, 'decode']]);
    const n: number[] = [];
    const dflt = await pipe.generate({ ...base(), numInferenceSteps: 10, seed: 3, image: img, onProgress: (p) => n.push(p.step) });
    expect(n.length - 1).toBe(6);  // default strength 0.6: ⌊10 · 0.6⌋ steps
    const full = await pipe.generate({ ...base(), numInferenceSteps: 8, seed: 3, image: img, strength: 1 });
    // the tiny random VAE does not reconstruct: "the image" is its round trip (the keep-everything mask gives it)
    const rt = await pipe.generate({ ...base(), seed: 3, image: img, mask: rightMask(S) });
    const w = await arr(rt.images);
    expect(meanAbs(await arr(half.images), w)).toBeLessThan(meanAbs(await arr(full.images), w));
    for (const t of [half.images, dflt.images, full.images, want, rt.images]) t.dispose();
  });

  it('the image decides the default size (down to a multiple of 2 × the VAE factor: here 4)', async () => {
    const r = await pipe.generate({ ...base(), height: undefined, width: undefined, seed: 1, image: picture(42, 37), strength: 0.5 });
    expect(r.images.shape).toEqual([1, 3, 36, 40]);
    r.images.dispose();
  });

  it('Buffer, path, RgbImage and Tensor inputs agree; EXIF orientation and alpha are honoured', async () => {
    const img = picture();
    const png = await sharp(Buffer.from(img.data), { raw: { width: S, height: S, channels: 3 } }).png().toBuffer();
    const file = path.join(tmp, 'in.png');
    fs.writeFileSync(file, png);
    const t4 = toTensor(img), t3 = toTensor(img, [3, S, S]);
    const outs: Float32Array[] = [];
    for (const image of [img, png, file, t4, t3]) {
      const r = await pipe.generate({ ...base(), seed: 2, image, strength: 0.5, mask: rightMask(32) });
      outs.push(await arr(r.images));
      r.images.dispose();
    }
    for (const o of outs.slice(1)) expect(o).toEqual(outs[0]);
    t4.dispose(); t3.dispose();
    // a 64×32 picture stored with EXIF orientation 6 (rotate 90° clockwise to show) is 32 wide, 64 tall
    const wide = picture(64, 32);
    const jpeg = await sharp(Buffer.from(wide.data), { raw: { width: 64, height: 32, channels: 3 } }).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    const c = await outpaintCanvas(jpeg, {});
    expect([c.image.width, c.image.height]).toEqual([32, 64]);
    // transparent pixels become white
    const rgba = { data: new Uint8Array(8 * 8 * 4), width: 8, height: 8, channels: 4 };
    const flat = await outpaintCanvas(rgba, {});
    expect(Array.from(flat.image.data).every((v) => v === 255)).toBe(true);
  });
});

describe('FluxPipeline inpainting', () => {
  it('keeps the unmasked region: the image\'s latents exactly, its pixels as the VAE round trip', async () => {
    const img = picture();
    const opts = { ...base(), image: img, strength: 1, mask: rightMask(32), returnStepLatents: true };
    const a = await pipe.generate({ ...opts, seed: 1 });
    const b = await pipe.generate({ ...opts, seed: 2 });
    // an all-black mask keeps everything: decode(encode(image))
    const keep = await pipe.generate({ ...base(), image: img, strength: 0.5, mask: rightMask(S), seed: 3 });
    const [A, Bi, K] = await Promise.all([arr(a.images), arr(b.images), arr(keep.images)]);
    // the packed tokens of the kept half (latent columns < 16 → token columns < 8) equal across seeds
    const la = await arr(a.stepLatents!), lb = await arr(b.stepLatents!);
    const N = (S / 4) * (S / 4), D = 16, last = 3 * N * D;
    let same = 0, diff = 0;
    for (let t = 0; t < N; t++) for (let d = 0; d < D; d++) {
      const i = last + t * D + d;
      if (t % (S / 4) < S / 8) same = Math.max(same, Math.abs(la[i] - lb[i])); else diff = Math.max(diff, Math.abs(la[i] - lb[i]));
    }
    expect(same).toBe(0);
    expect(diff).toBeGreaterThan(1e-3);
    // pixels 16 px away from the mask's edge: the round trip's
    const roundTrip = maxDiffCols(K, await arr(toTensor(img)), S, S, 0, 16);
    expect(maxDiffCols(A, K, S, S, 0, 16)).toBeLessThanOrEqual(roundTrip + 1e-3);
    expect(maxDiffCols(Bi, K, S, S, 0, 16)).toBeLessThanOrEqual(roundTrip + 1e-3);
    expect(maxDiffCols(A, Bi, S, S, 32, S)).toBeGreaterThan(1e-3);  // the masked half is repainted
    for (const t of [a.images, b.images, keep.images, a.stepLatents!, b.stepLatents!]) t.dispose();
  });

  it('the keep-everything mask returns the VAE round trip', async () => {
    const img = picture(), t = toTensor(img);
    const keep = await pipe.generate({ ...base(), image: img, strength: 0.75, mask: rightMask(S), seed: 9 });
    const z = await pipe.vae.encode(await scale(t));
    const dec = await pipe.vae.decode(z);
    const rt = await arr(dec), out = await arr(keep.images);
    let m = 0;
    for (let i = 0; i < out.length; i++) m = Math.max(m, Math.abs(out[i] - Math.min(1, Math.max(0, rt[i] / 2 + 0.5))));
    expect(m).toBeLessThan(1e-5);
    for (const u of [t, keep.images, z, dec]) u.dispose();
  });

  it('outpaintCanvas places the image on a larger canvas with the mask over the new area', async () => {
    const img = picture(32, 32);
    const { image, mask } = await outpaintCanvas(img, { top: 8, bottom: 8, left: 16, right: 16, fill: [1, 2, 3] });
    expect([image.width, image.height, image.channels, mask.width, mask.height]).toEqual([64, 48, 3, 64, 48]);
    const px = (im: x2i.RgbImage, x: number, y: number) => Array.from(im.data.subarray((y * im.width + x) * 3, (y * im.width + x) * 3 + 3));
    expect(px(image, 0, 0)).toEqual([1, 2, 3]);
    expect(px(mask, 0, 0)).toEqual([255, 255, 255]);
    expect(px(mask, 15, 8)).toEqual([255, 255, 255]);
    expect(px(mask, 16, 8)).toEqual([0, 0, 0]);
    expect(px(mask, 47, 39)).toEqual([0, 0, 0]);
    expect(px(mask, 48, 39)).toEqual([255, 255, 255]);
    expect(px(mask, 47, 40)).toEqual([255, 255, 255]);
    for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) expect(px(image, x + 16, y + 8)).toEqual(px(img, x, y));
    const r = await pipe.generate({ ...base(), height: 48, width: 64, seed: 4, image, mask, strength: 1 });
    expect(r.images.shape).toEqual([1, 3, 48, 64]);
    r.images.dispose();
  });
});

async function scale(t: x2i.Tensor): Promise<x2i.Tensor> {
  const a = await arr(t);
  return x2i.Tensor.fromArray(a.map((v) => v * 2 - 1), t.shape);
}

describe('options and memory', () => {
  it('bad options are named', async () => {
    const img = picture();
    for (const strength of [0, -0.5, 1.5, Number.NaN])
      await expect(pipe.generate({ ...base(), image: img, strength })).rejects.toThrow(/strength/);
    await expect(pipe.generate({ ...base(), strength: 0.5 })).rejects.toThrow(/strength/);
    await expect(pipe.generate({ ...base(), mask: rightMask(32) })).rejects.toThrow(/mask/);
    await expect(pipe.generate({ ...base(), image: img, strength: 0.2 })).rejects.toThrow(/strength.*no step/);
    await expect(pipe.generate({ ...base(), image: 42 as unknown as x2i.RgbImage })).rejects.toThrow(/image/);
    await expect(pipe.generate({ ...base(), image: img, mask: {} as x2i.RgbImage })).rejects.toThrow(/mask/);
    await expect(pipe.generate({ ...base(), image: path.join(tmp, 'missing.png') })).rejects.toThrow(/image.*does not exist/);
    await expect(pipe.generate({ ...base(), image: Buffer.from('not an image') })).rejects.toThrow(/image: cannot decode/);
    const two = x2i.Tensor.fromArray(new Float32Array(2 * 3 * 8 * 8), [2, 3, 8, 8]);
    await expect(pipe.generate({ ...base(), image: two })).rejects.toThrow(/image: a batch of 2/);
    const bad = x2i.Tensor.fromArray(new Float32Array(4 * 8 * 8), [1, 4, 8, 8]);
    await expect(pipe.generate({ ...base(), image: bad })).rejects.toThrow(/for image/);
    two.dispose(); bad.dispose();
    await expect(outpaintCanvas(img, { top: -1 })).rejects.toThrow(/top/);
    await expect(outpaintCanvas(img, { fill: [1, 2] as unknown as [number, number, number] })).rejects.toThrow(/fill/);
  });

  it('no tensor leak (img2img, inpainting, failures, aborts)', async () => {
    const img = picture(), t = toTensor(img);
    await settleGc();
    const before = x2i.memory().tensors;
    for (let i = 0; i < 3; i++) {
      (await pipe.generate({ ...base(), seed: i, image: t, strength: 0.5 })).images.dispose();
      (await pipe.generate({ ...base(), seed: i, image: img, mask: rightMask(16), strength: 0.75 })).images.dispose();
      await expect(pipe.generate({ ...base(), image: img, mask: Buffer.from('junk') })).rejects.toThrow(/mask/);
      const ac = new AbortController();
      await expect(pipe.generate({ ...base(), seed: i, image: img, mask: rightMask(16), strength: 1, signal: ac.signal,
        onProgress: (p) => { if (p.step === 2) ac.abort(); } })).rejects.toThrow();
    }
    await settleGc();
    expect(x2i.memory().tensors).toBe(before);
    t.dispose();
  });
});
