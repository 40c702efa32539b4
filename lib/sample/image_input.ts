/**
 * Image inputs of image-to-image and inpainting (FluxPipeline.generate's `image` and `mask`), decoded and resized
 * as diffusers' VaeImageProcessor does for FluxImg2ImgPipeline / FluxInpaintPipeline: the image → [B, 3, H, W] in
 * [0, 1]; the mask → grayscale, binarised at 0.5 (1 = repaint, 0 = keep). Also `outpaintCanvas`, which turns
 * outpainting into inpainting.
 */
import fs from 'node:fs';
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { BACKGROUND, loadSharp, orientedImage, type Sharp } from '../core/image_decode.js';
import { nonNegativeInt } from '../core/options.js';
import { addon } from '../core/native.js';
import { Tensor } from '../core/tensor.js';
import type { RgbImage } from '../models/qwen_vision.js';

/** An image: a Tensor [B, 3, H, W] or [3, H, W] of floats in [0, 1] (a mask: also [B, 1, H, W], [1, H, W] or
 * [H, W]); decoded pixels (`RgbImage`); an encoded PNG / JPEG / WebP `Buffer`; or the path of such a file. */
export type GenerateImageInput = Tensor | RgbImage | Buffer | string;

function isRgbImage(x: unknown): x is RgbImage {
  return typeof x === 'object' && x !== null && !(x instanceof Tensor) && !Buffer.isBuffer(x) && 'data' in x && 'width' in x && 'height' in x;
}

/** A sharp pipeline for a non-Tensor input: EXIF orientation applied, alpha composited on white (the shared reader,
 * lib/core/image_decode.ts). */
async function sharpInput(name: string, input: RgbImage | Buffer | string): Promise<Sharp> {
  if (typeof input === 'string') {
    if (input === '' || input.includes('\0')) throw invalidArg(name, 'an image file path', input);
    if (!fs.existsSync(input)) throw new X2IError(`${name}: the file ${JSON.stringify(input)} does not exist`, 'ERR_INVALID_ARG');
    return orientedImage(input);
  }
  if (Buffer.isBuffer(input)) {
    if (input.length === 0) throw new X2IError(`${name}: the image buffer is empty`, 'ERR_INVALID_ARG');
    return orientedImage(input);
  }
  const c = input.channels ?? 3;
  if (!(input.data instanceof Uint8Array || input.data instanceof Uint8ClampedArray))
    throw invalidArg(`${name}.data`, 'a Uint8Array of interleaved RGB(A) pixels', input.data);
  if (!Number.isSafeInteger(input.width) || !Number.isSafeInteger(input.height) || input.width < 1 || input.height < 1)
    throw invalidArg(`${name} size`, 'positive integers', [input.width, input.height]);
  if (c !== 1 && c !== 3 && c !== 4) throw new X2IError(`${name}: ${c} channels, expected 1 (gray), 3 (RGB) or 4 (RGBA)`, 'ERR_INVALID_ARG');
  if (input.data.length !== input.width * input.height * c)
    throw new X2IError(`${name}: ${input.data.length} bytes, expected ${input.width}×${input.height}×${c}`, 'ERR_INVALID_ARG');
  const sharp = await loadSharp();
  return sharp(Buffer.from(input.data.buffer, input.data.byteOffset, input.data.length),
    { raw: { width: input.width, height: input.height, channels: c as 1 | 3 | 4 } }).flatten({ background: BACKGROUND });
}

async function decodeFailed<T>(name: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof X2IError) throw e;
    throw new X2IError(`${name}: cannot decode the image (${(e as Error).message})`, 'ERR_INVALID_ARG', { cause: e });
  }
}

/** Height and width of an input as it will be read (after EXIF orientation). */
export async function imageInputSize(name: string, input: GenerateImageInput): Promise<{ height: number; width: number }> {
  if (input instanceof Tensor) {
    const s = input.shape;
    return { height: s[s.length - 2], width: s[s.length - 1] };
  }
  if (!isRgbImage(input) && typeof input !== 'string' && !Buffer.isBuffer(input)) throw invalidArg(name, IMAGE_EXPECTED, input);
  const img = await sharpInput(name, input);
  const { info } = await decodeFailed(name, img.raw().toBuffer({ resolveWithObject: true }));
  return { height: info.height, width: info.width };
}

const IMAGE_EXPECTED = 'a Tensor [B, 3, H, W] in [0, 1], an RgbImage, an encoded image Buffer or a file path';
const MASK_EXPECTED = 'a Tensor [B, 1, H, W] (or [B, 3, H, W], [H, W]) in [0, 1], an RgbImage, an encoded image Buffer or a file path';

/** Pixels as float32 [n, ch, H, W] in [0, 1] (host) from uint8 interleaved HWC. */
function planar(u8: Uint8Array, H: number, W: number, ch: number): Float32Array {
  const out = new Float32Array(ch * H * W);
  for (let c = 0; c < ch; c++) for (let i = 0; i < H * W; i++) out[c * H * W + i] = u8[i * ch + c] / 255;
  return out;
}

/** Host float32 [n, ch, H, W] of a Tensor input, checked. */
async function tensorPixels(name: string, t: Tensor, mask: boolean): Promise<{ data: Float32Array; n: number; ch: number; H: number; W: number }> {
  const s = t.shape;
  const ok = mask ? (s.length === 2 || ((s.length === 3 || s.length === 4) && (s[s.length - 3] === 1 || s[s.length - 3] === 3)))
    : ((s.length === 3 || s.length === 4) && s[s.length - 3] === 3);
  if (!ok || t.numel === 0) throw invalidArg(name, mask ? MASK_EXPECTED : IMAGE_EXPECTED, `Tensor [${s.join(', ')}]`);
  if (!/^(float|bfloat)/.test(t.dtype)) throw invalidArg(`${name} dtype`, 'a floating-point Tensor in [0, 1]', t.dtype);
  const n = s.length === 4 ? s[0] : 1, ch = s.length === 2 ? 1 : s[s.length - 3], H = s[s.length - 2], W = s[s.length - 1];
  const f = t.dtype === 'float32' && t.device === 'cpu' ? t : await t.to({ dtype: 'float32', device: 'cpu' });
  try {
    const data = Float32Array.from(await f.toArray() as Float32Array);
    for (let i = 0; i < data.length; i++)
      if (!Number.isFinite(data[i])) throw new X2IError(`${name}: the Tensor holds a non-finite value`, 'ERR_INVALID_ARG');
    return { data, n, ch, H, W };
  } finally {
    if (f !== t) f.dispose();
  }
}

/** Float32 [ch, H, W] in [0, 1] → interleaved uint8 (for resizing through sharp). */
function interleaved(data: Float32Array, off: number, ch: number, H: number, W: number): Uint8Array {
  const out = new Uint8Array(ch * H * W);
  for (let c = 0; c < ch; c++)
    for (let i = 0; i < H * W; i++) out[i * ch + c] = Math.round(Math.min(1, Math.max(0, data[off + c * H * W + i])) * 255);
  return out;
}

/** One image (or mask) as float32 [ch, height, width] in [0, 1] (host); `ch` 3 (RGB, alpha flattened on white) or
 * 1 (grayscale). Sharp's resize (Lanczos 3, fit 'fill') when the size differs. */
async function readPixels(name: string, input: RgbImage | Buffer | string, height: number, width: number, gray: boolean): Promise<Float32Array> {
  let img = await sharpInput(name, input);
  const size = await imageInputSize(name, input);
  if (size.height !== height || size.width !== width) {
    // resize after the orientation and the flattening: a fresh pipeline over the oriented pixels
    const { data, info } = await decodeFailed(name, img.raw().toBuffer({ resolveWithObject: true }));
    const sharp = await loadSharp();
    img = sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
      .resize(width, height, { fit: 'fill' });
  }
  img = gray ? img.toColourspace('b-w') : img.removeAlpha().toColourspace('srgb');
  const { data, info } = await decodeFailed(name, img.raw().toBuffer({ resolveWithObject: true }));
  const ch = gray ? 1 : 3;
  if (info.channels !== ch || info.width !== width || info.height !== height)
    throw new X2IError(`${name}: decoded ${info.width}×${info.height}×${info.channels}, expected ${width}×${height}×${ch}`, 'ERR_INVALID_ARG');
  return planar(new Uint8Array(data.buffer, data.byteOffset, data.length), height, width, ch);
}

/** Host pixels [batch, ch, height, width] of an input: a batch of 1 is repeated; other batches must match. */
async function pixels(name: string, input: GenerateImageInput, batch: number, height: number, width: number, mask: boolean): Promise<Float32Array> {
  const ch = mask ? 1 : 3, plane = ch * height * width;
  const out = new Float32Array(batch * plane);
  if (input instanceof Tensor) {
    const t = await tensorPixels(name, input, mask);
    if (t.n !== 1 && t.n !== batch) throw new X2IError(`${name}: a batch of ${t.n} images for a batch of ${batch} prompts`, 'ERR_SHAPE_MISMATCH');
    for (let b = 0; b < batch; b++) {
      const off = (t.n === 1 ? 0 : b) * t.ch * t.H * t.W;
      let one: Float32Array;
      if (t.H === height && t.W === width) one = t.data.subarray(off, off + t.ch * t.H * t.W);
      else one = await readPixels(name, { data: interleaved(t.data, off, t.ch, t.H, t.W), width: t.W, height: t.H, channels: t.ch },
        height, width, mask && t.ch === 1);
      if (mask && t.ch === 3) one = luma(one, height * width);
      out.set(one, b * plane);
    }
  } else if (isRgbImage(input) || typeof input === 'string' || Buffer.isBuffer(input)) {
    const one = await readPixels(name, input, height, width, mask);
    for (let b = 0; b < batch; b++) out.set(one, b * plane);
  } else {
    throw invalidArg(name, mask ? MASK_EXPECTED : IMAGE_EXPECTED, input);
  }
  return out;
}

/** PIL's convert('L') weights (ITU-R 601-2 luma) over float RGB planes. */
function luma(rgb: Float32Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rgb[i] * 299 + rgb[n + i] * 587 + rgb[2 * n + i] * 114) / 1000;
  return out;
}

/**
 * The init image as the VAE reads it: [batch, 3, height, width] float32 in [−1, 1] on `device` (diffusers:
 * `image_processor.preprocess`, normalised). A single image is repeated over the batch.
 */
export async function imageForVae(input: GenerateImageInput, opts: { batch: number; height: number; width: number; device?: string;
  name?: string }): Promise<Tensor> {
  const { batch, height, width } = opts;
  const px = await pixels(opts.name ?? 'image', input, batch, height, width, false);
  for (let i = 0; i < px.length; i++) px[i] = px[i] * 2 - 1;
  return Tensor.fromArray(px, [batch, 3, height, width], { device: opts.device });
}

/**
 * The inpainting mask packed like FLUX's latents: the mask at height×width, grayscale, binarised at 0.5 (1 =
 * repaint), then at the latent size (nearest, as torch's interpolate: pixel (i·f, j·f)), repeated over the latent
 * channels and packed → [batch, (lh/2)(lw/2), 4C] float32 on `device` (diffusers' prepare_mask_latents).
 */
export async function packedMask(input: GenerateImageInput, opts: { batch: number; height: number; width: number; latentHeight: number;
  latentWidth: number; channels: number; device?: string; name?: string }): Promise<Tensor> {
  const { batch, height, width, latentHeight: lh, latentWidth: lw, channels: C } = opts;
  const px = await pixels(opts.name ?? 'mask', input, batch, height, width, true);
  const m = new Float32Array(batch * C * lh * lw);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < lh; i++)
      for (let j = 0; j < lw; j++) {
        const y = Math.min(height - 1, Math.floor((i * height) / lh)), x = Math.min(width - 1, Math.floor((j * width) / lw));
        const v = px[b * height * width + y * width + x] < 0.5 ? 0 : 1;
        for (let c = 0; c < C; c++) m[((b * C + c) * lh + i) * lw + j] = v;
      }
  using z = Tensor.fromArray(m, [batch, C, lh, lw], { device: opts.device });
  const h = z.handle;
  return new Tensor(await nativeCall(() => addon().packLatents(h)));
}

export interface OutpaintMargins {
  /** Pixels added above, below, left and right of the image (non-negative integers; at least one positive). */
  top?: number;
  bottom?: number;
  left?: number;
  right?: number;
  /** The new area's colour (RGB 0–255), default mid gray [127, 127, 127]; it is repainted. */
  fill?: [number, number, number];
}

/**
 * Outpainting as inpainting: the image (decoded, EXIF-oriented, alpha flattened on white) placed on a larger
 * canvas, and the mask that repaints the new area: `image` is the canvas (RGB), `mask` is white (255: repaint)
 * over the added margins and black (0: keep) over the original pixels. Pass both to `generate` with the canvas
 * size as height and width (multiples of 16 for FLUX).
 */
export async function outpaintCanvas(image: GenerateImageInput, margins: OutpaintMargins): Promise<{ image: RgbImage; mask: RgbImage }> {
  if (margins === null || typeof margins !== 'object') throw invalidArg('outpaintCanvas margins', '{ top?, bottom?, left?, right?, fill? }', margins);
  const top = nonNegativeInt('top', margins.top ?? 0), bottom = nonNegativeInt('bottom', margins.bottom ?? 0);
  const left = nonNegativeInt('left', margins.left ?? 0), right = nonNegativeInt('right', margins.right ?? 0);
  const fill = margins.fill ?? [127, 127, 127];
  if (!Array.isArray(fill) || fill.length !== 3 || !fill.every((v) => Number.isInteger(v) && v >= 0 && v <= 255))
    throw invalidArg('fill', 'an [r, g, b] of integers in 0..255', fill);
  const { height: h, width: w } = await imageInputSize('image', image);
  const H = h + top + bottom, W = w + left + right;
  if (H > 16384 || W > 16384) throw new X2IError(`outpaintCanvas: a canvas of ${W}×${H} is too large (at most 16384 a side)`, 'ERR_INVALID_ARG');
  const src = await pixels('image', image, 1, h, w, false);
  const rgb = new Uint8Array(H * W * 3), mask = new Uint8Array(H * W * 3).fill(255);
  for (let i = 0; i < H * W; i++) rgb[i * 3] = fill[0], rgb[i * 3 + 1] = fill[1], rgb[i * 3 + 2] = fill[2];
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const o = ((y + top) * W + x + left) * 3;
      for (let c = 0; c < 3; c++) rgb[o + c] = Math.round(src[c * h * w + y * w + x] * 255), mask[o + c] = 0;
    }
  return { image: { data: rgb, width: W, height: H, channels: 3 }, mask: { data: mask, width: W, height: H, channels: 3 } };
}
