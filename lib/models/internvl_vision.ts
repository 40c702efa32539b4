/**
 * InternVL2.5's image preprocessing (its README's `load_image`, which X2I copies): `dynamic_preprocess` picks a
 * grid of s×s tiles from the aspect ratios i·j ≤ maxNum, cuts them row-major from a bicubic resize, and appends an
 * s×s thumbnail when there is more than one tile; each tile /255 and normalised with ImageNet's mean and std.
 */
import { invalidArg } from '../core/errors.js';
import { Tensor } from '../core/tensor.js';
import { resizeRgb, rgbPixels, type RgbImage } from './qwen_vision.js';

export interface InternVLVisionOptions {
  /** The tile size s (the config's force_image_size; 448 for InternVL2.5). */
  imageSize?: number;
  /** Tile grids i×j with minNum ≤ i·j ≤ maxNum (default 1 and 12; X2I's own inference gets one tile). */
  minNum?: number;
  maxNum?: number;
  /** A whole-image s×s tile after the grid when the grid has more than one tile (default true). */
  useThumbnail?: boolean;
  /** Resize each image to [width, height] first (X2I resizes to 128×128 before tiling). */
  preResize?: [number, number];
}

const MEAN = [0.485, 0.456, 0.406], STD = [0.229, 0.224, 0.225];

/** InternVL's find_closest_aspect_ratio: the grid whose aspect is nearest the image's; on a tie the larger grid
 * when the image has more than half its pixels. Grids in order of area (then i, then j). */
export function tileGrid(width: number, height: number, imageSize: number, minNum = 1, maxNum = 12): [number, number] {
  const ratios: [number, number][] = [];
  for (let i = 1; i <= maxNum; i++)
    for (let j = 1; j <= maxNum; j++) if (i * j >= minNum && i * j <= maxNum) ratios.push([i, j]);
  ratios.sort((a, b) => a[0] * a[1] - b[0] * b[1] || a[0] - b[0] || a[1] - b[1]);
  const aspect = width / height, area = width * height;
  let best: [number, number] = [1, 1], bestDiff = Infinity;
  for (const r of ratios) {
    const diff = Math.abs(aspect - r[0] / r[1]);
    if (diff < bestDiff) bestDiff = diff, best = r;
    else if (diff === bestDiff && area > 0.5 * imageSize * imageSize * r[0] * r[1]) best = r;
  }
  return best;
}

/** Images → `{ pixelValues [Σ tiles, 3, s, s] float32, tiles }` (tiles[i]: image i's tile count, thumbnail included). */
export async function preprocessInternVL(images: RgbImage[], opts: InternVLVisionOptions = {}): Promise<{ pixelValues: Tensor; tiles: number[] }> {
  if (!Array.isArray(images) || images.length === 0) throw invalidArg('images', 'a non-empty array of images', images);
  const s = opts.imageSize ?? 448, minNum = opts.minNum ?? 1, maxNum = opts.maxNum ?? 12;
  for (const [k, v] of [['imageSize', s], ['minNum', minNum], ['maxNum', maxNum]] as const)
    if (!Number.isSafeInteger(v) || v < 1) throw invalidArg(k, 'a positive integer', v);
  if (minNum > maxNum) throw invalidArg('minNum', `at most maxNum (${maxNum})`, minNum);
  const planes: Float32Array[] = [], tiles: number[] = [];
  const plane = (px: Uint8Array, W: number, x0: number, y0: number) => {
    const f = new Float32Array(3 * s * s);
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < s; y++)
        for (let x = 0; x < s; x++) f[(c * s + y) * s + x] = (px[((y0 + y) * W + x0 + x) * 3 + c] / 255 - MEAN[c]) / STD[c];
    return f;
  };
  for (const img of images) {
    let rgb = rgbPixels(img), w = img.width, h = img.height;
    if (opts.preResize) {
      const [pw, ph] = opts.preResize;
      if (!Number.isSafeInteger(pw) || !Number.isSafeInteger(ph) || pw < 1 || ph < 1) throw invalidArg('preResize', '[width, height] in pixels', opts.preResize);
      rgb = await resizeRgb(rgb, w, h, pw, ph, 'pil'), w = pw, h = ph;
    }
    const [gi, gj] = tileGrid(w, h, s, minNum, maxNum);
    const big = await resizeRgb(rgb, w, h, gi * s, gj * s, 'pil');
    for (let b = 0; b < gi * gj; b++) planes.push(plane(big, gi * s, (b % gi) * s, Math.floor(b / gi) * s));
    if ((opts.useThumbnail ?? true) && gi * gj !== 1) planes.push(plane(await resizeRgb(rgb, w, h, s, s, 'pil'), s, 0, 0));
    tiles.push(gi * gj + ((opts.useThumbnail ?? true) && gi * gj !== 1 ? 1 : 0));
  }
  const all = new Float32Array(planes.length * 3 * s * s);
  planes.forEach((p, i) => all.set(p, i * p.length));
  return { pixelValues: Tensor.fromArray(all, [planes.length, 3, s, s]), tiles };
}
