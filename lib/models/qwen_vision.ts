/**
 * Qwen2-VL / Qwen2.5-VL image and video preprocessing (the Qwen2VLImageProcessor's steps): smart resize to a
 * multiple of 28, bicubic resampling, scaling to [0, 1], CLIP normalisation, and patchify into rows of
 * C·2·14·14 values in the (t, h/2, w/2, 2, 2) order the vision tower expects.
 */
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { flattenRgba } from '../core/image_decode.js';
import { addon } from '../core/native.js';
import { Tensor } from '../core/tensor.js';

/** Decoded pixels, interleaved RGB (or RGBA, composited on white), row-major. Files and encoded images: read them
 * with `decodeRgb` (lib/core/image_decode.ts: EXIF orientation applied, alpha on white). */
export interface RgbImage {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
  /** 3 (RGB, default) or 4 (RGBA). */
  channels?: number;
}

export interface QwenVisionOptions {
  /** Pixel budget per image (processor defaults: 56·56 … 28·28·16384). */
  minPixels?: number;
  maxPixels?: number;
  patchSize?: number;
  mergeSize?: number;
  temporalPatchSize?: number;
  imageMean?: [number, number, number];
  imageStd?: [number, number, number];
}

const DEFAULTS = { minPixels: 56 * 56, maxPixels: 28 * 28 * 16384, patchSize: 14, mergeSize: 2, temporalPatchSize: 2,
  imageMean: [0.48145466, 0.4578275, 0.40821073] as [number, number, number],
  imageStd: [0.26862954, 0.26130258, 0.27577711] as [number, number, number] };

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** The processor's smart_resize: both sides multiples of `factor`, the area within [minPixels, maxPixels]. */
export function smartResize(height: number, width: number, factor = 28, minPixels = DEFAULTS.minPixels,
  maxPixels = DEFAULTS.maxPixels): { height: number; width: number } {
  if (Math.max(height, width) / Math.min(height, width) > 200)
    throw new X2IError(`image of ${width}×${height}: the aspect ratio must be at most 200`, 'ERR_IMAGE');
  let h = roundHalfEven(height / factor) * factor, w = roundHalfEven(width / factor) * factor;
  if (h * w > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    h = Math.max(factor, Math.floor(height / beta / factor) * factor);
    w = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    h = Math.ceil((height * beta) / factor) * factor;
    w = Math.ceil((width * beta) / factor) * factor;
  }
  return { height: h, width: w };
}

/** An image's pixels as interleaved RGB bytes [H·W·3] (RGBA composited on white, as sharp's flatten and transformers'
 * `convert_rgb`), its fields checked. */
export function rgbPixels(img: RgbImage): Uint8Array {
  const c = img?.channels ?? 3;
  if (!img || !(img.data instanceof Uint8Array || img.data instanceof Uint8ClampedArray))
    throw invalidArg('image.data', 'a Uint8Array of interleaved RGB(A) pixels', img?.data);
  if (!Number.isSafeInteger(img.width) || !Number.isSafeInteger(img.height) || img.width < 1 || img.height < 1)
    throw invalidArg('image size', 'positive integers', [img.width, img.height]);
  if (c !== 3 && c !== 4) throw new X2IError(`image: ${c} channels, expected 3 (RGB) or 4 (RGBA)`, 'ERR_IMAGE');
  if (img.data.length !== img.width * img.height * c)
    throw new X2IError(`image: ${img.data.length} bytes, expected ${img.width}×${img.height}×${c} = ${img.width * img.height * c}`, 'ERR_IMAGE');
  if (c === 3) return new Uint8Array(img.data.buffer, img.data.byteOffset, img.data.length);
  return flattenRgba(img.data, img.width * img.height);
}

/** RGB bytes [h, w, 3] resized to [outH, outW, 3] off the event loop: 'torch' (PyTorch's antialiased bicubic, what
 * torchvision-based processors compute) or 'pil' (Pillow's bicubic, bit for bit). The same bytes when the size is kept. */
export async function resizeRgb(rgb: Uint8Array, w: number, h: number, outW: number, outH: number,
  method: 'torch' | 'pil' = 'torch'): Promise<Uint8Array> {
  if (w === outW && h === outH) return rgb;
  using t = Tensor.fromArray(rgb, [h, w, 3]);
  const handle = t.handle;
  using out = new Tensor(await nativeCall(() => addon().resizeImage(handle, outH, outW, method)));
  return await out.toArray() as Uint8Array;
}

async function resized(img: RgbImage, h: number, w: number): Promise<Uint8Array> {
  return resizeRgb(rgbPixels(img), img.width, img.height, w, h);
}

/** Normalised frames [T, C, H, W] → rows [grid_t·grid_h·grid_w, C·tp·p·p] in the vision tower's order. */
function patchify(frames: Float32Array[], H: number, W: number, o: typeof DEFAULTS): { rows: Float32Array; grid: [number, number, number] } {
  const p = o.patchSize, m = o.mergeSize, tp = o.temporalPatchSize, C = 3;
  const T = frames.length, gt = T / tp, gh = H / p, gw = W / p;
  const rowLen = C * tp * p * p;
  const rows = new Float32Array(gt * gh * gw * rowLen);
  let r = 0;
  for (let t = 0; t < gt; t++)
    for (let bh = 0; bh < gh / m; bh++)
      for (let bw = 0; bw < gw / m; bw++)
        for (let mh = 0; mh < m; mh++)
          for (let mw = 0; mw < m; mw++, r++) {
            const py = (bh * m + mh) * p, px = (bw * m + mw) * p;
            let k = r * rowLen;
            for (let c = 0; c < C; c++)
              for (let f = 0; f < tp; f++) {
                const frame = frames[t * tp + f];
                for (let y = 0; y < p; y++)
                  for (let x = 0; x < p; x++) rows[k++] = frame[(c * H + py + y) * W + px + x];
              }
          }
  return { rows, grid: [gt, gh, gw] };
}

async function normalisedFrames(images: RgbImage[], h: number, w: number, o: typeof DEFAULTS): Promise<Float32Array[]> {
  const frames: Float32Array[] = [];
  for (const img of images) {
    const px = await resized(img, h, w);
    const f = new Float32Array(3 * h * w);
    for (let c = 0; c < 3; c++)
      for (let i = 0; i < h * w; i++) f[c * h * w + i] = (px[i * 3 + c] / 255 - o.imageMean[c]) / o.imageStd[c];
    frames.push(f);
  }
  return frames;
}

/** Images → `{ pixelValues [Σ patches, 1176], imageGridThw [n, 3], imageTokens }` (imageTokens[i] = merged
 * tokens of image i: how many `<|image_pad|>` it takes). Each image is resized on its own and repeated to
 * the temporal patch size. */
export async function preprocessImages(images: RgbImage[], opts: QwenVisionOptions = {}): Promise<{ pixelValues: Tensor;
  imageGridThw: Tensor; imageTokens: number[] }> {
  if (!Array.isArray(images) || images.length === 0) throw invalidArg('images', 'a non-empty array of RGB images', images);
  const o = { ...DEFAULTS, ...opts };
  const parts: Float32Array[] = [], grids: number[] = [], tokens: number[] = [];
  for (const img of images) {
    const { height, width } = smartResize(img.height, img.width, o.patchSize * o.mergeSize, o.minPixels, o.maxPixels);
    const [frame] = await normalisedFrames([img], height, width, o);
    const { rows, grid } = patchify(Array(o.temporalPatchSize).fill(frame), height, width, o);
    parts.push(rows);
    grids.push(...grid);
    tokens.push((grid[0] * grid[1] * grid[2]) / (o.mergeSize * o.mergeSize));
  }
  return pack(parts, grids, tokens, o);
}

/** Video frames (already sampled) → `{ pixelValues, videoGridThw, videoTokens }`; one size for all frames; an odd
 * frame count repeats the last frame. */
export async function preprocessVideo(frames: RgbImage[], opts: QwenVisionOptions = {}): Promise<{ pixelValues: Tensor;
  videoGridThw: Tensor; videoTokens: number[] }> {
  if (!Array.isArray(frames) || frames.length === 0) throw invalidArg('frames', 'a non-empty array of RGB frames', frames);
  const o = { ...DEFAULTS, ...opts };
  const { height, width } = smartResize(frames[0].height, frames[0].width, o.patchSize * o.mergeSize, o.minPixels, o.maxPixels);
  const norm = await normalisedFrames(frames, height, width, o);
  while (norm.length % o.temporalPatchSize) norm.push(norm[norm.length - 1]);
  const { rows, grid } = patchify(norm, height, width, o);
  const r = pack([rows], grid, [(grid[0] * grid[1] * grid[2]) / (o.mergeSize * o.mergeSize)], o);
  return { pixelValues: r.pixelValues, videoGridThw: r.imageGridThw, videoTokens: r.imageTokens };
}

function pack(parts: Float32Array[], grids: number[], tokens: number[], o: typeof DEFAULTS) {
  const rowLen = 3 * o.temporalPatchSize * o.patchSize * o.patchSize;
  const total = parts.reduce((a, p) => a + p.length, 0);
  const all = new Float32Array(total);
  let off = 0;
  for (const p of parts) { all.set(p, off); off += p.length; }
  return { pixelValues: Tensor.fromArray(all, [total / rowLen, rowLen]),
    imageGridThw: Tensor.fromArray(BigInt64Array.from(grids.map(BigInt)), [grids.length / 3, 3]), imageTokens: tokens };
}
