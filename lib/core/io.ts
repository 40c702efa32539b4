/**
 * Checkpoint files (native/core/io.cc): safetensors, read into memory the model owns (or memory-mapped on request)
 * after the header has been fully validated here, written atomically; sharded checkpoints via
 * `*.safetensors.index.json`; and `torch.save` zip pickles of tensor dicts, validated by lib/core/torch_checkpoint.ts
 * (no LibTorch pickle reader). Every tensor record is an object whose keys are own properties, whatever the name
 * (`__proto__`, `constructor`, '' included).
 */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg, nativeCall } from './errors.js';
import { addon } from './native.js';
import { Tensor, type AnyDType, type DType } from './tensor.js';
import { planTorchCheckpoint } from './torch_checkpoint.js';
import type { NativeReadEntry } from './addon.js';

/** safetensors dtype → x2i dtype and bits per element. */
const ST_DTYPES: Record<string, { dtype: AnyDType; bits: number } | { unsupported: string }> = {
  BOOL: { dtype: 'bool', bits: 8 }, U8: { dtype: 'uint8', bits: 8 }, I8: { dtype: 'int8', bits: 8 },
  I16: { dtype: 'int16', bits: 16 }, U16: { dtype: 'uint16', bits: 16 }, F16: { dtype: 'float16', bits: 16 },
  BF16: { dtype: 'bfloat16', bits: 16 }, I32: { dtype: 'int32', bits: 32 }, U32: { dtype: 'uint32', bits: 32 },
  F32: { dtype: 'float32', bits: 32 }, F64: { dtype: 'float64', bits: 64 }, I64: { dtype: 'int64', bits: 64 },
  U64: { dtype: 'uint64', bits: 64 }, C64: { dtype: 'complex64', bits: 64 },
  F8_E4M3: { dtype: 'float8_e4m3fn', bits: 8 }, F8_E5M2: { dtype: 'float8_e5m2', bits: 8 },
  F8_E8M0: { dtype: 'float8_e8m0fnu', bits: 8 }, F4: { dtype: 'float4_e2m1fn_x2', bits: 4 },
  F6_E2M3: { unsupported: 'LibTorch has no 6-bit float type' },
  F6_E3M2: { unsupported: 'LibTorch has no 6-bit float type' },
};
const DTYPE_TO_ST = Object.fromEntries(Object.entries(ST_DTYPES).filter(([, v]) => 'dtype' in v)
  .map(([k, v]) => [(v as { dtype: AnyDType }).dtype, k])) as Record<AnyDType, string>;

/** Largest header the reference implementation accepts (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsEntry {
  name: string;
  /** safetensors dtype name (F32, BF16, ...). */
  stDtype: string;
  dtype: AnyDType;
  /** Shape as stored in the file. */
  shape: number[];
  /** Byte range relative to the start of the data section. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  path: string;
  /** File offset of the data section (8 + header length). */
  dataStart: number;
  fileSize: number;
  metadata: Record<string, string>;
  entries: SafetensorsEntry[];
}

export interface LoadOptions {
  /** Where tensors go: 'cpu' (default), 'cuda', 'cuda:N'. */
  device?: string;
  /** Cast floating-point tensors to this dtype (integer and bool tensors keep theirs). Default: as stored. */
  dtype?: DType;
  /**
   * CPU tensors of the stored dtype become zero-copy views of a private (copy-on-write) mapping of the file instead
   * of memory they own. Faster to load and shares the page cache, but the file must stay unchanged while the tensors
   * live: a file truncated or overwritten in place under them raises SIGBUS, which kills the process, at the next
   * access (a forward, a save). Default false: the bytes are read into owned memory, and a changed file never
   * affects loaded tensors.
   */
  mmap?: boolean;
  /** Stops the loading between two reads: everything read so far is freed and the Promise rejects with
   * `signal.reason` (an AbortError DOMException unless abort() was given another). */
  signal?: AbortSignal;
  /** Called once before the first read (nothing loaded yet) and after each read, with the totals of the whole load.
   * An exception thrown here stops the loading as an abort does, and the Promise rejects with it. */
  onProgress?: (p: LoadProgress) => void;
  /** Bytes read per native call (default 128 MiB): how often onProgress reports and the signal is checked. With
   * `mmap` each file is one call (mapping is cheap and lazy). */
  chunkBytes?: number;
}

/** Where a load stands, over the whole load (every shard). Loaded counts only rise; the totals never change. */
export interface LoadProgress {
  /** The file the last read came from (before the first read: the first file). */
  file: string;
  /** Bytes read so far, as stored in the files (before any dtype cast). */
  bytesLoaded: number;
  bytesTotal: number;
  tensorsLoaded: number;
  tensorsTotal: number;
}

const DEFAULT_CHUNK_BYTES = 128 * 1024 * 1024;

/** A record whose every key is an own property, `__proto__` included (plain assignment would set the prototype). */
export function defineEntry<T>(rec: Record<string, T>, name: string, value: T): void {
  Object.defineProperty(rec, name, { value, enumerable: true, writable: true, configurable: true });
}

function bad(file: string, code: string, msg: string): X2IError {
  return new X2IError(`${file}: ${msg}`, code);
}

async function statFile(file: string): Promise<fs.Stats> {
  try {
    const st = await fs.promises.stat(file);
    if (!st.isFile()) throw bad(file, 'ERR_IO', 'not a regular file');
    return st;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw bad(file, 'ERR_FILE_NOT_FOUND', 'no such file');
    throw e;
  }
}

/** Reads and validates a safetensors header without touching the data: length bounds, UTF-8 JSON, dtype
 * names, shape × dtype size = byte range, every range inside the file and no two overlapping. */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  if (typeof file !== 'string') throw invalidArg('path', 'a file path string', file);
  const st = await statFile(file);
  const fh = await fs.promises.open(file, 'r');
  try {
    const size = st.size;
    if (size < 8) throw bad(file, 'ERR_SAFETENSORS_TRUNCATED', `file is ${size} bytes, shorter than the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    await fh.read(lenBuf, 0, 8, 0);
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(MAX_HEADER_BYTES))
      throw bad(file, 'ERR_SAFETENSORS_HEADER', `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    const hlen = Number(n);
    if (8 + hlen > size)
      throw bad(file, 'ERR_SAFETENSORS_TRUNCATED', `header length ${hlen} runs past the end of the file (${size} bytes)`);
    if (hlen < 2) throw bad(file, 'ERR_SAFETENSORS_HEADER', `header length ${hlen} is too short for a JSON object`);
    const hbuf = Buffer.alloc(hlen);
    await fh.read(hbuf, 0, hlen, 8);
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(hbuf));
    } catch (e) {
      throw bad(file, 'ERR_SAFETENSORS_HEADER', `header is not valid UTF-8 JSON (${(e as Error).message})`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json))
      throw bad(file, 'ERR_SAFETENSORS_HEADER', 'header is not a JSON object');
    const dataStart = 8 + hlen;
    const dataSize = size - dataStart;
    const metadata: Record<string, string> = {};
    const entries: SafetensorsEntry[] = [];
    for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (v === null || typeof v !== 'object' || Array.isArray(v))
          throw bad(file, 'ERR_SAFETENSORS_HEADER', '__metadata__ is not an object');
        for (const [k, s] of Object.entries(v)) {
          if (typeof s !== 'string')
            throw bad(file, 'ERR_SAFETENSORS_HEADER', `__metadata__['${k}'] is ${typeof s}, expected a string`);
          defineEntry(metadata, k, s);
        }
        continue;
      }
      const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (e === null || typeof e !== 'object' || Array.isArray(e))
        throw bad(file, 'ERR_SAFETENSORS_HEADER', `entry '${name}' is not an object`);
      const info = typeof e.dtype === 'string' ? ST_DTYPES[e.dtype] : undefined;
      if (!info)
        throw bad(file, 'ERR_SAFETENSORS_DTYPE', `tensor '${name}' has unknown dtype ${JSON.stringify(e.dtype)} ` +
          `(expected one of ${Object.keys(ST_DTYPES).join(', ')})`);
      if ('unsupported' in info)
        throw bad(file, 'ERR_SAFETENSORS_DTYPE', `tensor '${name}' has dtype ${e.dtype}: ${info.unsupported}`);
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        throw bad(file, 'ERR_SAFETENSORS_HEADER', `tensor '${name}' has shape ${JSON.stringify(e.shape)}, ` +
          'expected an array of non-negative integers');
      const off = e.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) ||
          off[0] > off[1])
        throw bad(file, 'ERR_SAFETENSORS_HEADER', `tensor '${name}' has data_offsets ${JSON.stringify(off)}, ` +
          'expected [begin, end] with 0 <= begin <= end');
      const shape = e.shape as number[];
      const numel = shape.reduce((a, b) => a * b, 1);
      const bits = numel * info.bits;
      if (!Number.isSafeInteger(bits) || bits % 8 !== 0)
        throw bad(file, 'ERR_SAFETENSORS_RANGE', `tensor '${name}': ${numel} elements of ${e.dtype} are not a whole number of bytes`);
      const nbytes = bits / 8;
      const [b0, b1] = off as [number, number];
      if (b1 - b0 !== nbytes)
        throw bad(file, 'ERR_SAFETENSORS_RANGE', `tensor '${name}': shape [${shape.join(', ')}] × ${e.dtype} is ` +
          `${nbytes} bytes but data_offsets [${b0}, ${b1}] span ${b1 - b0}`);
      if (b1 > dataSize)
        throw bad(file, 'ERR_SAFETENSORS_RANGE', `tensor '${name}': data_offsets [${b0}, ${b1}] run past the end ` +
          `of the data section (${dataSize} bytes; the file may be truncated)`);
      if (info.dtype === 'float4_e2m1fn_x2' && (shape.length === 0 || shape[shape.length - 1] % 2))
        throw bad(file, 'ERR_SAFETENSORS_RANGE', `tensor '${name}': F4 needs an even last dimension to pack in pairs`);
      entries.push({ name, stDtype: e.dtype as string, dtype: info.dtype, shape, dataOffsets: [b0, b1] });
    }
    const sorted = [...entries].sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
    let last: SafetensorsEntry | undefined;  // the non-empty range reaching furthest so far
    for (const q of sorted) {
      if (q.dataOffsets[1] === q.dataOffsets[0]) continue;
      if (last && q.dataOffsets[0] < last.dataOffsets[1])
        throw bad(file, 'ERR_SAFETENSORS_RANGE', `tensors '${last.name}' [${last.dataOffsets.join(', ')}) and ` +
          `'${q.name}' [${q.dataOffsets.join(', ')}) overlap`);
      if (!last || q.dataOffsets[1] > last.dataOffsets[1]) last = q;
    }
    return { path: file, dataStart, fileSize: size, metadata, entries };
  } finally {
    await fh.close();
  }
}

/** One file's reads: its data offset and the ranges to read, in the order the tensors come back. */
interface FileRead {
  file: string;
  dataStart: number;
  entries: NativeReadEntry[];
}

/** A safetensors file's ranges (all, or the tensors named in `only`). */
function safetensorsRead(h: SafetensorsHeader, only?: Set<string>): FileRead {
  const entries = h.entries.filter((e) => !only || only.has(e.name)).map((e): NativeReadEntry => {
    // LibTorch packs float4 in pairs: the last dimension halves.
    const shape = e.dtype === 'float4_e2m1fn_x2' ? [...e.shape.slice(0, -1), e.shape[e.shape.length - 1] / 2] : e.shape;
    return [e.name, e.dtype, shape, e.dataOffsets[0], e.dataOffsets[1]];
  });
  return { file: h.path, dataStart: h.dataStart, entries };
}

/** The indices of the entries in groups of at most `chunk` bytes (a larger storage alone), the views of one storage
 * in one group (the reader reads a storage once per call, and its views share it). */
function chunked(entries: NativeReadEntry[], chunk: number): { index: number[]; bytes: number }[] {
  const storages = new Map<string, number[]>();
  entries.forEach((e, i) => {
    const key = `${e[3]}:${e[4]}:${e[1]}`;
    if (!storages.has(key)) storages.set(key, []);
    storages.get(key)!.push(i);
  });
  const groups: { index: number[]; bytes: number }[] = [];
  let cur = { index: [] as number[], bytes: 0 };
  for (const views of storages.values()) {
    const bytes = entries[views[0]][4] - entries[views[0]][3];
    if (cur.index.length && cur.bytes + bytes > chunk) { groups.push(cur); cur = { index: [], bytes: 0 }; }
    cur.index.push(...views);
    cur.bytes += bytes;
  }
  if (cur.index.length) groups.push(cur);
  return groups;
}

/** Reads the files' ranges in groups, reporting after each and checking the signal between them; on an abort or
 * an error everything read is freed. The record holds the tensors in entry order, file after file. */
async function readFiles(reads: FileRead[], opts: LoadOptions): Promise<Record<string, Tensor>> {
  const plans = reads.map((r) => ({ ...r, groups: chunked(r.entries, opts.mmap ? Infinity : opts.chunkBytes ?? DEFAULT_CHUNK_BYTES) }));
  const all = plans.flatMap((p) => p.groups);
  const progress: LoadProgress = { file: reads[0]?.file ?? '', bytesLoaded: 0, bytesTotal: all.reduce((a, g) => a + g.bytes, 0),
    tensorsLoaded: 0, tensorsTotal: all.reduce((a, g) => a + g.index.length, 0) };
  const loaded: Tensor[][] = reads.map(() => []);  // per file, by entry index
  try {
    opts.signal?.throwIfAborted();
    opts.onProgress?.({ ...progress });
    opts.signal?.throwIfAborted();  // an abort from the report itself
    for (const [i, p] of plans.entries()) {
      for (const g of p.groups) {
        const handles = await nativeCall(() => addon().readSafetensors(p.file, p.dataStart, g.index.map((k) => p.entries[k]),
          opts.device, opts.dtype, opts.mmap === true));
        g.index.forEach((k, j) => { loaded[i][k] = new Tensor(handles[j]); });
        Object.assign(progress, { file: p.file, bytesLoaded: progress.bytesLoaded + g.bytes,
          tensorsLoaded: progress.tensorsLoaded + g.index.length });
        opts.onProgress?.({ ...progress });
        opts.signal?.throwIfAborted();
      }
    }
  } catch (e) {
    for (const t of loaded.flat()) t?.dispose();
    throw e;
  }
  const out: Record<string, Tensor> = {};
  plans.forEach((p, i) => p.entries.forEach((e, k) => defineEntry(out, e[0], loaded[i][k])));
  return out;
}

function checkLoadOptions(opts: LoadOptions): void {
  if (opts.device !== undefined && (typeof opts.device !== 'string' || !/^(cpu|cuda(:\d+)?)$/.test(opts.device)))
    throw invalidArg('device', "'cpu', 'cuda' or 'cuda:N'", opts.device);
  if (opts.dtype !== undefined && !['float32', 'float16', 'bfloat16', 'float64'].includes(opts.dtype))
    throw invalidArg('dtype', "a floating dtype ('float32', 'float16', 'bfloat16', 'float64')", opts.dtype);
  if (opts.mmap !== undefined && typeof opts.mmap !== 'boolean') throw invalidArg('mmap', 'a boolean', opts.mmap);
  if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw invalidArg('signal', 'an AbortSignal', opts.signal);
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') throw invalidArg('onProgress', 'a function', opts.onProgress);
  if (opts.chunkBytes !== undefined && !(Number.isSafeInteger(opts.chunkBytes) && opts.chunkBytes > 0))
    throw invalidArg('chunkBytes', 'a positive integer', opts.chunkBytes);
}

/** The weight files of a folder: its `*.safetensors.index.json`, else its single `*.safetensors` file, else the
 * diffusers/transformers standard names. */
function resolveFolder(dir: string): string {
  const files = fs.readdirSync(dir);
  const index = files.filter((f) => f.endsWith('.safetensors.index.json'));
  if (index.length === 1) return path.join(dir, index[0]);
  const st = files.filter((f) => f.endsWith('.safetensors'));
  if (index.length === 0 && st.length === 1) return path.join(dir, st[0]);
  // the names diffusers and transformers write
  for (const name of ['diffusion_pytorch_model.safetensors.index.json', 'model.safetensors.index.json',
    'diffusion_pytorch_model.safetensors', 'model.safetensors'])
    if (files.includes(name)) return path.join(dir, name);
  throw new X2IError(`${dir}: expected one *.safetensors.index.json or one *.safetensors file, found ` +
    `${[...index, ...st].join(', ') || 'none'}`, 'ERR_FILE_NOT_FOUND');
}

/**
 * Loads every tensor of a safetensors file, of a sharded checkpoint (`*.safetensors.index.json`), or of a
 * folder holding either. The tensors own their memory unless `opts.mmap` (see LoadOptions.mmap). Every header is
 * read and checked before the first tensor; the data is read in chunks (LoadOptions.chunkBytes), reported to
 * `opts.onProgress` and stopped by `opts.signal` between two of them.
 */
export async function loadSafetensors(file: string, opts: LoadOptions = {}): Promise<Record<string, Tensor>> {
  if (typeof file !== 'string') throw invalidArg('path', 'a file path string', file);
  checkLoadOptions(opts);
  opts.signal?.throwIfAborted();
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = resolveFolder(file);
  if (!file.endsWith('.index.json')) return readFiles([safetensorsRead(await readSafetensorsHeader(file))], opts);
  let index: { weight_map?: Record<string, unknown> };
  try {
    index = JSON.parse(await fs.promises.readFile(file, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw bad(file, 'ERR_FILE_NOT_FOUND', 'no such file');
    throw bad(file, 'ERR_SAFETENSORS_INDEX', `not valid JSON (${(e as Error).message})`);
  }
  const map = Object.hasOwn(index ?? {}, 'weight_map') ? index.weight_map : undefined;
  if (!map || typeof map !== 'object' || Array.isArray(map))
    throw bad(file, 'ERR_SAFETENSORS_INDEX', 'no "weight_map" object');
  const shards = new Map<string, Set<string>>();
  for (const [name, shard] of Object.entries(map)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\'))
      throw bad(file, 'ERR_SAFETENSORS_INDEX', `weight_map['${name}'] = ${JSON.stringify(shard)} is not a file name`);
    if (!shards.has(shard)) shards.set(shard, new Set());
    shards.get(shard)!.add(name);
  }
  const reads: FileRead[] = [];
  for (const [shard, names] of shards) {
    const h = await readSafetensorsHeader(path.join(path.dirname(file), shard));
    const have = new Set(h.entries.map((e) => e.name));
    const missing = [...names].filter((n) => !have.has(n));
    if (missing.length)
      throw bad(file, 'ERR_SAFETENSORS_INDEX', `shard ${shard} lacks ${missing.length} tensor(s) the index ` +
        `lists: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
    reads.push(safetensorsRead(h, names));
  }
  return readFiles(reads, opts);
}

/**
 * Writes tensors as one safetensors file, atomically (temporary file, fsync, rename): a crash never leaves a
 * half-written file under `path`. Layout as the reference writer: tensors ordered by alignment then name,
 * header padded with spaces to 8 bytes.
 */
export async function saveSafetensors(file: string, tensors: Record<string, Tensor>,
  metadata?: Record<string, string>): Promise<void> {
  if (typeof file !== 'string') throw invalidArg('path', 'a file path string', file);
  if (!tensors || typeof tensors !== 'object') throw invalidArg('tensors', 'a record of name → Tensor', tensors);
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    if (metadata === null || typeof metadata !== 'object') throw invalidArg('metadata', 'a record of strings', metadata);
    for (const [k, v] of Object.entries(metadata))
      if (typeof v !== 'string') throw invalidArg(`metadata['${k}']`, 'a string', v);
    header.__metadata__ = { ...metadata };
  }
  const items = Object.entries(tensors).map(([name, t]) => {
    if (!(t instanceof Tensor)) throw invalidArg(`tensors['${name}']`, 'a Tensor', t);
    if (name === '__metadata__') throw invalidArg('a tensor name', 'a name other than __metadata__', name);
    return { name, t, st: DTYPE_TO_ST[t.dtype], h: t.handle };
  });
  const align = (d: string) => (ST_DTYPES[d] as { bits: number }).bits;
  items.sort((a, b) => align(b.st) - align(a.st) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let offset = 0;
  for (const it of items) {
    const shape = it.t.dtype === 'float4_e2m1fn_x2'
      ? [...it.t.shape.slice(0, -1), it.t.shape[it.t.shape.length - 1] * 2] : [...it.t.shape];
    defineEntry(header, it.name, { dtype: it.st, shape, data_offsets: [offset, offset + it.t.nbytes] });
    offset += it.t.nbytes;
  }
  let json = JSON.stringify(header);
  const len = Buffer.byteLength(json);
  json += ' '.repeat((8 - (len % 8)) % 8);
  await nativeCall(() => addon().writeSafetensors(path.resolve(file), Buffer.from(json, 'utf8'),
    items.map((i) => i.h), items.map((i) => i.t.nbytes)));
}

/** Reads a `torch.save` zip archive of a (possibly nested) dict of tensors, e.g. an official X2I AlignNet `.bin` or a
 * ComfyUI `{config, state_dict}` file. Nested dicts are flattened with '.'; values that are not tensors are skipped.
 * The archive is validated by lib/core/torch_checkpoint.ts before a byte of tensor data is read: zip bounds, STORED
 * records only, a restricted unpickler (only the globals a state dict needs; nothing is executed), every storage and
 * view checked against its record's length. Errors are X2IErrors naming the file and what was wrong. `signal`,
 * `onProgress` and `chunkBytes` as loadSafetensors (the views of one storage are read together). */
export async function loadTorchCheckpoint(file: string, opts: LoadOptions = {}): Promise<Record<string, Tensor>> {
  if (typeof file !== 'string') throw invalidArg('path', 'a file path string', file);
  checkLoadOptions(opts);
  opts.signal?.throwIfAborted();
  await statFile(file);
  return readFiles([{ file, dataStart: 0, entries: planTorchCheckpoint(file).entries }], opts);
}
