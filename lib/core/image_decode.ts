/**
 * The one way x2i reads images (the CLI's prompt images and video frames, image-to-image and inpainting inputs,
 * datasets, the MLLM preprocessors): encoded files and Buffers through sharp with the EXIF orientation applied and
 * any alpha composited on white, then 8-bit sRGB with 3 channels; decoded RGBA pixels composited on white the same
 * way, bit for bit as sharp's flatten (`flattenRgba`). A plain RGB image without EXIF reads as its stored pixels.
 */
import fs from 'node:fs';
import { X2IError } from './errors.js';

export type Sharp = import('sharp').Sharp;
type SharpModule = typeof import('sharp');

/** What every image is composited on: white (what transformers' `convert_rgb` does for RGBA images). */
export const BACKGROUND = '#ffffff';

let sharpModule: Promise<{ default: SharpModule }> | undefined;

/** sharp, imported once (it loads libvips). */
export async function loadSharp(): Promise<SharpModule> {
  sharpModule ??= import('sharp');
  return (await sharpModule).default;
}

/** A sharp pipeline over an encoded image (a file path or its bytes): auto-oriented from EXIF, alpha composited on
 * white. `failOn` is sharp's (default 'warning'; datasets pass 'error' to accept slightly damaged files). */
export async function orientedImage(input: string | Buffer | Uint8Array, opts: { failOn?: 'none' | 'truncated' | 'error' | 'warning' } = {}): Promise<Sharp> {
  const sharp = await loadSharp();
  return sharp(input, { failOn: opts.failOn ?? 'warning' }).rotate().flatten({ background: BACKGROUND });
}

/** The size an image is displayed at, from sharp's metadata: EXIF orientations 5–8 swap width and height. */
export function orientedSize(meta: { width?: number; height?: number; orientation?: number }): { width: number; height: number } {
  const swap = (meta.orientation ?? 1) >= 5;
  return { width: (swap ? meta.height : meta.width) ?? 0, height: (swap ? meta.width : meta.height) ?? 0 };
}

/** Interleaved RGB bytes of a pipeline (alpha removed, sRGB: grayscale and CMYK images become 3 channels). */
export async function rgbBytes(img: Sharp): Promise<{ data: Uint8Array; width: number; height: number; channels: 3 }> {
  const { data, info } = await img.removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height, channels: 3 };
}

/**
 * An image file or encoded Buffer (PNG, JPEG, WebP, ... as sharp reads) → interleaved RGB bytes as displayed: EXIF
 * orientation applied, alpha composited on white, optionally resized. A failure is an X2IError naming `name`
 * (ERR_FILE_NOT_FOUND for a missing file, else ERR_IMAGE).
 */
export async function decodeRgb(input: string | Buffer | Uint8Array, opts: { name?: string;
  resize?: { width: number; height: number; fit?: 'cover' | 'fill' | 'inside' | 'contain' | 'outside' };
  failOn?: 'none' | 'truncated' | 'error' | 'warning' } = {}): Promise<{ data: Uint8Array; width: number; height: number; channels: 3 }> {
  const name = opts.name ?? 'image';
  const what = typeof input === 'string' ? `${name}: ${input}` : name;
  if (typeof input === 'string') {
    if (!fs.existsSync(input)) throw new X2IError(`${name}: ${input}: no such file`, 'ERR_FILE_NOT_FOUND');
  } else if (input.length === 0) throw new X2IError(`${name}: the image is empty (0 bytes)`, 'ERR_IMAGE');
  try {
    let img = await orientedImage(input, { failOn: opts.failOn });
    if (opts.resize) img = img.resize(opts.resize.width, opts.resize.height, { fit: opts.resize.fit ?? 'cover' });
    return await rgbBytes(img);
  } catch (e) {
    if (e instanceof X2IError) throw e;
    throw new X2IError(`${what}: cannot decode the image (${(e as Error).message})`, 'ERR_IMAGE', { cause: e });
  }
}

/** Interleaved RGBA bytes composited on white → RGB, exactly as sharp's `flatten({ background: '#ffffff' })`:
 * ⌊(v·a + 255·(255 − a)) / 255⌋. */
export function flattenRgba(rgba: Uint8Array | Uint8ClampedArray, pixels: number): Uint8Array {
  const rgb = new Uint8Array(pixels * 3);
  for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) {
    const a = rgba[i + 3], w = 255 * (255 - a);
    rgb[j] = ((rgba[i] * a + w) / 255) | 0;
    rgb[j + 1] = ((rgba[i + 1] * a + w) / 255) | 0;
    rgb[j + 2] = ((rgba[i + 2] * a + w) / 255) | 0;
  }
  return rgb;
}
