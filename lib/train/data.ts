/**
 * Training data the way image datasets ship: folders (images + same-stem `.txt`/`.json` sidecars), JSONL manifests
 * (image paths + captions/instructions) and WebDataset tar shards (members grouped by key, as the official X2I
 * LightControl data is: `<key>.jpg` source, optional `<key>.png` stylised target, `<key>.json` metadata).
 *
 * Every reader is a re-iterable `AsyncIterable<TrainingSample>`. Records are listed cheaply first (paths, tar
 * members, metadata); sharding, the shuffle buffer and `skip` act on records, and only the samples that are
 * yielded are decoded, `prefetch` of them at a time, by sharp on libuv's thread pool (off the main thread).
 *
 * Trust: JSONL and sidecar paths are resolved against the manifest's folder (or `root`); absolute paths are
 * allowed (the data is local and trusted to name its own files). Tar shards are hostile input: every header is
 * checksummed, every size checked against the file and `maxMemberBytes`, and each failure is an X2IError
 * (ERR_BAD_DATA) naming the shard, the member and its offset. Shards are streamed, never read whole.
 *
 * Memory: a WebDataset record holds its members' bytes, so a shuffle buffer of b samples holds b samples' encoded
 * bytes (folder and JSONL records hold only paths). Decoding runs on libuv's thread pool (UV_THREADPOOL_SIZE,
 * default 4 threads), so `prefetch` beyond that queues rather than decodes in parallel.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { X2IError, invalidArg } from '../core/errors.js';
import { loadSharp, orientedImage, orientedSize, rgbBytes } from '../core/image_decode.js';
import { mulberry32 } from './optimizer.js';

/** A decoded image: interleaved RGB uint8, row-major (an `RgbImage` of lib/models/qwen_vision.ts). */
export interface DecodedImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: 3;
}

export interface TrainingSample {
  key: string;
  /** The target image. */
  image: DecodedImage;
  /** Source / reference images (0..n). */
  references: DecodedImage[];
  /** Text prompt. */
  caption?: string;
  /** Editing instruction. */
  instruction?: string;
  /** The raw metadata record (JSONL line, `.json` sidecar or member). */
  json?: Record<string, unknown>;
}

/** An image before decoding: encoded bytes, a file path, or pixels already decoded. */
export type ImageInput = Uint8Array | string | DecodedImage;

/** What a WebDataset `map` returns: a sample whose images are not decoded yet. */
export interface SampleInput {
  key?: string;
  image: ImageInput;
  references?: ImageInput[];
  caption?: string;
  instruction?: string;
  json?: Record<string, unknown>;
}

export interface ResizeSpec {
  width: number;
  height: number;
  /** sharp's fit: 'cover' (crop to fill, default), 'fill' (stretch), 'inside' (fit within, keep aspect). */
  fit?: 'cover' | 'fill' | 'inside';
}

/** A fixed size for every image, or a choice per image from its (EXIF-oriented) size; undefined keeps it. */
export type ResizeOption = ResizeSpec
  | ((size: { width: number; height: number }, role: 'image' | 'reference', key: string) => ResizeSpec | undefined);

export interface DatasetOptions {
  /** Samples decoded ahead, concurrently (default 4). */
  prefetch?: number;
  /** Resize the target and the references alike (sharp), or per image. */
  resize?: ResizeOption;
  /** A deterministic shuffle buffer (epoch e uses seed + e). */
  shuffle?: { seed: number; buffer: number };
  /** Start over at the end, forever (an epoch with no samples ends the stream instead). */
  repeat?: boolean;
  /** Resume: skip the first n samples this reader would yield (after shard and shuffle), without decoding them. */
  skip?: number;
  signal?: AbortSignal;
  /** Every worldSize-th record, starting at rank (counted per epoch, before the shuffle). */
  shard?: { rank: number; worldSize: number };
}

export interface FolderOptions extends DatasetOptions {
  /** Descend into subfolders (default true). */
  recursive?: boolean;
  /** Image extensions, lowercase without the dot (default jpg, jpeg, png, webp, avif, tif, tiff, gif). */
  extensions?: string[];
}

export interface JsonlFields {
  image?: string;
  caption?: string;
  instruction?: string;
  references?: string;
}

export interface JsonlOptions extends DatasetOptions {
  /** The folder relative paths are resolved against (default: the JSONL file's folder). */
  root?: string;
  /** Field names (defaults: image, caption, instruction, references — `reference` is read too). */
  fields?: JsonlFields;
}

/** The members of one WebDataset sample: `files` maps an extension (lowercased, e.g. `jpg`, `json`) to bytes. */
export interface WebDatasetGroup {
  key: string;
  shard: string;
  files: Record<string, Buffer>;
}

export interface WebDatasetOptions extends DatasetOptions {
  /** Turns a group into a sample; null/undefined drops it. The default is `defaultWebDatasetMap`. */
  map?: (group: WebDatasetGroup) => SampleInput | null | undefined;
  /** The largest member read (default 256 MiB); a larger one is an error. */
  maxMemberBytes?: number;
}

// ---------------------------------------------------------------------------------------------------------------
// records: a sample before decoding

interface ImageRef {
  input: ImageInput;
  /** Where it came from, for errors: a path, `shard:member`, `file:line`. */
  name: string;
}

interface SampleRecord {
  key: string;
  image: ImageRef;
  references: ImageRef[];
  caption?: string;
  instruction?: string;
  json?: Record<string, unknown>;
}

type RecordSource = (epoch: number, signal?: AbortSignal) => AsyncIterable<SampleRecord>;

const badData = (msg: string, cause?: unknown) => new X2IError(msg, 'ERR_BAD_DATA', cause === undefined ? undefined : { cause });

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isDecoded(v: ImageInput): v is DecodedImage {
  return typeof v === 'object' && !(v instanceof Uint8Array);
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

// ---------------------------------------------------------------------------------------------------------------
// options

interface Checked {
  prefetch: number;
  resize?: ResizeOption;
  shuffle?: { seed: number; buffer: number };
  repeat: boolean;
  skip: number;
  signal?: AbortSignal;
  shard?: { rank: number; worldSize: number };
}

function isCount(v: unknown, min: number): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= min;
}

function checkResize(r: ResizeSpec, what: string): ResizeSpec {
  if (typeof r !== 'object' || r === null || !isCount(r.width, 1) || !isCount(r.height, 1) || r.width > 65536 || r.height > 65536)
    throw invalidArg(what, '{ width, height } of positive integers ≤ 65536', r);
  if (r.fit !== undefined && r.fit !== 'cover' && r.fit !== 'fill' && r.fit !== 'inside')
    throw invalidArg(`${what}.fit`, "'cover', 'fill' or 'inside'", r.fit);
  return r;
}

function checkOptions(o: DatasetOptions | undefined): Checked {
  if (o === undefined) return { prefetch: 4, repeat: false, skip: 0 };
  if (typeof o !== 'object' || o === null) throw invalidArg('dataset options', 'an object', o);
  const prefetch = o.prefetch ?? 4;
  if (!isCount(prefetch, 1) || prefetch > 1024) throw invalidArg('prefetch', 'an integer in [1, 1024]', prefetch);
  const skip = o.skip ?? 0;
  if (!isCount(skip, 0)) throw invalidArg('skip', 'a non-negative integer', skip);
  if (o.resize !== undefined && typeof o.resize !== 'function') checkResize(o.resize, 'resize');
  if (o.shuffle !== undefined) {
    if (typeof o.shuffle !== 'object' || o.shuffle === null || typeof o.shuffle.seed !== 'number' || !Number.isFinite(o.shuffle.seed)
      || !isCount(o.shuffle.buffer, 1) || o.shuffle.buffer > 10_000_000)
      throw invalidArg('shuffle', '{ seed: number, buffer: integer in [1, 1e7] }', o.shuffle);
  }
  if (o.shard !== undefined) {
    const s = o.shard;
    if (typeof s !== 'object' || s === null || !isCount(s.worldSize, 1) || !isCount(s.rank, 0) || s.rank >= s.worldSize)
      throw invalidArg('shard', '{ rank, worldSize } with 0 ≤ rank < worldSize', s);
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw invalidArg('signal', 'an AbortSignal', o.signal);
  return { prefetch, resize: o.resize, shuffle: o.shuffle, repeat: o.repeat === true, skip, signal: o.signal, shard: o.shard };
}

// ---------------------------------------------------------------------------------------------------------------
// generic stages

/**
 * Bounded read-ahead: keeps up to `n` `next()` calls of the source in flight, yields in the source's order, and
 * surfaces an error at the position where it occurred (nothing after it is yielded).
 */
export function prefetch<T>(source: AsyncIterable<T> | Iterable<T>, n: number): AsyncIterable<T> {
  if (!isCount(n, 1)) throw invalidArg('prefetch', 'a positive integer', n);
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      const it: AsyncIterator<T> | Iterator<T> = Symbol.asyncIterator in source
        ? source[Symbol.asyncIterator]() : source[Symbol.iterator]();
      const queue: Promise<IteratorResult<T>>[] = [];
      let exhausted = false; // the source said done or threw: issue no more
      let finished = false;
      const fill = () => {
        while (!exhausted && queue.length < n) {
          const p = Promise.resolve().then(() => it.next());
          p.then((r) => { if (r.done) exhausted = true; }, () => { exhausted = true; });
          queue.push(p);
        }
      };
      return {
        async next(): Promise<IteratorResult<T>> {
          if (finished) return { done: true, value: undefined };
          fill();
          const p = queue.shift();
          if (!p) { finished = true; return { done: true, value: undefined }; }
          try {
            const r = await p;
            if (r.done) { finished = true; queue.length = 0; return { done: true, value: undefined }; }
            fill();
            return { done: false, value: r.value };
          } catch (e) {
            finished = true;
            exhausted = true;
            for (const q of queue) q.catch(() => undefined);
            queue.length = 0;
            throw e;
          }
        },
        async return(): Promise<IteratorResult<T>> {
          const wasFinished = finished;
          finished = true;
          exhausted = true;
          for (const q of queue) q.catch(() => undefined);
          queue.length = 0;
          if (!wasFinished && typeof it.return === 'function') {
            // close the source (its finally blocks run) without making the caller wait on in-flight work
            Promise.resolve().then(() => it.return?.()).catch(() => undefined);
          }
          return { done: true, value: undefined };
        },
      };
    },
  };
}

/** An async iterator whose concurrent next() calls each map one source item (the source's calls serialize). */
function mapped<A, B>(source: AsyncIterator<A>, fn: (a: A) => Promise<B>): AsyncIterable<B> {
  const it: AsyncIterator<B> = {
    next: async () => {
      const r = await source.next();
      return r.done ? { done: true, value: undefined } : { done: false, value: await fn(r.value) };
    },
    return: async () => {
      await source.return?.();
      return { done: true, value: undefined };
    },
  };
  return { [Symbol.asyncIterator]: () => it };
}

/** A seeded PRNG, uniform in [0, 1) (mulberry32, the seed spread). */
function rng(seed: number): () => number {
  return mulberry32(Math.floor(seed) ^ 0x9e3779b9);
}

async function* shuffled<T>(src: AsyncIterable<T>, buffer: number, seed: number): AsyncGenerator<T> {
  const rand = rng(seed);
  const buf: T[] = [];
  for await (const x of src) {
    if (buf.length < buffer) { buf.push(x); continue; }
    const j = Math.floor(rand() * buffer);
    const out = buf[j];
    buf[j] = x;
    yield out;
  }
  while (buf.length > 0) {
    const j = Math.floor(rand() * buf.length);
    const out = buf[j];
    buf[j] = buf[buf.length - 1];
    buf.pop();
    yield out;
  }
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new X2IError('the dataset read was aborted', 'ERR_ABORTED');
}

/** The records of every epoch after shard, shuffle and skip. */
async function* records(source: RecordSource, o: Checked): AsyncGenerator<SampleRecord> {
  let toSkip = o.skip;
  for (let epoch = 0; ; epoch++) {
    let seen = 0;
    let src: AsyncIterable<SampleRecord> = source(epoch, o.signal);
    if (o.shard) src = sharded(src, o.shard.rank, o.shard.worldSize);
    if (o.shuffle) src = shuffled(src, o.shuffle.buffer, o.shuffle.seed + epoch);
    for await (const r of src) {
      seen++;
      if (o.signal?.aborted) throw abortError(o.signal);
      if (toSkip > 0) { toSkip--; continue; }
      yield r;
    }
    if (!o.repeat || seen === 0) return;
  }
}

async function* sharded<T>(src: AsyncIterable<T>, rank: number, worldSize: number): AsyncGenerator<T> {
  let i = 0;
  for await (const x of src) if (i++ % worldSize === rank) yield x;
}

/** A re-iterable dataset: records → decode (prefetch at a time) → abortable. */
function dataset(source: RecordSource, opts: DatasetOptions | undefined): AsyncIterable<TrainingSample> {
  const o = checkOptions(opts);
  return {
    [Symbol.asyncIterator]: () => run(source, o)[Symbol.asyncIterator](),
  };
}

async function* run(source: RecordSource, o: Checked): AsyncGenerator<TrainingSample> {
  const signal = o.signal;
  signal?.throwIfAborted();
  const decoded = prefetch(mapped(records(source, o), (r) => decodeRecord(r, o.resize)), o.prefetch);
  const it = decoded[Symbol.asyncIterator]();
  let onAbort: (() => void) | undefined;
  const aborted = signal ? new Promise<never>((_, reject) => {
    onAbort = () => reject(abortError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
  }) : undefined;
  aborted?.catch(() => undefined);
  try {
    for (;;) {
      signal?.throwIfAborted();
      const r = aborted ? await Promise.race([it.next(), aborted]) : await it.next();
      if (r.done) return;
      yield r.value;
    }
  } finally {
    if (signal && onAbort) signal.removeEventListener('abort', onAbort);
    await it.return?.();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// decoding (sharp, on libuv's thread pool)

async function decodeImage(ref: ImageRef, resize: ResizeOption | undefined, role: 'image' | 'reference', key: string): Promise<DecodedImage> {
  const { input, name } = ref;
  let bytes: Uint8Array;
  let raw: { width: number; height: number; channels: 3 } | undefined;
  if (typeof input === 'string') {
    try {
      bytes = await fsp.readFile(input);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new X2IError(code === 'ENOENT' ? `${name}: image file not found: ${input}` : `${name}: cannot read image ${input}: ${(e as Error).message}`,
        code === 'ENOENT' ? 'ERR_FILE_NOT_FOUND' : 'ERR_IO', { cause: e });
    }
  } else if (isDecoded(input)) {
    const { width, height, data } = input;
    if (!isCount(width, 1) || !isCount(height, 1) || !(data instanceof Uint8Array) || data.length !== width * height * 3)
      throw new X2IError(`${name}: a decoded image must be RGB uint8 of width×height×3 bytes`, 'ERR_IMAGE');
    if (resize === undefined) return { data, width, height, channels: 3 };
    bytes = data;
    raw = { width, height, channels: 3 };
  } else {
    bytes = input;
  }
  try {
    // the shared reader (lib/core/image_decode.ts): EXIF orientation applied, alpha composited on white
    let img = raw ? (await loadSharp())(bytes, { raw }) : await orientedImage(bytes, { failOn: 'error' });
    let spec: ResizeSpec | undefined;
    if (typeof resize === 'function') {
      const size = raw ? { width: raw.width, height: raw.height } : orientedSize(await img.metadata());
      const s = resize(size, role, key);
      spec = s === undefined ? undefined : checkResize(s, 'resize()');
    } else spec = resize;
    if (spec) img = img.resize(spec.width, spec.height, { fit: spec.fit ?? 'cover' });
    return await rgbBytes(img);
  } catch (e) {
    if (e instanceof X2IError) throw e;
    throw new X2IError(`${name}: cannot decode image: ${(e as Error).message}`, 'ERR_IMAGE', { cause: e });
  }
}

async function decodeRecord(r: SampleRecord, resize: ResizeOption | undefined): Promise<TrainingSample> {
  const [image, ...references] = await Promise.all([
    decodeImage(r.image, resize, 'image', r.key),
    ...r.references.map((ref) => decodeImage(ref, resize, 'reference', r.key)),
  ]);
  const s: TrainingSample = { key: r.key, image, references };
  if (r.caption !== undefined) s.caption = r.caption;
  if (r.instruction !== undefined) s.instruction = r.instruction;
  if (r.json !== undefined) s.json = r.json;
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// folders

const IMAGE_EXTS = ['jpg', 'jpeg', 'png', 'webp', 'avif', 'tif', 'tiff', 'gif'];

async function listFiles(dir: string, recursive: boolean, rel = ''): Promise<string[]> {
  const entries = await fsp.readdir(path.join(dir, rel), { withFileTypes: true });
  const out: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) { if (recursive) out.push(...await listFiles(dir, recursive, r)); } else if (e.isFile()) out.push(r);
  }
  return out;
}

const byCodepoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

async function readSidecar(file: string): Promise<string | undefined> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new X2IError(`cannot read ${file}: ${(e as Error).message}`, 'ERR_IO', { cause: e });
  }
}

function referenceList(v: unknown, where: string): string[] {
  if (v === undefined || v === null) return [];
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v;
  throw badData(`${where}: references must be a path or an array of paths`);
}

/**
 * Images of a folder (sorted by relative path; subfolders unless `recursive: false`), each with optional
 * same-stem sidecars: `<stem>.txt` (the caption) and `<stem>.json` (caption, instruction, references: paths
 * relative to the image's folder). The key is the relative path without the extension. Images named as
 * references are still listed as samples of their own: keep references in another folder.
 */
export function fromFolder(dir: string, opts?: FolderOptions): AsyncIterable<TrainingSample> {
  if (typeof dir !== 'string' || dir === '') throw invalidArg('dir', 'a folder path', dir);
  const recursive = opts?.recursive ?? true;
  const exts = new Set((opts?.extensions ?? IMAGE_EXTS).map((e) => e.toLowerCase().replace(/^\./, '')));
  let listing: Promise<string[]> | undefined;
  const source: RecordSource = async function* () {
    listing ??= (async () => {
      try {
        return (await listFiles(dir, recursive)).sort(byCodepoint);
      } catch (e) {
        listing = undefined;
        const code = (e as NodeJS.ErrnoException).code;
        throw new X2IError(`cannot list the dataset folder ${dir}: ${(e as Error).message}`,
          code === 'ENOENT' ? 'ERR_FILE_NOT_FOUND' : 'ERR_IO', { cause: e });
      }
    })();
    const files = await listing;
    const all = new Set(files);
    for (const rel of files) {
      const ext = path.extname(rel);
      if (!exts.has(ext.slice(1).toLowerCase())) continue;
      const stem = rel.slice(0, rel.length - ext.length);
      const abs = path.join(dir, rel);
      const rec: SampleRecord = { key: stem, image: { input: abs, name: abs }, references: [] };
      if (all.has(`${stem}.txt`)) {
        const t = await readSidecar(path.join(dir, `${stem}.txt`));
        if (t !== undefined) rec.caption = t.trim();
      }
      if (all.has(`${stem}.json`)) {
        const jf = path.join(dir, `${stem}.json`);
        const text = await readSidecar(jf);
        if (text !== undefined) {
          let j: unknown;
          try { j = JSON.parse(text); } catch (e) { throw badData(`${jf}: not valid JSON: ${(e as Error).message}`, e); }
          if (!isRecord(j)) throw badData(`${jf}: expected a JSON object`);
          rec.json = j;
          rec.caption = str(j.caption) ?? rec.caption;
          rec.instruction = str(j.instruction);
          const base = path.dirname(abs);
          rec.references = referenceList(j.references ?? j.reference, jf)
            .map((p) => ({ input: path.resolve(base, p), name: `${jf}: reference ${p}` }));
        }
      }
      yield rec;
    }
  };
  return dataset(source, opts);
}

// ---------------------------------------------------------------------------------------------------------------
// JSONL

/**
 * A JSONL manifest: one object a line, e.g. `{"image": "a.png", "caption": "...", "instruction": "...",
 * "references": ["src.jpg"]}` (or `"reference": "src.jpg"`); blank lines are skipped. Relative paths resolve
 * against `root` (default: the manifest's folder), absolute paths are taken as they are. The key is the line's
 * `key` or `id`, else `<line number>`.
 */
export function fromJsonl(file: string, opts?: JsonlOptions): AsyncIterable<TrainingSample> {
  if (typeof file !== 'string' || file === '') throw invalidArg('file', 'a JSONL file path', file);
  const f = { image: 'image', caption: 'caption', instruction: 'instruction', references: 'references', ...opts?.fields };
  const root = path.resolve(opts?.root ?? path.dirname(file));
  const source: RecordSource = async function* () {
    let stream: fs.ReadStream;
    try {
      const fh = await fsp.open(file, 'r');
      stream = fh.createReadStream({ encoding: 'utf8' });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new X2IError(`cannot open the JSONL file ${file}: ${(e as Error).message}`,
        code === 'ENOENT' ? 'ERR_FILE_NOT_FOUND' : 'ERR_IO', { cause: e });
    }
    const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
    let n = 0;
    try {
      for await (const line of lines) {
        n++;
        if (line.trim() === '') continue;
        const where = `${file}:${n}`;
        let j: unknown;
        try { j = JSON.parse(line); } catch (e) { throw badData(`${where}: not valid JSON: ${(e as Error).message}`, e); }
        if (!isRecord(j)) throw badData(`${where}: expected a JSON object`);
        const img = j[f.image];
        if (typeof img !== 'string' || img === '') throw badData(`${where}: field "${f.image}" must be an image path`);
        const refs = referenceList(j[f.references] ?? (opts?.fields?.references === undefined ? j.reference : undefined), where);
        const key = str(j.key) ?? (typeof j.id === 'string' || typeof j.id === 'number' ? String(j.id) : String(n));
        const rec: SampleRecord = {
          key,
          image: { input: path.resolve(root, img), name: `${where}: image ${img}` },
          references: refs.map((p) => ({ input: path.resolve(root, p), name: `${where}: reference ${p}` })),
          json: j,
        };
        const caption = j[f.caption], instruction = j[f.instruction];
        if (caption !== undefined && caption !== null) {
          if (typeof caption !== 'string') throw badData(`${where}: field "${f.caption}" must be a string`);
          rec.caption = caption;
        }
        if (instruction !== undefined && instruction !== null) {
          if (typeof instruction !== 'string') throw badData(`${where}: field "${f.instruction}" must be a string`);
          rec.instruction = instruction;
        }
        yield rec;
      }
    } catch (e) {
      if (e instanceof X2IError) throw e;
      throw new X2IError(`cannot read the JSONL file ${file}: ${(e as Error).message}`, 'ERR_IO', { cause: e });
    } finally {
      lines.close();
      stream.destroy();
    }
  };
  return dataset(source, opts);
}

// ---------------------------------------------------------------------------------------------------------------
// tar (ustar, pax, GNU), streamed

const BLOCK = 512;
const MAX_META_BYTES = 1 << 20; // pax headers and GNU long names

/** Reads a file sequentially through a 1 MiB window. */
class BlockReader {
  private buf = Buffer.allocUnsafe(1 << 20);
  private start = 0; // buffer bytes [start, end) are file bytes [pos - (end - start), pos)
  private end = 0;
  private pos = 0; // file position after the buffer
  constructor(private fh: fsp.FileHandle) {}

  get offset(): number { return this.pos - (this.end - this.start); }

  /** Exactly n bytes, or fewer at the end of the file. */
  async read(n: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      if (this.start === this.end) {
        if (n - got >= this.buf.length) { // large reads go straight into the output
          const { bytesRead } = await this.fh.read(out, got, n - got, this.pos);
          if (bytesRead === 0) break;
          this.pos += bytesRead;
          got += bytesRead;
          continue;
        }
        const { bytesRead } = await this.fh.read(this.buf, 0, this.buf.length, this.pos);
        if (bytesRead === 0) break;
        this.pos += bytesRead;
        this.start = 0;
        this.end = bytesRead;
      }
      const k = Math.min(n - got, this.end - this.start);
      this.buf.copy(out, got, this.start, this.start + k);
      this.start += k;
      got += k;
    }
    return got === n ? out : out.subarray(0, got);
  }

  skip(n: number): void {
    const k = Math.min(n, this.end - this.start);
    this.start += k;
    this.pos += n - k;
  }
}

function cstring(b: Buffer, from: number, len: number): string {
  const s = b.subarray(from, from + len);
  const z = s.indexOf(0);
  return s.subarray(0, z < 0 ? s.length : z).toString('utf8');
}

/** An octal field (NUL/space terminated) or a base-256 one (high bit of the first byte set). */
function numeric(b: Buffer, from: number, len: number): number | undefined {
  const f = b.subarray(from, from + len);
  if (f[0] & 0x80) {
    if (f[0] === 0xff) return undefined; // negative
    let v = f[0] & 0x7f;
    for (let i = 1; i < f.length; i++) {
      v = v * 256 + f[i];
      if (v > Number.MAX_SAFE_INTEGER) return undefined;
    }
    return v;
  }
  let i = 0;
  while (i < f.length && f[i] === 0x20) i++;
  let v = 0, digits = 0;
  for (; i < f.length && f[i] !== 0 && f[i] !== 0x20; i++) {
    const d = f[i] - 0x30;
    if (d < 0 || d > 7) return undefined;
    v = v * 8 + d;
    digits++;
  }
  for (; i < f.length; i++) if (f[i] !== 0 && f[i] !== 0x20) return undefined;
  return digits === 0 ? 0 : v;
}

function checksumOk(h: Buffer): boolean {
  const stored = numeric(h, 148, 8);
  if (stored === undefined) return false;
  let unsigned = 0, signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** Pax records `<len> <key>=<value>\n`. */
function parsePax(data: Buffer, where: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < data.length) {
    if (data[i] === 0) break;
    const sp = data.indexOf(0x20, i);
    const len = sp < 0 ? NaN : Number(data.subarray(i, sp).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= sp - i || i + len > data.length || data[i + len - 1] !== 0x0a)
      throw badData(`${where}: malformed pax header record at byte ${i}`);
    const rec = data.subarray(sp + 1, i + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq < 0) throw badData(`${where}: malformed pax header record at byte ${i}`);
    out[rec.slice(0, eq)] = rec.slice(eq + 1);
    i += len;
  }
  return out;
}

interface TarMember {
  name: string;
  data: Buffer;
  offset: number;
}

const pad = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

/** The regular files of a tar shard, in order; directories, links and other entries are skipped. */
async function* tarMembers(shard: string, maxMemberBytes: number): AsyncGenerator<TarMember> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(shard, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new X2IError(`cannot open the shard ${shard}: ${(e as Error).message}`,
      code === 'ENOENT' ? 'ERR_FILE_NOT_FOUND' : 'ERR_IO', { cause: e });
  }
  try {
    const fileSize = (await fh.stat()).size;
    const r = new BlockReader(fh);
    let pax: Record<string, string> = {};
    let longName: string | undefined;
    let entries = 0;
    for (;;) {
      const off = r.offset;
      const h = await r.read(BLOCK);
      if (h.length === 0) {
        if (entries === 0) throw badData(`${shard}: empty file, not a tar archive`);
        if (longName !== undefined || Object.keys(pax).length > 0) throw badData(`${shard}: truncated after an extended header at offset ${off}`);
        return; // no end-of-archive blocks: accepted, as Python's tarfile does
      }
      if (h.length < BLOCK) throw badData(`${shard}: truncated tar header at offset ${off} (${h.length} of 512 bytes)`);
      if (h.every((b) => b === 0)) {
        if (entries === 0) throw badData(`${shard}: not a tar archive (zero block at offset 0)`);
        return;
      }
      if (!checksumOk(h))
        throw badData(entries === 0 ? `${shard}: not a tar archive (bad header checksum at offset 0)`
          : `${shard}: bad tar header checksum at offset ${off}`);
      entries++;
      const type = String.fromCharCode(h[156]);
      const ustar = h.subarray(257, 263).toString('latin1') === 'ustar\0';
      let name = cstring(h, 0, 100);
      const prefix = ustar ? cstring(h, 345, 155) : '';
      if (prefix) name = `${prefix}/${name}`;
      if (longName !== undefined) name = longName;
      if (pax.path !== undefined) name = pax.path;
      let size = numeric(h, 124, 12);
      if (pax.size !== undefined) {
        const s = /^\d+$/.test(pax.size) ? Number(pax.size) : NaN;
        size = Number.isSafeInteger(s) ? s : undefined;
      }
      const where = `${shard}: member "${name}" at offset ${off}`;
      if (size === undefined) throw badData(`${where}: invalid size field`);
      const dataAt = off + BLOCK;
      if (size + pad(size) > fileSize - dataAt)
        throw badData(`${where}: size ${size} (${size + pad(size)} with its block padding) runs past the end of the file (${fileSize - dataAt} bytes left; truncated?)`);
      const readMeta = async (what: string): Promise<Buffer> => {
        if (size! > MAX_META_BYTES) throw badData(`${where}: ${what} of ${size} bytes (limit ${MAX_META_BYTES})`);
        const d = await r.read(size!);
        if (d.length < size!) throw badData(`${where}: truncated ${what}`);
        r.skip(pad(size!));
        return d;
      };
      if (type === 'x') { pax = { ...pax, ...parsePax(await readMeta('pax header'), where) }; continue; }
      if (type === 'L') { const d = await readMeta('GNU long name'); const z = d.indexOf(0); longName = d.subarray(0, z < 0 ? d.length : z).toString('utf8'); continue; }
      pax = {};
      longName = undefined;
      const regular = type === '0' || type === '\0' || type === '7';
      if (!regular || name.endsWith('/')) { r.skip(size + pad(size)); continue; } // dirs, links, 'g', 'K', devices, ...
      if (size > maxMemberBytes) throw badData(`${where}: ${size} bytes, over the member limit of ${maxMemberBytes} (maxMemberBytes)`);
      const data = await r.read(size);
      if (data.length < size) throw badData(`${where}: truncated (${data.length} of ${size} bytes)`);
      r.skip(pad(size));
      yield { name, data, offset: off };
    }
  } finally {
    await fh.close();
  }
}

/** webdataset's split: key = the path up to the first dot of the basename, ext = the rest (lowercased). */
function splitKey(name: string): { key: string; ext: string } | undefined {
  const m = /^((?:.*\/|)[^./][^.]*)\.([^/]*)$/.exec(name);
  return m ? { key: m[1], ext: m[2].toLowerCase() } : undefined;
}

async function* tarGroups(shard: string, maxMemberBytes: number): AsyncGenerator<{ group: WebDatasetGroup; names: Map<Buffer, string> }> {
  let cur: { group: WebDatasetGroup; names: Map<Buffer, string> } | undefined;
  for await (const m of tarMembers(shard, maxMemberBytes)) {
    const base = m.name.replace(/^\.\//, '');
    const s = splitKey(base);
    if (!s) continue;
    if (cur && cur.group.key !== s.key) { yield cur; cur = undefined; }
    cur ??= { group: { key: s.key, shard, files: {} }, names: new Map() };
    if (s.ext in cur.group.files) throw badData(`${shard}: member "${m.name}" at offset ${m.offset}: duplicate "${s.ext}" in sample "${s.key}"`);
    cur.group.files[s.ext] = m.data;
    cur.names.set(m.data, `${shard}:${m.name}`);
  }
  if (cur) yield cur;
}

const TARGET_EXTS = ['png', 'jpg', 'jpeg', 'webp'];

/**
 * The default WebDataset mapping. Target: `png` if present, else `jpg`/`jpeg`/`webp`; references: the `jpg`
 * (or `jpeg`/`webp`) when a `png` is the target, plus members named like `<key>.ref0.png`/`<key>.src.jpg`.
 * Caption: json.caption ?? json.caption_en ?? the `txt` member ?? json.caption_zh. Instruction:
 * json.instruction ?? json.style ?? json.style_en ?? json.style_zh. A group without an image is dropped.
 */
export function defaultWebDatasetMap(group: WebDatasetGroup): SampleInput | null {
  const f = group.files;
  const target = TARGET_EXTS.find((e) => f[e] !== undefined);
  if (!target) return null;
  const references: Buffer[] = [];
  if (target === 'png') { const src = ['jpg', 'jpeg', 'webp'].find((e) => f[e] !== undefined); if (src) references.push(f[src]); }
  for (const e of Object.keys(f).sort(byCodepoint))
    if (/^(ref|reference|src|source)\d*\.(png|jpe?g|webp)$/.test(e)) references.push(f[e]);
  let json: Record<string, unknown> | undefined;
  if (f.json !== undefined) {
    let j: unknown;
    try { j = JSON.parse(f.json.toString('utf8')); } catch (e) { throw badData(`${group.shard}:${group.key}.json: not valid JSON: ${(e as Error).message}`, e); }
    if (!isRecord(j)) throw badData(`${group.shard}:${group.key}.json: expected a JSON object`);
    json = j;
  }
  const txt = f.txt !== undefined ? f.txt.toString('utf8').trim() : undefined;
  const caption = str(json?.caption) ?? str(json?.caption_en) ?? txt ?? str(json?.caption_zh);
  const instruction = str(json?.instruction) ?? str(json?.style) ?? str(json?.style_en) ?? str(json?.style_zh);
  const s: SampleInput = { key: group.key, image: f[target], references };
  if (caption !== undefined) s.caption = caption;
  if (instruction !== undefined) s.instruction = instruction;
  if (json !== undefined) s.json = json;
  return s;
}

/** `a-{000..009}.tar` → a-000.tar … a-009.tar (zero padding kept), `{a,b}` → a, b; nested and repeated groups. */
export function expandBraces(pattern: string): string[] {
  const m = /\{([^{}]*)\}/.exec(pattern);
  if (!m) return [pattern];
  const head = pattern.slice(0, m.index), tail = pattern.slice(m.index + m[0].length);
  let items: string[];
  const range = /^(-?\d+)\.\.(-?\d+)$/.exec(m[1]);
  if (range) {
    const a = Number(range[1]), b = Number(range[2]);
    const width = range[1].length === range[2].length && /^0\d/.test(range[1]) ? range[1].length : 0;
    if (Math.abs(b - a) > 1_000_000) throw invalidArg('shard pattern', 'a brace range of at most 1e6 items', pattern);
    items = [];
    for (let i = a; a <= b ? i <= b : i >= b; i += a <= b ? 1 : -1) items.push(width ? String(i).padStart(width, '0') : String(i));
  } else if (m[1].includes(',')) items = m[1].split(',');
  else return expandBraces(`${head}\u0000${m[1]}\u0001${tail}`).map((s) => s.replace('\u0000', '{').replace('\u0001', '}'));
  return items.flatMap((it) => expandBraces(`${head}${it}${tail}`));
}

/**
 * WebDataset tar shards (paths or brace patterns such as `data-{000..009}.tar`), streamed member by member;
 * consecutive members with the same key form one sample, mapped by `opts.map` (default: `defaultWebDatasetMap`).
 * With `shuffle`, the shard order is shuffled per epoch too.
 */
export function fromWebDataset(shards: string | string[], opts?: WebDatasetOptions): AsyncIterable<TrainingSample> {
  const list = (Array.isArray(shards) ? shards : [shards]).flatMap((s) => {
    if (typeof s !== 'string' || s === '') throw invalidArg('shards', 'tar file paths or brace patterns', s);
    return expandBraces(s);
  });
  if (list.length === 0) throw invalidArg('shards', 'at least one tar file', shards);
  const maxMemberBytes = opts?.maxMemberBytes ?? 256 * 2 ** 20;
  if (!isCount(maxMemberBytes, 1)) throw invalidArg('maxMemberBytes', 'a positive integer', maxMemberBytes);
  const map = opts?.map ?? defaultWebDatasetMap;
  if (typeof map !== 'function') throw invalidArg('map', 'a function', map);
  const shuffle = opts?.shuffle;
  const source: RecordSource = async function* (epoch) {
    const order = [...list];
    if (shuffle && typeof shuffle.seed === 'number') {
      const rand = rng(shuffle.seed * 7919 + epoch + 1);
      for (let i = order.length - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
    }
    for (const shard of order) {
      for await (const { group, names } of tarGroups(shard, maxMemberBytes)) {
        let s: SampleInput | null | undefined;
        try {
          s = map(group);
        } catch (e) {
          if (e instanceof X2IError) throw e;
          throw badData(`${shard}: sample "${group.key}": map failed: ${(e as Error).message}`, e);
        }
        if (s === null || s === undefined) continue;
        if (!isRecord(s) || s.image === undefined) throw badData(`${shard}: sample "${group.key}": map must return { image, ... } or null`);
        const ref = (input: ImageInput, role: string): ImageRef => ({
          input,
          name: (input instanceof Buffer ? names.get(input) : undefined)
            ?? (typeof input === 'string' ? input : `${shard}:${group.key} (${role})`),
        });
        const rec: SampleRecord = {
          key: s.key ?? group.key,
          image: ref(s.image, 'image'),
          references: (s.references ?? []).map((x, i) => ref(x, `reference ${i}`)),
        };
        if (s.caption !== undefined) rec.caption = s.caption;
        if (s.instruction !== undefined) rec.instruction = s.instruction;
        if (s.json !== undefined) rec.json = s.json;
        yield rec;
      }
    }
  };
  return dataset(source, opts);
}
