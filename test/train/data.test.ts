// Dataset readers (lib/train/data.ts): folders, JSONL, WebDataset tar shards; decoding with sharp (EXIF
// orientation, alpha on white, resize), prefetch order and read-ahead, skip/shard/shuffle/repeat, abort, and the
// hostile shards and manifests, each an X2IError naming the file and the member or line.
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { X2IError } from '../../lib/core/errors.js';
import {
  defaultWebDatasetMap, expandBraces, fromFolder, fromJsonl, fromWebDataset, prefetch,
  type DecodedImage, type TrainingSample,
} from '../../lib/train/data.js';
import type { RgbImage } from '../../lib/models/qwen_vision.js';
import { tmpDir } from '../helpers.js';

// ------------------------------------------------------------------------------------------- a tiny tar writer
function header(name: string, size: number, type: string, opts: { base256?: boolean; linkname?: string } = {}): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  if (opts.base256) {
    h[124] = 0x80;
    let v = size;
    for (let i = 135; i > 124; i--) { h[i] = v % 256; v = Math.floor(v / 256); }
  } else h.write(size.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write(type, 156);
  if (opts.linkname) h.write(opts.linkname, 157);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return h;
}
const padded = (d: Buffer) => Buffer.concat([d, Buffer.alloc((512 - (d.length % 512)) % 512)]);

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return `${len}${body}`;
}

interface Entry { name: string; data?: Buffer; type?: string; long?: 'pax' | 'gnu'; base256?: boolean; linkname?: string }

function tar(entries: Entry[], end = true): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    let name = e.name;
    if (e.long === 'pax') {
      const pax = Buffer.from(paxRecord('path', e.name));
      parts.push(header('PaxHeaders/x', pax.length, 'x'), padded(pax));
      name = e.name.slice(-90);
    } else if (e.long === 'gnu') {
      const ln = Buffer.from(`${e.name}\0`);
      parts.push(header('././@LongLink', ln.length, 'L'), padded(ln));
      name = e.name.slice(0, 99);
    }
    parts.push(header(name, data.length, e.type ?? '0', e), padded(data));
  }
  if (end) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

// ------------------------------------------------------------------------------------------- fixtures
const solid = (w: number, h: number, rgb: [number, number, number]) =>
  sharp({ create: { width: w, height: h, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });

let dir: string;
let red: Buffer, green: Buffer, blueJpg: Buffer, rotated: Buffer, rgba: Buffer;

async function all<T>(it: AsyncIterable<T>, limit = Infinity): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) { out.push(x); if (out.length >= limit) break; }
  return out;
}

function colourOf(img: DecodedImage): number[] {
  // the mean colour, and check the image is uniform
  const n = img.width * img.height;
  const m = [0, 0, 0];
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) m[c] += img.data[i * 3 + c] / n;
  return m.map(Math.round);
}

function expectColour(img: DecodedImage, rgb: number[], tol = 0): void {
  colourOf(img).forEach((v, c) => expect(Math.abs(v - rgb[c]), `channel ${c}: ${v} vs ${rgb[c]}`).toBeLessThanOrEqual(tol));
}

async function rejects(it: AsyncIterable<unknown>, code: string, ...parts: (string | RegExp)[]): Promise<X2IError> {
  let err: unknown;
  try { await all(it); } catch (e) { err = e; }
  expect(err, 'expected an error').toBeInstanceOf(X2IError);
  const x = err as X2IError;
  expect(x.code, x.message).toBe(code);
  for (const p of parts) expect(x.message).toMatch(p);
  return x;
}

beforeAll(async () => {
  dir = tmpDir();
  red = await solid(8, 6, [255, 0, 0]).png().toBuffer();
  green = await solid(8, 6, [0, 255, 0]).png().toBuffer();
  blueJpg = await solid(8, 6, [0, 0, 255]).jpeg({ quality: 100 }).toBuffer();
  // 8 wide × 4 high, stored with EXIF orientation 6 (rotate 90° clockwise to display): displayed 4 × 8
  rotated = await solid(8, 4, [200, 100, 50]).jpeg({ quality: 100 }).withMetadata({ orientation: 6 }).toBuffer();
  // fully transparent black: on white it is white
  rgba = await sharp({ create: { width: 5, height: 3, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();

  const f = path.join(dir, 'folder');
  fs.mkdirSync(path.join(f, 'sub'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'refs'));
  fs.writeFileSync(path.join(f, 'a.png'), red);
  fs.writeFileSync(path.join(f, 'a.txt'), 'a red rectangle\n');
  fs.writeFileSync(path.join(f, 'b.jpg'), blueJpg);
  fs.writeFileSync(path.join(f, 'b.json'), JSON.stringify({ caption: 'blue', instruction: 'make it green', references: ['../refs/g.png'] }));
  fs.writeFileSync(path.join(f, 'sub', 'c.jpg'), rotated);
  fs.writeFileSync(path.join(f, 'sub', 'd.png'), rgba);
  fs.writeFileSync(path.join(f, 'notes.md'), 'not an image');
  fs.writeFileSync(path.join(dir, 'refs', 'g.png'), green);
  fs.writeFileSync(path.join(dir, 'red.png'), red);
  fs.writeFileSync(path.join(dir, 'green.png'), green);
});

// ------------------------------------------------------------------------------------------- tests
describe('decoding', () => {
  it('folder: sorted order, captions from .txt, .json sidecars with references, pixels, EXIF, alpha', async () => {
    const s = await all(fromFolder(path.join(dir, 'folder')));
    expect(s.map((x) => x.key)).toEqual(['a', 'b', 'sub/c', 'sub/d']);
    expect(s[0].caption).toBe('a red rectangle');
    expect(s[0].references).toEqual([]);
    expect([s[0].image.width, s[0].image.height, s[0].image.channels]).toEqual([8, 6, 3]);
    expect(s[0].image.data.length).toBe(8 * 6 * 3);
    expectColour(s[0].image, [255, 0, 0]);
    expect(s[1]).toMatchObject({ caption: 'blue', instruction: 'make it green', json: { caption: 'blue' } });
    expectColour(s[1].image, [0, 0, 255], 3);
    expect(s[1].references.length).toBe(1);
    expectColour(s[1].references[0], [0, 255, 0]);
    // EXIF orientation 6 swaps width and height
    expect([s[2].image.width, s[2].image.height]).toEqual([4, 8]);
    expectColour(s[2].image, [200, 100, 50], 4);
    // alpha flattened on white
    expect([s[3].image.width, s[3].image.height]).toEqual([5, 3]);
    expectColour(s[3].image, [255, 255, 255]);
    // the MLLM's image type takes these as they are
    const asRgb: RgbImage = s[0].image;
    expect(asRgb.channels).toBe(3);
    // not recursive
    expect((await all(fromFolder(path.join(dir, 'folder'), { recursive: false }))).map((x) => x.key)).toEqual(['a', 'b']);
  });

  it('resize: fixed (target and references alike) and per image from the oriented size', async () => {
    const s = await all(fromFolder(path.join(dir, 'folder'), { resize: { width: 4, height: 4, fit: 'fill' } }));
    for (const x of s) for (const im of [x.image, ...x.references]) expect([im.width, im.height, im.data.length]).toEqual([4, 4, 48]);
    expectColour(s[0].image, [255, 0, 0]);
    const seen: string[] = [];
    const t = await all(fromFolder(path.join(dir, 'folder', 'sub'), {
      resize: (size, role, key) => { seen.push(`${key}:${role}:${size.width}x${size.height}`); return { width: size.width * 2, height: size.height * 2 }; },
    }));
    expect(seen.sort()).toEqual(['c:image:4x8', 'd:image:5x3']);
    expect([t[0].image.width, t[0].image.height]).toEqual([8, 16]);
    const inside = await all(fromFolder(path.join(dir, 'folder'), { recursive: false, resize: { width: 4, height: 4, fit: 'inside' } }));
    expect([inside[0].image.width, inside[0].image.height]).toEqual([4, 3]);
  });

  it('JSONL: relative and absolute paths, reference(s), blank lines, keys, field names', async () => {
    const file = path.join(dir, 'm.jsonl');
    fs.writeFileSync(file, [
      JSON.stringify({ image: 'red.png', caption: 'r', references: ['green.png', path.join(dir, 'red.png')] }),
      '',
      JSON.stringify({ id: 7, image: path.join(dir, 'green.png'), instruction: 'redden', reference: 'red.png' }),
    ].join('\n') + '\n');
    const s = await all(fromJsonl(file));
    expect(s.map((x) => x.key)).toEqual(['1', '7']);
    expect(s[0].caption).toBe('r');
    expectColour(s[0].image, [255, 0, 0]);
    expect(s[0].references.map(colourOf)).toEqual([[0, 255, 0], [255, 0, 0]]);
    expect(s[1].instruction).toBe('redden');
    expectColour(s[1].image, [0, 255, 0]);
    expectColour(s[1].references[0], [255, 0, 0]);
    const other = path.join(dir, 'other.jsonl');
    fs.writeFileSync(other, JSON.stringify({ target: 'refs/g.png', text: 'g', src: ['red.png'] }) + '\n');
    const t = await all(fromJsonl(other, { fields: { image: 'target', caption: 'text', references: 'src' } }));
    expect(t[0].caption).toBe('g');
    expectColour(t[0].image, [0, 255, 0]);
    expectColour(t[0].references[0], [255, 0, 0]);
    // root
    const sub = path.join(dir, 'refs', 'r.jsonl');
    fs.writeFileSync(sub, JSON.stringify({ image: 'red.png' }) + '\n');
    expectColour((await all(fromJsonl(sub, { root: dir })))[0].image, [255, 0, 0]);
  });
});

describe('WebDataset', () => {
  let shards: string;
  beforeAll(() => {
    shards = path.join(dir, 'wds');
    fs.mkdirSync(shards);
    fs.writeFileSync(path.join(shards, 'data-000.tar'), tar([
      { name: 'dir0', type: '5' },
      { name: 's1.jpg', data: blueJpg },
      { name: 's1.png', data: green },
      { name: 's1.json', data: Buffer.from(JSON.stringify({ caption: 'c1', style_zh: '风格', caption_zh: '图' })) },
      { name: 'link', type: '2', linkname: 's1.jpg' },
      { name: 's2.jpg', data: blueJpg, base256: true },
      { name: 's2.txt', data: Buffer.from('caption two\n') },
    ]));
    const deep = `${'very-long-folder-name/'.repeat(6)}s3`;
    fs.writeFileSync(path.join(shards, 'data-001.tar'), tar([
      { name: `${deep}.png`, data: red, long: 'pax' },
      { name: `${deep}.json`, data: Buffer.from('{"instruction":"i3"}'), long: 'gnu' },
      { name: './s4.png', data: rgba },
      { name: './s4.ref0.jpg', data: blueJpg },
      { name: 'README', data: Buffer.from('no extension: skipped') },
    ], false)); // no end-of-archive blocks
  });

  it('groups members by key across brace-expanded shards: targets, references, captions, long names', async () => {
    const s = await all(fromWebDataset(path.join(shards, 'data-{000..001}.tar')));
    expect(s.map((x) => x.key)).toEqual(['s1', 's2', `${'very-long-folder-name/'.repeat(6)}s3`, 's4']);
    expect(s[0]).toMatchObject({ caption: 'c1', instruction: '风格', json: { caption_zh: '图' } });
    expectColour(s[0].image, [0, 255, 0]); // png target
    expect(s[0].references.length).toBe(1);
    expectColour(s[0].references[0], [0, 0, 255], 3); // jpg source
    expect(s[1].caption).toBe('caption two');
    expect(s[1].references).toEqual([]);
    expectColour(s[1].image, [0, 0, 255], 3);
    expect(s[2].instruction).toBe('i3');
    expectColour(s[2].image, [255, 0, 0]);
    expect(s[3].key).toBe('s4'); // key = up to the first dot of the basename: s4.ref0.jpg is s4's "ref0.jpg"
    expectColour(s[3].image, [255, 255, 255]);
    expect(s[3].references.length).toBe(1);
    expectColour(s[3].references[0], [0, 0, 255], 3);
  });

  it('a custom map sees the groups; null drops a sample', async () => {
    const seen: string[] = [];
    const s = await all(fromWebDataset([path.join(shards, 'data-000.tar')], {
      map: (g) => { seen.push(`${g.key}:${Object.keys(g.files).sort().join(',')}`); return g.key === 's2' ? null : { image: g.files.jpg, caption: 'x' }; },
    }));
    expect(seen).toEqual(['s1:jpg,json,png', 's2:jpg,txt']);
    expect(s.map((x) => [x.key, x.caption])).toEqual([['s1', 'x']]);
    expect(defaultWebDatasetMap({ key: 'k', shard: 'x', files: { json: Buffer.from('{}') } })).toBeNull();
  });

  it('brace expansion', () => {
    expect(expandBraces('d-{000..002}.tar')).toEqual(['d-000.tar', 'd-001.tar', 'd-002.tar']);
    expect(expandBraces('{a,b}-{1..2}')).toEqual(['a-1', 'a-2', 'b-1', 'b-2']);
    expect(expandBraces('plain.tar')).toEqual(['plain.tar']);
  });

  it('hostile shards: each an ERR_BAD_DATA naming the shard and the member or offset, never a hang', async () => {
    const good = fs.readFileSync(path.join(shards, 'data-000.tar'));
    const w = (name: string, b: Buffer) => { const p = path.join(dir, name); fs.writeFileSync(p, b); return p; };
    // truncated in the middle of a member
    const png = good.indexOf(Buffer.from('s1.png\0'));
    const cut = w('cut.tar', good.subarray(0, png + 512 + 100));
    await rejects(fromWebDataset(cut), 'ERR_BAD_DATA', 'cut.tar', `"s1.png" at offset ${png}`, /past the end/);
    const jpg = good.indexOf(Buffer.from('s1.jpg\0'));
    await rejects(fromWebDataset(w('cut2.tar', good.subarray(0, jpg + 512 + 100))), 'ERR_BAD_DATA', 'cut2.tar', `"s1.jpg" at offset ${jpg}`, /past the end/);
    // truncated header
    await rejects(fromWebDataset(w('half.tar', good.subarray(0, 700))), 'ERR_BAD_DATA', 'half.tar', /truncated tar header at offset 512/);
    // a size beyond the file
    await rejects(fromWebDataset(w('big.tar', Buffer.concat([header('x.png', 1e9, '0'), Buffer.alloc(1024)]))), 'ERR_BAD_DATA',
      'big.tar', '"x.png"', /past the end/);
    // a member over the limit
    await rejects(fromWebDataset(path.join(shards, 'data-000.tar'), { maxMemberBytes: 100 }), 'ERR_BAD_DATA',
      'data-000.tar', '"s1.jpg"', 'maxMemberBytes');
    // not a tar file, an empty file
    await rejects(fromWebDataset(w('text.tar', Buffer.from('hello world\n'.repeat(100)))), 'ERR_BAD_DATA', 'text.tar', 'not a tar archive');
    await rejects(fromWebDataset(w('empty.tar', Buffer.alloc(0))), 'ERR_BAD_DATA', 'empty.tar', 'not a tar archive');
    // a corrupted header checksum later in the file
    const at = good.indexOf(Buffer.from('s1.png\0'));
    const bad2 = Buffer.from(good);
    bad2[at + 1] ^= 0x01;
    await rejects(fromWebDataset(w('sum.tar', bad2)), 'ERR_BAD_DATA', 'sum.tar', `checksum at offset ${at}`);
    // an invalid size field
    const h = header('y.png', 3, '0');
    h.write('12x', 124);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    await rejects(fromWebDataset(w('size.tar', Buffer.concat([h, Buffer.alloc(1536)]))), 'ERR_BAD_DATA', 'size.tar', '"y.png"', 'invalid size');
    // a corrupt image names shard:member
    await rejects(fromWebDataset(w('img.tar', tar([{ name: 'k.png', data: Buffer.from('not a png at all') }]))), 'ERR_IMAGE', 'img.tar:k.png');
    // a missing shard
    await rejects(fromWebDataset(path.join(dir, 'nope-{0..1}.tar')), 'ERR_FILE_NOT_FOUND', 'nope-0.tar');
    // a bad json member
    await rejects(fromWebDataset(w('json.tar', tar([{ name: 'k.png', data: red }, { name: 'k.json', data: Buffer.from('{oops') }]))),
      'ERR_BAD_DATA', 'json.tar:k.json');
  });
});

describe('JSONL and folder errors', () => {
  it('a bad line names file:line; a missing image names its path; a corrupt image names its file', async () => {
    const file = path.join(dir, 'bad.jsonl');
    fs.writeFileSync(file, `${JSON.stringify({ image: 'red.png' })}\n{not json}\n`);
    await rejects(fromJsonl(file), 'ERR_BAD_DATA', `${file}:2`);
    fs.writeFileSync(file, `${JSON.stringify({ image: 'red.png' })}\n[1]\n`);
    await rejects(fromJsonl(file), 'ERR_BAD_DATA', `${file}:2`, 'object');
    fs.writeFileSync(file, `${JSON.stringify({ caption: 'no image' })}\n`);
    await rejects(fromJsonl(file), 'ERR_BAD_DATA', `${file}:1`, '"image"');
    fs.writeFileSync(file, `${JSON.stringify({ image: 'missing.png' })}\n`);
    await rejects(fromJsonl(file), 'ERR_FILE_NOT_FOUND', path.join(dir, 'missing.png'), `${file}:1`);
    fs.writeFileSync(path.join(dir, 'corrupt.png'), Buffer.from('garbage'));
    fs.writeFileSync(file, `${JSON.stringify({ image: 'corrupt.png' })}\n`);
    await rejects(fromJsonl(file), 'ERR_IMAGE', 'corrupt.png');
    await rejects(fromJsonl(path.join(dir, 'absent.jsonl')), 'ERR_FILE_NOT_FOUND', 'absent.jsonl');
    await rejects(fromFolder(path.join(dir, 'absent')), 'ERR_FILE_NOT_FOUND', 'absent');
    expect(() => fromFolder(dir, { prefetch: 0 })).toThrow(/prefetch/);
    expect(() => fromFolder(dir, { shard: { rank: 2, worldSize: 2 } })).toThrow(/shard/);
  });
});

describe('streaming', () => {
  let manifest: string;
  const keys = (s: TrainingSample[]) => s.map((x) => x.key);
  beforeAll(() => {
    manifest = path.join(dir, 'many.jsonl');
    const lines = Array.from({ length: 12 }, (_, i) => JSON.stringify({ key: `k${i}`, image: i < 3 ? `missing-${i}.png` : 'red.png' }));
    fs.writeFileSync(manifest, lines.join('\n'));
  });
  const twelve = Array.from({ length: 12 }, (_, i) => `k${i}`);

  it('skip resumes without decoding the skipped samples (their images do not exist)', async () => {
    const s = await all(fromJsonl(manifest, { skip: 3 }));
    expect(keys(s)).toEqual(twelve.slice(3));
    await rejects(fromJsonl(manifest), 'ERR_FILE_NOT_FOUND', 'missing-0.png');
  });

  it('shard: every worldSize-th sample from rank', async () => {
    expect(keys(await all(fromJsonl(manifest, { skip: 1, shard: { rank: 1, worldSize: 3 } })))).toEqual(['k4', 'k7', 'k10']);
  });

  it('shuffle: a deterministic permutation per seed, and skip continues it', async () => {
    // the first three cannot be decoded: skip them via a map-free manifest of decodable images
    const m = path.join(dir, 'ok.jsonl');
    fs.writeFileSync(m, twelve.map((k) => JSON.stringify({ key: k, image: 'red.png' })).join('\n'));
    const a = keys(await all(fromJsonl(m, { shuffle: { seed: 1, buffer: 5 } })));
    const b = keys(await all(fromJsonl(m, { shuffle: { seed: 1, buffer: 5 } })));
    const c = keys(await all(fromJsonl(m, { shuffle: { seed: 2, buffer: 5 } })));
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(a).not.toEqual(twelve);
    expect([...a].sort()).toEqual([...twelve].sort());
    expect(keys(await all(fromJsonl(m, { shuffle: { seed: 1, buffer: 5 }, skip: 7 })))).toEqual(a.slice(7));
    // repeat: epochs follow each other, each shuffled with its own seed; skip counts across epochs
    const r = keys(await all(fromJsonl(m, { repeat: true, shuffle: { seed: 1, buffer: 5 } }), 30));
    expect(r.slice(0, 12)).toEqual(a);
    expect([...r.slice(12, 24)].sort()).toEqual([...twelve].sort());
    expect(r.slice(12, 24)).not.toEqual(a);
    expect(keys(await all(fromJsonl(m, { repeat: true, shuffle: { seed: 1, buffer: 5 }, skip: 14 }), 10))).toEqual(r.slice(14, 24));
    // repeat without shuffle cycles in order; an empty source ends instead of spinning
    expect(keys(await all(fromJsonl(m, { repeat: true }), 14))).toEqual([...twelve, 'k0', 'k1']);
    const empty = path.join(dir, 'empty.jsonl');
    fs.writeFileSync(empty, '\n');
    expect(await all(fromJsonl(empty, { repeat: true }))).toEqual([]);
    // re-iterable
    const ds = fromJsonl(m, { skip: 10 });
    expect(keys(await all(ds))).toEqual(keys(await all(ds)));
  });

  it('abort via signal: before the start and in the middle', async () => {
    const m = path.join(dir, 'ok.jsonl');
    const ac = new AbortController();
    ac.abort();
    await expect(all(fromJsonl(m, { signal: ac.signal }))).rejects.toThrow();
    const ac2 = new AbortController();
    const got: string[] = [];
    let err: unknown;
    try {
      for await (const s of fromJsonl(m, { signal: ac2.signal, repeat: true })) {
        got.push(s.key);
        if (got.length === 3) ac2.abort(new Error('stop here'));
      }
    } catch (e) { err = e; }
    expect((err as Error).message).toBe('stop here');
    expect(got.length).toBe(3);
  });

  it('prefetch: keeps order, reads n ahead, surfaces an error where it occurred', async () => {
    let inFlight = 0, maxInFlight = 0, calls = 0;
    const slow = (count: number, failAt = -1): AsyncIterable<number> => ({
      [Symbol.asyncIterator]: () => {
        let i = 0;
        return {
          next: async () => {
            const k = i++;
            calls++;
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            await new Promise((r) => setTimeout(r, 15 - (k % 3) * 5)); // later items may finish first
            inFlight--;
            if (k === failAt) throw new Error(`bad ${k}`);
            return k < count ? { done: false, value: k } : { done: true, value: undefined };
          },
        };
      },
    });
    expect(await all(prefetch(slow(12), 4))).toEqual(Array.from({ length: 12 }, (_, i) => i));
    expect(maxInFlight).toBe(4); // concurrent, bounded
    // after the first item is taken the source has been asked for more
    maxInFlight = 0; calls = 0;
    const it = prefetch(slow(12), 3)[Symbol.asyncIterator]();
    expect((await it.next()).value).toBe(0);
    expect(calls).toBeGreaterThanOrEqual(3);
    await it.return?.();
    // an error at item 2: 0 and 1 come first, then the error, then nothing
    const got: number[] = [];
    let err: unknown;
    try { for await (const x of prefetch(slow(12, 2), 4)) got.push(x); } catch (e) { err = e; }
    expect(got).toEqual([0, 1]);
    expect((err as Error).message).toBe('bad 2');
    // sync iterables too
    expect(await all(prefetch([1, 2, 3], 2))).toEqual([1, 2, 3]);
  });

  it('decoding reads ahead: prefetch samples are decoded while the consumer holds one, no more', async () => {
    const m = path.join(dir, 'ok.jsonl');
    const decoded: string[] = [];
    const it = fromJsonl(m, { prefetch: 4, resize: (size, _role, key) => { decoded.push(key); return undefined; } })[Symbol.asyncIterator]();
    expect((await it.next()).value.key).toBe('k0');
    await new Promise((r) => setTimeout(r, 150));
    expect([...decoded].sort()).toEqual(['k0', 'k1', 'k2', 'k3', 'k4']); // decoded concurrently, in any order
    expect((await it.next()).value.key).toBe('k1');
    await new Promise((r) => setTimeout(r, 100));
    expect(decoded.length).toBe(6);
    await it.return?.();
  });

  it('is exported from the package as datasets', async () => {
    const x2i = await import('../../lib/index.js');
    expect(typeof x2i.datasets.fromWebDataset).toBe('function');
    expect(typeof x2i.datasets.prefetch).toBe('function');
  });
});
