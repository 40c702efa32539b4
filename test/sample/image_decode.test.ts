// Every reader of images (the CLI's --prompt-image/--video through decodeRgb, image-to-image and inpainting inputs,
// datasets, the MLLM preprocessors' RGBA pixels) sees an image as it is displayed: the EXIF orientation applied and
// transparency composited on white, the same bytes everywhere; a plain RGB image reads as its stored pixels.
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRgb, flattenRgba } from '../../lib/core/image_decode.js';
import { X2IError } from '../../lib/core/errors.js';
import { rgbPixels } from '../../lib/models/qwen_vision.js';
import { imageForVae, imageInputSize } from '../../lib/sample/image_input.js';
import { fromFolder } from '../../lib/train/data.js';
import { tmpDir } from '../helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** 8 wide × 4 high: the left half red, the right half blue (solid blocks survive JPEG). */
function leftRight(): Buffer {
  const px = Buffer.alloc(8 * 4 * 3);
  for (let y = 0; y < 4; y++) for (let x = 0; x < 8; x++) px.set(x < 4 ? [230, 20, 20] : [20, 20, 230], (y * 8 + x) * 3);
  return px;
}

/** The RGBA test pixels: four alphas (0, 64, 128, 255) over a few colours, 4 × 2. */
const RGBA = new Uint8Array([
  0, 0, 0, 0, 200, 100, 50, 64, 0, 0, 0, 128, 10, 20, 30, 255,
  255, 0, 0, 1, 0, 255, 0, 254, 0, 0, 255, 128, 90, 90, 90, 200]);

let rotatedJpg: string, rgbaPng: string, plainPng: string, grayPng: string;
const plainPx = new Uint8Array(6 * 5 * 3).map((_, i) => (i * 37) % 256);

beforeAll(async () => {
  rotatedJpg = path.join(tmp, 'rotated.jpg');
  // stored 8 × 4 with EXIF orientation 6 (rotate 90° clockwise to display): displayed 4 wide × 8 high, the stored
  // left half (red) on top
  await sharp(leftRight(), { raw: { width: 8, height: 4, channels: 3 } }).jpeg({ quality: 100 }).withMetadata({ orientation: 6 }).toFile(rotatedJpg);
  rgbaPng = path.join(tmp, 'alpha.png');
  await sharp(Buffer.from(RGBA), { raw: { width: 4, height: 2, channels: 4 } }).png().toFile(rgbaPng);
  plainPng = path.join(tmp, 'plain.png');
  await sharp(Buffer.from(plainPx), { raw: { width: 6, height: 5, channels: 3 } }).png().toFile(plainPng);
  grayPng = path.join(tmp, 'gray.png');
  await sharp(Buffer.from([0, 100, 200, 255]), { raw: { width: 2, height: 2, channels: 1 } }).png().toFile(grayPng);
});

/** The mean colour of rows [y0, y1) of interleaved RGB. */
function meanRows(d: Uint8Array, w: number, y0: number, y1: number): number[] {
  const m = [0, 0, 0];
  for (let y = y0; y < y1; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) m[c] += d[(y * w + x) * 3 + c] / ((y1 - y0) * w);
  return m.map(Math.round);
}

const near = (got: number[], want: number[], tol = 12) => got.forEach((v, c) => expect(Math.abs(v - want[c]), `channel ${c}: ${got} vs ${want}`).toBeLessThanOrEqual(tol));

describe('EXIF orientation', () => {
  it('decodeRgb (the CLI\'s --prompt-image, --video): displayed 4 × 8, red on top, blue below', async () => {
    expect((await sharp(rotatedJpg).metadata()).orientation).toBe(6);
    const img = await decodeRgb(rotatedJpg, { name: '--prompt-image' });
    expect([img.width, img.height, img.channels, img.data.length]).toEqual([4, 8, 3, 4 * 8 * 3]);
    near(meanRows(img.data, 4, 0, 3), [230, 20, 20]);
    near(meanRows(img.data, 4, 5, 8), [20, 20, 230]);
    // the same bytes from the encoded buffer
    expect(Buffer.from((await decodeRgb(fs.readFileSync(rotatedJpg))).data).equals(Buffer.from(img.data))).toBe(true);
  });

  it('image-to-image inputs and datasets read the same orientation', async () => {
    expect(await imageInputSize('image', rotatedJpg)).toEqual({ height: 8, width: 4 });
    const t = await imageForVae(rotatedJpg, { batch: 1, height: 8, width: 4 });
    const v = await t.toArray() as Float32Array;
    t.dispose();
    const ref = (await decodeRgb(rotatedJpg)).data;
    for (let i = 0; i < 32; i++) for (let c = 0; c < 3; c++) expect(v[c * 32 + i]).toBeCloseTo((ref[i * 3 + c] / 255) * 2 - 1, 6);
    const dir = path.join(tmp, 'set');
    fs.mkdirSync(dir);
    fs.copyFileSync(rotatedJpg, path.join(dir, 'r.jpg'));
    for await (const s of fromFolder(dir)) {
      expect([s.image.width, s.image.height]).toEqual([4, 8]);
      expect(Buffer.from(s.image.data).equals(Buffer.from(ref))).toBe(true);
    }
  });
});

describe('transparency composited on white', () => {
  // sharp's flatten, which every reader uses: ⌊(v·a + 255·(255 − a)) / 255⌋
  const want = [255, 255, 255, 241, 216, 203, 127, 127, 127, 10, 20, 30, 255, 254, 254, 1, 255, 1, 127, 127, 255, 125, 125, 125];

  it('a semi-transparent PNG: decodeRgb, the VAE input, the dataset reader and rgbPixels of raw RGBA agree exactly', async () => {
    expect((await sharp(rgbaPng).metadata()).channels).toBe(4);
    const img = await decodeRgb(rgbaPng);
    expect([img.width, img.height, img.channels]).toEqual([4, 2, 3]);
    expect(Array.from(img.data)).toEqual(want);
    expect(Array.from(flattenRgba(RGBA, 8))).toEqual(want);
    expect(Array.from(rgbPixels({ data: RGBA, width: 4, height: 2, channels: 4 }))).toEqual(want);
    const t = await imageForVae(rgbaPng, { batch: 1, height: 2, width: 4 });
    const v = await t.toArray() as Float32Array;
    t.dispose();
    for (let i = 0; i < 8; i++) for (let c = 0; c < 3; c++) expect(v[c * 8 + i]).toBeCloseTo((want[i * 3 + c] / 255) * 2 - 1, 6);
    const dir = path.join(tmp, 'alpha-set');
    fs.mkdirSync(dir);
    fs.copyFileSync(rgbaPng, path.join(dir, 'a.png'));
    for await (const s of fromFolder(dir)) expect(Array.from(s.image.data)).toEqual(want);
  });

  it('every 8-bit alpha and value: flattenRgba is sharp\'s flatten bit for bit', async () => {
    const px = new Uint8Array(256 * 256 * 4);
    for (let a = 0; a < 256; a++) for (let v = 0; v < 256; v++) px.set([v, 255 - v, (v * 7) % 256, a], (a * 256 + v) * 4);
    const ref = await sharp(Buffer.from(px), { raw: { width: 256, height: 256, channels: 4 } }).flatten({ background: '#ffffff' }).removeAlpha().raw().toBuffer();
    expect(Buffer.from(flattenRgba(px, 256 * 256)).equals(ref)).toBe(true);
  });
});

describe('plain images are read as stored', () => {
  it('an RGB PNG without EXIF: its bytes; RGB pixels pass rgbPixels untouched', async () => {
    expect(Buffer.from((await decodeRgb(plainPng)).data).equals(Buffer.from(plainPx))).toBe(true);
    expect(rgbPixels({ data: plainPx, width: 6, height: 5 })).toEqual(plainPx);
  });

  it('a grayscale PNG becomes 3 equal channels', async () => {
    const img = await decodeRgb(grayPng);
    expect([img.width, img.height, img.channels]).toEqual([2, 2, 3]);
    expect(Array.from(img.data)).toEqual([0, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255]);
  });

  it('missing and undecodable files are X2IErrors naming the input', async () => {
    const missing = await decodeRgb(path.join(tmp, 'nope.png'), { name: '--prompt-image' }).catch((e) => e);
    expect(missing).toBeInstanceOf(X2IError);
    expect([missing.code, missing.message]).toEqual(['ERR_FILE_NOT_FOUND', `--prompt-image: ${path.join(tmp, 'nope.png')}: no such file`]);
    const bad = path.join(tmp, 'bad.png');
    fs.writeFileSync(bad, 'not an image');
    const e = await decodeRgb(bad, { name: '--video' }).catch((x) => x);
    expect(e.code).toBe('ERR_IMAGE');
    expect(e.message).toMatch(/^--video: .*bad\.png: cannot decode the image/);
    await expect(decodeRgb(Buffer.alloc(0), { name: 'frame' })).rejects.toThrow(/frame: the image is empty/);
  });
});
