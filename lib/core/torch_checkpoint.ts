/**
 * A `torch.save` reader that trusts nothing (no LibTorch zip or pickle reader): the zip's central directory with
 * every bound checked against the file, only STORED records, a restricted unpickler (the opcodes and globals of a
 * tensor state dict, bounded pickle size, memo size, stack and nesting), and every storage and tensor view checked
 * against its record's real length. The tensors' bytes are then read natively (native/core/io.cc readSafetensors),
 * which re-checks each range and view against the file.
 */
import fs from 'node:fs';
import { X2IError } from './errors.js';
import type { NativeReadEntry } from './addon.js';
import type { AnyDType } from './tensor.js';

/** Largest data.pkl read (a state dict of 100k tensors pickles to ~20 MB). */
export const MAX_PICKLE_BYTES = 256 * 1024 * 1024;
/** Largest central directory read. */
export const MAX_CENTRAL_DIRECTORY_BYTES = 256 * 1024 * 1024;
/** Most memo entries, stack items and MARKs of a pickle; deepest nesting of dicts flattened into names. */
export const MAX_MEMO = 10_000_000;
export const MAX_STACK = 10_000_000;
export const MAX_MARKS = 1_000;
export const MAX_DEPTH = 64;

const STORAGE_DTYPES: Record<string, { dtype: AnyDType; bytes: number }> = {
  FloatStorage: { dtype: 'float32', bytes: 4 }, DoubleStorage: { dtype: 'float64', bytes: 8 },
  HalfStorage: { dtype: 'float16', bytes: 2 }, BFloat16Storage: { dtype: 'bfloat16', bytes: 2 },
  LongStorage: { dtype: 'int64', bytes: 8 }, IntStorage: { dtype: 'int32', bytes: 4 },
  ShortStorage: { dtype: 'int16', bytes: 2 }, CharStorage: { dtype: 'int8', bytes: 1 },
  ByteStorage: { dtype: 'uint8', bytes: 1 }, BoolStorage: { dtype: 'bool', bytes: 1 },
  ComplexFloatStorage: { dtype: 'complex64', bytes: 8 },
};
const TORCH_DTYPE_NAMES = new Set(['float32', 'float', 'float64', 'double', 'float16', 'half', 'bfloat16', 'int64',
  'long', 'int32', 'int', 'int16', 'short', 'int8', 'uint8', 'bool', 'complex64']);
const ALLOWED_GLOBALS = ['collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_tensor',
  'torch._utils._rebuild_parameter', 'torch._utils._rebuild_parameter_with_state', 'torch.device',
  ...Object.keys(STORAGE_DTYPES).map((s) => `torch.${s}`), 'torch.<dtype>'];

function fail(file: string, code: string, msg: string): never {
  throw new X2IError(`${file}: ${msg}`, code);
}
const FORMAT = 'ERR_CHECKPOINT_FORMAT';
const ZIP = 'ERR_CHECKPOINT_ZIP';
const PICKLE = 'ERR_CHECKPOINT_PICKLE';
const RANGE = 'ERR_CHECKPOINT_RANGE';

// ---- the zip -------------------------------------------------------------------------------------------------------

interface ZipEntry { name: string; method: number; flags: number; csize: number; usize: number; localOffset: number }

function readAt(fd: number, pos: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  let got = 0;
  while (got < n) {
    const r = fs.readSync(fd, b, got, n - got, pos + got);
    if (r === 0) break;
    got += r;
  }
  return got === n ? b : b.subarray(0, got);
}

function u64(file: string, b: Buffer, at: number, what: string): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(file, ZIP, `${what} ${v} is not a plausible size or offset`);
  return Number(v);
}

function readCentralDirectory(file: string, fd: number, size: number): { entries: ZipEntry[]; cdOffset: number } {
  if (size < 22) fail(file, ZIP, `the file is ${size} bytes, too short for a zip archive (truncated?)`);
  const tailLen = Math.min(size, 22 + 65535);
  const tail = readAt(fd, size - tailLen, tailLen);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; --i) {
    if (tail.readUInt32LE(i) === 0x06054b50 && i + 22 + tail.readUInt16LE(i + 20) <= tail.length) { eocd = i; break; }
  }
  if (eocd < 0) fail(file, ZIP, 'no end-of-central-directory record: the zip is truncated or not a zip');
  const eocdPos = size - tailLen + eocd;
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  let cdEnd = eocdPos;
  if (tail.readUInt16LE(eocd + 4) !== 0 || tail.readUInt16LE(eocd + 6) !== 0)
    fail(file, ZIP, 'multi-disk zip archives are not supported');
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    // zip64: the locator sits right before the end-of-central-directory record
    if (eocdPos < 20) fail(file, ZIP, 'zip64 locator missing');
    const loc = readAt(fd, eocdPos - 20, 20);
    if (loc.readUInt32LE(0) !== 0x07064b50) fail(file, ZIP, 'zip64 locator missing');
    const z64 = u64(file, loc, 8, 'zip64 end-of-central-directory offset');
    if (z64 + 56 > eocdPos - 20) fail(file, ZIP, `zip64 end-of-central-directory offset ${z64} lies outside the file`);
    const r = readAt(fd, z64, 56);
    if (r.readUInt32LE(0) !== 0x06064b50) fail(file, ZIP, 'bad zip64 end-of-central-directory signature');
    count = u64(file, r, 32, 'entry count');
    cdSize = u64(file, r, 40, 'central directory size');
    cdOffset = u64(file, r, 48, 'central directory offset');
    cdEnd = z64;
  }
  if (cdOffset + cdSize > cdEnd)
    fail(file, ZIP, `the central directory [${cdOffset}, ${cdOffset + cdSize}) runs past its end record at ${cdEnd} ` +
      `(the file is ${size} bytes; truncated?)`);
  if (cdSize > MAX_CENTRAL_DIRECTORY_BYTES) fail(file, ZIP, `central directory of ${cdSize} bytes is too large`);
  if (count > cdSize / 46) fail(file, ZIP, `${count} entries cannot fit a ${cdSize}-byte central directory`);
  const cd = readAt(fd, cdOffset, cdSize);
  if (cd.length !== cdSize) fail(file, ZIP, 'the file ended inside the central directory');
  const entries: ZipEntry[] = [];
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let p = 0;
  for (let i = 0; i < count; ++i) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== 0x02014b50)
      fail(file, ZIP, `central directory entry ${i} is malformed (at byte ${cdOffset + p})`);
    const flags = cd.readUInt16LE(p + 8), method = cd.readUInt16LE(p + 10);
    let csize = cd.readUInt32LE(p + 20), usize = cd.readUInt32LE(p + 24);
    const nlen = cd.readUInt16LE(p + 28), xlen = cd.readUInt16LE(p + 30), clen = cd.readUInt16LE(p + 32);
    let localOffset = cd.readUInt32LE(p + 42);
    if (p + 46 + nlen + xlen + clen > cd.length) fail(file, ZIP, `central directory entry ${i} runs past the directory`);
    let name: string;
    try {
      name = utf8.decode(cd.subarray(p + 46, p + 46 + nlen));
    } catch {
      fail(file, ZIP, `central directory entry ${i} has a name that is not UTF-8`);
    }
    // zip64 extra field: the 0xFFFFFFFF fields, in order
    if (usize === 0xffffffff || csize === 0xffffffff || localOffset === 0xffffffff) {
      const x = cd.subarray(p + 46 + nlen, p + 46 + nlen + xlen);
      let q = 0, found = false;
      while (q + 4 <= x.length) {
        const id = x.readUInt16LE(q), len = x.readUInt16LE(q + 2);
        if (q + 4 + len > x.length) break;
        if (id === 0x0001) {
          let r = q + 4;
          const take = (what: string) => {
            if (r + 8 > q + 4 + len) fail(file, ZIP, `entry '${name}': zip64 extra field too short for its ${what}`);
            const v = u64(file, x, r, `entry '${name}' ${what}`);
            r += 8;
            return v;
          };
          if (usize === 0xffffffff) usize = take('size');
          if (csize === 0xffffffff) csize = take('compressed size');
          if (localOffset === 0xffffffff) localOffset = take('offset');
          found = true;
          break;
        }
        q += 4 + len;
      }
      if (!found) fail(file, ZIP, `entry '${name}' needs a zip64 extra field and has none`);
    }
    if (localOffset + 30 > cdOffset)
      fail(file, ZIP, `entry '${name}': local header offset ${localOffset} lies past the entries (truncated?)`);
    if (csize > cdOffset)
      fail(file, ZIP, `entry '${name}': size ${csize} is larger than the archive's data (${cdOffset} bytes; truncated?)`);
    if (localOffset + 30 + nlen + csize > cdOffset)
      fail(file, ZIP, `entry '${name}': its ${csize} bytes at offset ${localOffset} run past the archive's data (which ` +
        `ends at ${cdOffset}; the file is truncated or the entry lies about its size)`);
    entries.push({ name, method, flags, csize, usize, localOffset });
    p += 46 + nlen + xlen + clen;
  }
  return { entries, cdOffset };
}

/** The absolute byte range of a STORED entry's data, checked against its local header and the file. */
function entryData(file: string, fd: number, e: ZipEntry, dataEnd: number): [number, number] {
  if (e.method !== 0)
    fail(file, ZIP, `entry '${e.name}' is compressed (method ${e.method}); torch.save writes every record stored, ` +
      'uncompressed, and only those are read');
  if (e.csize !== e.usize)
    fail(file, ZIP, `entry '${e.name}' is stored but its sizes differ (${e.csize} vs ${e.usize})`);
  const h = readAt(fd, e.localOffset, 30);
  if (h.length < 30 || h.readUInt32LE(0) !== 0x04034b50)
    fail(file, ZIP, `entry '${e.name}': no local header at offset ${e.localOffset}`);
  if (h.readUInt16LE(8) !== e.method)
    fail(file, ZIP, `entry '${e.name}': local header's method ${h.readUInt16LE(8)} differs from the directory's`);
  const nlen = h.readUInt16LE(26), xlen = h.readUInt16LE(28);
  const name = readAt(fd, e.localOffset + 30, nlen);
  if (name.toString('utf8') !== e.name)
    fail(file, ZIP, `entry '${e.name}': local header names '${name.toString('utf8')}'`);
  const lc = h.readUInt32LE(18), lu = h.readUInt32LE(22);
  if (!(h.readUInt16LE(6) & 8)) {  // sizes in the local header unless a data descriptor follows
    for (const [v, what] of [[lc, 'compressed size'], [lu, 'size']] as const)
      if (v !== 0xffffffff && v !== 0 && v !== e.csize)
        fail(file, ZIP, `entry '${e.name}': local header's ${what} ${v} differs from the directory's ${e.csize}`);
    if (lc === 0 && e.csize !== 0 && lu === 0 && e.usize !== 0)
      fail(file, ZIP, `entry '${e.name}': local header's size 0 differs from the directory's ${e.csize}`);
  }
  const begin = e.localOffset + 30 + nlen + xlen;
  const end = begin + e.csize;
  if (end > dataEnd)
    fail(file, ZIP, `entry '${e.name}': its ${e.csize} bytes at ${begin} run past the archive's data (which ends at ` +
      `${dataEnd}; the file is truncated or the entry lies about its size)`);
  return [begin, end];
}

// ---- the pickle ----------------------------------------------------------------------------------------------------

class PyTuple { constructor(readonly items: unknown[]) {} }
class PyList { constructor(readonly items: unknown[]) {} }
class PyDict { readonly map = new Map<unknown, unknown>(); }
class PyGlobal { constructor(readonly module: string, readonly name: string) {} }
class PyMark {}
class StorageRef {
  constructor(readonly key: string, readonly dtype: AnyDType, readonly bytes: number, readonly numel: number) {}
}
class TensorRef {
  constructor(readonly storage: StorageRef, readonly offset: number, readonly size: number[],
    readonly stride: number[]) {}
}
const MARK = new PyMark();

function describe(v: unknown): string {
  if (v === null) return 'None';
  if (v instanceof PyGlobal) return `${v.module}.${v.name}`;
  if (v instanceof PyTuple) return `a tuple of ${v.items.length}`;
  if (v instanceof PyList) return 'a list';
  if (v instanceof PyDict) return 'a dict';
  if (v instanceof TensorRef) return 'a tensor';
  if (v instanceof StorageRef) return 'a storage';
  if (v instanceof Uint8Array) return 'bytes';
  return typeof v;
}

function allowGlobal(file: string, module: string, name: string): PyGlobal {
  const full = `${module}.${name}`;
  const ok = full === 'collections.OrderedDict' || full === 'torch.device' ||
    (module === 'torch._utils' && ['_rebuild_tensor_v2', '_rebuild_tensor', '_rebuild_parameter',
      '_rebuild_parameter_with_state'].includes(name)) ||
    (module === 'torch' && (Object.hasOwn(STORAGE_DTYPES, name) || TORCH_DTYPE_NAMES.has(name)));
  if (!ok)
    fail(file, 'ERR_CHECKPOINT_GLOBAL', `the pickle references the global '${full}', which a tensor state dict never ` +
      `needs; only ${ALLOWED_GLOBALS.join(', ')} are allowed (nothing was executed)`);
  return new PyGlobal(module, name);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function intTuple(file: string, v: unknown, what: string): number[] {
  if (!(v instanceof PyTuple) || !v.items.every(isCount))
    fail(file, PICKLE, `${what} is ${describe(v)}, expected a tuple of non-negative integers`);
  return v.items as number[];
}

/** Runs data.pkl on a restricted VM: protocol ≤ 4, the opcodes a state dict needs, whitelisted globals. */
function unpickle(file: string, data: Buffer, storages: Map<string, StorageRef>,
  storageBytes: (key: string) => number): unknown {
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  let p = 0;
  const need = (n: number) => {
    if (p + n > data.length) fail(file, PICKLE, `data.pkl ends inside an opcode at byte ${p} (truncated?)`);
  };
  const pop = (): unknown => {
    const base = marks.length ? marks[marks.length - 1] : 0;
    if (stack.length <= base) fail(file, PICKLE, `data.pkl pops an empty stack at byte ${p}`);
    return stack.pop();
  };
  const push = (v: unknown) => {
    if (stack.length >= MAX_STACK) fail(file, PICKLE, `data.pkl's stack exceeds ${MAX_STACK} items`);
    stack.push(v);
  };
  const popMark = (): unknown[] => {
    if (!marks.length) fail(file, PICKLE, `data.pkl uses a MARK it never set at byte ${p}`);
    const at = marks.pop()!;
    return stack.splice(at);
  };
  const put = (k: number) => {
    if (!stack.length) fail(file, PICKLE, `data.pkl memoizes an empty stack at byte ${p}`);
    if (memo.size >= MAX_MEMO && !memo.has(k)) fail(file, PICKLE, `data.pkl's memo exceeds ${MAX_MEMO} entries`);
    memo.set(k, stack[stack.length - 1]);
  };
  const get = (k: number) => {
    if (!memo.has(k)) fail(file, PICKLE, `data.pkl reads memo entry ${k}, which was never set`);
    push(memo.get(k));
  };
  const str = (n: number) => {
    need(n);
    const s = data.toString('utf8', p, p + n);
    p += n;
    return s;
  };
  const line = () => {
    const e = data.indexOf(0x0a, p);
    if (e < 0 || e - p > 256) fail(file, PICKLE, `data.pkl has an unterminated GLOBAL at byte ${p}`);
    const s = data.toString('latin1', p, e);
    p = e + 1;
    return s;
  };
  const setItems = (d: unknown, kv: unknown[]) => {
    if (!(d instanceof PyDict)) fail(file, PICKLE, `data.pkl sets items on ${describe(d)}`);
    if (kv.length % 2) fail(file, PICKLE, 'data.pkl sets an odd number of dict items');
    for (let i = 0; i < kv.length; i += 2) {
      const k = kv[i];
      if (typeof k !== 'string' && typeof k !== 'number')
        fail(file, PICKLE, `data.pkl uses ${describe(k)} as a dict key (only strings and integers are read)`);
      d.map.set(k, kv[i + 1]);
    }
  };
  const call = (fn: unknown, args: unknown): unknown => {
    if (!(fn instanceof PyGlobal)) fail(file, PICKLE, `data.pkl calls ${describe(fn)}`);
    if (!(args instanceof PyTuple)) fail(file, PICKLE, `data.pkl calls ${fn.module}.${fn.name} without an argument tuple`);
    const a = args.items;
    const full = `${fn.module}.${fn.name}`;
    if (full === 'collections.OrderedDict') {
      if (a.length) fail(file, PICKLE, 'data.pkl calls collections.OrderedDict with arguments');
      return new PyDict();
    }
    if (full === 'torch.device') {
      if (!a.length || !a.every((x) => typeof x === 'string' || typeof x === 'number'))
        fail(file, PICKLE, 'data.pkl calls torch.device with bad arguments');
      return a.join(':');
    }
    if (full === 'torch._utils._rebuild_tensor_v2' || full === 'torch._utils._rebuild_tensor') {
      if (a.length < 4) fail(file, PICKLE, `data.pkl calls ${full} with ${a.length} arguments`);
      const [storage, offset] = a;
      if (!(storage instanceof StorageRef)) fail(file, PICKLE, `${full}'s storage is ${describe(storage)}`);
      if (!isCount(offset)) fail(file, PICKLE, `${full}'s storage offset is ${String(offset)}`);
      const size = intTuple(file, a[2], `${full}'s size`);
      const stride = intTuple(file, a[3], `${full}'s stride`);
      if (size.length !== stride.length)
        fail(file, PICKLE, `a tensor's size (${size.length} dims) and stride (${stride.length}) differ in length`);
      // the view must fit its storage: offset + sum (size - 1) * stride < numel
      if (!size.includes(0)) {
        let last = offset;
        for (let i = 0; i < size.length; ++i) last += (size[i] - 1) * stride[i];
        if (!Number.isSafeInteger(last) || last >= storage.numel)
          fail(file, RANGE, `a tensor of size [${size.join(', ')}], stride [${stride.join(', ')}] at offset ${offset} ` +
            `runs past its storage '${storage.key}' of ${storage.numel} elements`);
      }
      return new TensorRef(storage, offset, size, stride);
    }
    if (full === 'torch._utils._rebuild_parameter' || full === 'torch._utils._rebuild_parameter_with_state') {
      if (!(a[0] instanceof TensorRef)) fail(file, PICKLE, `${full} wraps ${describe(a[0])}, not a tensor`);
      return a[0];
    }
    fail(file, PICKLE, `data.pkl calls ${full}, which is not callable here`);
  };
  const persistent = (pid: unknown): StorageRef => {
    if (!(pid instanceof PyTuple) || pid.items.length !== 5 || pid.items[0] !== 'storage')
      fail(file, PICKLE, `data.pkl's persistent id is ${describe(pid)}, expected ('storage', type, key, location, numel)`);
    const [, type, key, , numel] = pid.items;
    if (!(type instanceof PyGlobal) || type.module !== 'torch' || !Object.hasOwn(STORAGE_DTYPES, type.name))
      fail(file, PICKLE, `storage type ${describe(type)} is not a torch storage type`);
    if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(key))
      fail(file, PICKLE, `storage key ${JSON.stringify(key)} is not a record name`);
    if (!isCount(numel)) fail(file, PICKLE, `storage '${key}' declares ${String(numel)} elements`);
    const { dtype, bytes } = STORAGE_DTYPES[type.name];
    const old = storages.get(key);
    if (old) {
      if (old.dtype !== dtype || old.numel !== numel)
        fail(file, PICKLE, `storage '${key}' is declared twice with different types or sizes`);
      return old;
    }
    const have = storageBytes(key);
    if (numel * bytes > have)
      fail(file, RANGE, `storage '${key}' declares ${numel} elements of ${dtype} (${numel * bytes} bytes) but its ` +
        `record holds ${have} bytes`);
    const s = new StorageRef(key, dtype, bytes, numel);
    storages.set(key, s);
    return s;
  };

  for (;;) {
    need(1);
    const op = data[p++];
    switch (op) {
      case 0x80: need(1); if (data[p++] > 5) fail(file, PICKLE, 'data.pkl uses an unknown pickle protocol'); break;
      case 0x95: need(8); p += 8; break;  // FRAME
      case 0x7d: push(new PyDict()); break;  // }
      case 0x5d: push(new PyList([])); break;  // ]
      case 0x29: push(new PyTuple([])); break;  // )
      case 0x28:  // ( MARK
        if (marks.length >= MAX_MARKS) fail(file, PICKLE, `data.pkl nests more than ${MAX_MARKS} MARKs`);
        marks.push(stack.length);
        break;
      case 0x58: { need(4); const n = data.readUInt32LE(p); p += 4; push(str(n)); break; }  // X BINUNICODE
      case 0x8c: { need(1); const n = data[p++]; push(str(n)); break; }  // SHORT_BINUNICODE
      case 0x8d: { need(8); const n = u64(file, data, p, 'string length'); p += 8; push(str(n)); break; }
      case 0x54: {  // T BINSTRING
        need(4); const n = data.readInt32LE(p); p += 4;
        if (n < 0) fail(file, PICKLE, 'data.pkl has a negative string length');
        need(n); push(data.toString('latin1', p, p + n)); p += n; break;
      }
      case 0x55: { need(1); const n = data[p++]; need(n); push(data.toString('latin1', p, p + n)); p += n; break; }
      case 0x42: { need(4); const n = data.readUInt32LE(p); p += 4; need(n); push(Uint8Array.from(data.subarray(p, p + n))); p += n; break; }
      case 0x43: { need(1); const n = data[p++]; need(n); push(Uint8Array.from(data.subarray(p, p + n))); p += n; break; }
      case 0x71: need(1); put(data[p++]); break;  // q BINPUT
      case 0x72: need(4); put(data.readUInt32LE(p)); p += 4; break;  // r LONG_BINPUT
      case 0x94: put(memo.size); break;  // MEMOIZE
      case 0x68: need(1); get(data[p++]); break;  // h BINGET
      case 0x6a: need(4); get(data.readUInt32LE(p)); p += 4; break;  // j LONG_BINGET
      case 0x63: { const m = line(); const n = line(); push(allowGlobal(file, m, n)); break; }  // c GLOBAL
      case 0x93: {  // STACK_GLOBAL
        const n = pop(), m = pop();
        if (typeof m !== 'string' || typeof n !== 'string') fail(file, PICKLE, 'data.pkl has a bad STACK_GLOBAL');
        push(allowGlobal(file, m, n));
        break;
      }
      case 0x4a: need(4); push(data.readInt32LE(p)); p += 4; break;  // J BININT
      case 0x4b: need(1); push(data[p++]); break;  // K BININT1
      case 0x4d: need(2); push(data.readUInt16LE(p)); p += 2; break;  // M BININT2
      case 0x8a: {  // LONG1
        need(1); const n = data[p++]; need(n);
        if (n > 8) fail(file, PICKLE, `data.pkl has a ${n}-byte integer`);
        let v = 0n;
        for (let i = n - 1; i >= 0; --i) v = (v << 8n) | BigInt(data[p + i]);
        if (n && data[p + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        p += n;
        push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: need(8); push(data.readDoubleBE(p)); p += 8; break;  // G BINFLOAT
      case 0x74: push(new PyTuple(popMark())); break;  // t TUPLE
      case 0x85: push(new PyTuple([pop()])); break;
      case 0x86: { const b = pop(), a = pop(); push(new PyTuple([a, b])); break; }
      case 0x87: { const c = pop(), b = pop(), a = pop(); push(new PyTuple([a, b, c])); break; }
      case 0x52: { const args = pop(), fn = pop(); push(call(fn, args)); break; }  // R REDUCE
      case 0x62: {  // b BUILD: the state of an OrderedDict (_metadata) or of a tensor is not needed
        const state = pop(), obj = pop();
        if (!(obj instanceof PyDict || obj instanceof TensorRef))
          fail(file, PICKLE, `data.pkl builds ${describe(obj)} from ${describe(state)}`);
        push(obj);
        break;
      }
      case 0x73: { const v = pop(), k = pop(); setItems(stack[stack.length - 1], [k, v]); break; }  // s SETITEM
      case 0x75: { const kv = popMark(); if (!stack.length) fail(file, PICKLE, 'SETITEMS without a dict'); setItems(stack[stack.length - 1], kv); break; }
      case 0x61: {  // a APPEND
        const v = pop(); const l = stack[stack.length - 1];
        if (!(l instanceof PyList)) fail(file, PICKLE, `data.pkl appends to ${describe(l)}`);
        l.items.push(v);
        break;
      }
      case 0x65: {  // e APPENDS
        const vs = popMark(); const l = stack[stack.length - 1];
        if (!(l instanceof PyList)) fail(file, PICKLE, `data.pkl appends to ${describe(l)}`);
        for (const v of vs) l.items.push(v);
        break;
      }
      case 0x88: push(true); break;
      case 0x89: push(false); break;
      case 0x4e: push(null); break;  // N NONE
      case 0x51: push(persistent(pop())); break;  // Q BINPERSID
      case 0x30: pop(); break;  // 0 POP
      case 0x31: popMark(); break;  // 1 POP_MARK
      case 0x32: { const v = pop(); push(v); push(v); break; }  // 2 DUP
      case 0x2e: {  // . STOP
        if (stack.length !== 1 || marks.length) fail(file, PICKLE, 'data.pkl stops with a malformed stack');
        return stack[0];
      }
      default:
        fail(file, PICKLE, `data.pkl uses opcode 0x${op.toString(16).padStart(2, '0')} at byte ${p - 1}, which a tensor ` +
          'state dict never needs');
    }
  }
}

// ---- the plan ------------------------------------------------------------------------------------------------------

export interface TorchCheckpointPlan {
  /** Flattened names ('.'-joined), in pickle order, each with its native read entry (absolute file offsets). */
  entries: NativeReadEntry[];
}

/** Validates a torch.save file and returns what to read: for each tensor its storage's record range and its view. */
export function planTorchCheckpoint(file: string): TorchCheckpointPlan {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const magic = readAt(fd, 0, 4);
    if (magic.length < 4 || magic.readUInt32LE(0) !== 0x04034b50)
      fail(file, FORMAT, 'not a torch.save zip archive (PyTorch >= 1.6 format)');
    // every record's data lies before the central directory
    const { entries, cdOffset: dataEnd } = readCentralDirectory(file, fd, size);
    const byName = new Map<string, ZipEntry>();
    for (const e of entries) {
      if (byName.has(e.name)) fail(file, ZIP, `the archive holds '${e.name}' twice`);
      byName.set(e.name, e);
    }
    const pkls = entries.filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
    if (pkls.length !== 1)
      fail(file, FORMAT, pkls.length ? 'the archive holds more than one data.pkl' :
        'not a torch.save archive: no <name>/data.pkl record');
    const prefix = pkls[0].name.slice(0, -'data.pkl'.length);
    const bo = byName.get(prefix + 'byteorder');
    if (bo) {
      const [b0, b1] = entryData(file, fd, bo, dataEnd);
      const order = readAt(fd, b0, Math.min(b1 - b0, 16)).toString('latin1');
      if (order !== 'little') fail(file, FORMAT, `byteorder '${order}' is not supported (only little-endian)`);
    }
    const [p0, p1] = entryData(file, fd, pkls[0], dataEnd);
    if (p1 - p0 > MAX_PICKLE_BYTES) fail(file, PICKLE, `data.pkl is ${p1 - p0} bytes, over the ${MAX_PICKLE_BYTES} limit`);
    const pkl = readAt(fd, p0, p1 - p0);
    if (pkl.length !== p1 - p0) fail(file, ZIP, 'the file ended inside data.pkl (truncated?)');
    const ranges = new Map<string, [number, number]>();
    const recordRange = (key: string): [number, number] => {
      let r = ranges.get(key);
      if (!r) {
        const e = byName.get(`${prefix}data/${key}`);
        if (!e) fail(file, FORMAT, `storage '${key}' has no record ${prefix}data/${key} in the archive`);
        r = entryData(file, fd, e, dataEnd);
        ranges.set(key, r);
      }
      return r;
    };
    const storages = new Map<string, StorageRef>();
    const root = unpickle(file, pkl, storages, (k) => { const r = recordRange(k); return r[1] - r[0]; });
    if (!(root instanceof PyDict)) fail(file, FORMAT, `expected a dict of tensors, found ${describe(root)}`);
    const out: NativeReadEntry[] = [];
    const seen = new Set<string>();
    const walk = (d: PyDict, prefixName: string, depth: number) => {
      if (depth > MAX_DEPTH) fail(file, FORMAT, `dicts nest deeper than ${MAX_DEPTH} levels`);
      for (const [k, v] of d.map) {
        const name = prefixName + String(k);
        if (v instanceof TensorRef) {
          if (seen.has(name)) fail(file, FORMAT, `the name '${name}' occurs twice once nested dicts are flattened`);
          seen.add(name);
          const [b0] = recordRange(v.storage.key);
          out.push([name, v.storage.dtype, v.size, b0, b0 + v.storage.numel * v.storage.bytes, v.stride, v.offset]);
        } else if (v instanceof PyDict) {
          walk(v, name + '.', depth + 1);
        }
      }
    };
    walk(root, '', 0);
    if (!out.length) fail(file, FORMAT, 'the dict holds no tensors');
    return { entries: out };
  } finally {
    fs.closeSync(fd);
  }
}
