// A small torch.save writer for the tests: the zip layout torch.save writes (STORED records, 64-byte aligned data,
// <archive>/data.pkl, data/<key>, byteorder, version; zip64 on request) and a protocol-2 pickle of nested dicts of
// tensors through torch._utils._rebuild_tensor_v2, with hooks to write hostile variants.
import zlib from 'node:zlib';

export type StorageType = 'FloatStorage' | 'DoubleStorage' | 'HalfStorage' | 'BFloat16Storage' | 'LongStorage' |
  'IntStorage' | 'ByteStorage' | 'BoolStorage';

export interface TensorSpec {
  storage: string;
  type?: StorageType;
  /** Declared element count of the storage (default: its bytes / element size). */
  numel?: number;
  offset?: number;
  size: number[];
  stride?: number[];
}
export type DictSpec = { [name: string]: TensorSpec | DictSpec | string | number | boolean | null };

const ES: Record<StorageType, number> = { FloatStorage: 4, DoubleStorage: 8, HalfStorage: 2, BFloat16Storage: 2,
  LongStorage: 8, IntStorage: 4, ByteStorage: 1, BoolStorage: 1 };

export class Pickler {
  parts: Buffer[] = [];
  op(...bytes: number[]) { this.parts.push(Buffer.from(bytes)); return this; }
  raw(b: Buffer | string) { this.parts.push(Buffer.from(b as string, 'latin1')); return this; }
  str(s: string) {
    const b = Buffer.from(s, 'utf8');
    const n = Buffer.alloc(4); n.writeUInt32LE(b.length);
    return this.raw('X').raw(n).raw(b);
  }
  int(v: number) {
    if (v >= 0 && v < 256) return this.op(0x4b, v);
    if (v >= -(2 ** 31) && v < 2 ** 31) { const b = Buffer.alloc(4); b.writeInt32LE(v); return this.raw('J').raw(b); }
    const b = Buffer.alloc(8); b.writeBigInt64LE(BigInt(v)); return this.op(0x8a, 8).raw(b);
  }
  global(m: string, n: string) { return this.raw(`c${m}\n${n}\n`); }
  tuple(items: number[]) { this.op(0x28); for (const i of items) this.int(i); return this.op(0x74); }
  bytes() { return Buffer.concat(this.parts); }
}

function isTensor(v: unknown): v is TensorSpec {
  return typeof v === 'object' && v !== null && 'storage' in v && 'size' in v;
}

function contiguousStride(size: number[]): number[] {
  const s = new Array(size.length).fill(1);
  for (let i = size.length - 2; i >= 0; --i) s[i] = s[i + 1] * size[i + 1];
  return s;
}

/** The pickle of a (nested) dict; storage element counts come from `storageBytes`. */
export function picklePayload(dict: DictSpec, storageBytes: Record<string, number>): Buffer {
  const p = new Pickler().op(0x80, 2);
  const writeDict = (d: DictSpec) => {
    p.op(0x7d);
    const keys = Object.keys(d);
    if (!keys.length) return;
    p.op(0x28);
    for (const k of keys) {
      p.str(k);
      const v = d[k];
      if (isTensor(v)) {
        const type = v.type ?? 'FloatStorage';
        p.global('torch._utils', '_rebuild_tensor_v2').op(0x28);
        p.op(0x28).str('storage').global('torch', type).str(v.storage).str('cpu')
          .int(v.numel ?? Math.floor(storageBytes[v.storage] / ES[type])).op(0x74, 0x51);
        p.int(v.offset ?? 0).tuple(v.size).tuple(v.stride ?? contiguousStride(v.size)).op(0x89);
        p.global('collections', 'OrderedDict').op(0x29, 0x52).op(0x74, 0x52);
      } else if (v === null) p.op(0x4e);
      else if (typeof v === 'boolean') p.op(v ? 0x88 : 0x89);
      else if (typeof v === 'number') {
        if (Number.isInteger(v)) p.int(v); else { const b = Buffer.alloc(8); b.writeDoubleBE(v); p.raw('G').raw(b); }
      } else if (typeof v === 'string') p.str(v);
      else writeDict(v);
    }
    p.op(0x75);
  };
  writeDict(dict);
  return p.op(0x2e).bytes();
}

export interface ZipOptions {
  zip64?: boolean;
  /** Compression method written into the headers of this entry name (the data stays raw). */
  methodOf?: Record<string, number>;
}

/** A zip of STORED records, data 64-byte aligned through padding in the local extra field, as torch.save writes. */
export function zipStored(records: [string, Buffer][], opts: ZipOptions = {}): Buffer {
  const out: Buffer[] = [];
  let pos = 0;
  const central: Buffer[] = [];
  for (const [name, data] of records) {
    const nb = Buffer.from(name, 'utf8');
    const method = opts.methodOf?.[name] ?? 0;
    const base = 30 + nb.length + 4;
    const pad = (64 - ((pos + base) % 64)) % 64;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); local.writeUInt16LE(opts.zip64 ? 45 : 20, 4);
    local.writeUInt16LE(method, 8);
    const crc = zlib.crc32(data);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(opts.zip64 ? 0xffffffff : data.length, 18);
    local.writeUInt32LE(opts.zip64 ? 0xffffffff : data.length, 22);
    local.writeUInt16LE(nb.length, 26); local.writeUInt16LE(4 + pad, 28);
    const extra = Buffer.alloc(4 + pad); extra.writeUInt16LE(0x5346, 0); extra.writeUInt16LE(pad, 2);  // 'FB' padding
    const offset = pos;
    out.push(local, nb, extra, data);
    pos += 30 + nb.length + 4 + pad + data.length;
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0); c.writeUInt16LE(opts.zip64 ? 45 : 20, 4); c.writeUInt16LE(opts.zip64 ? 45 : 20, 6);
    c.writeUInt16LE(method, 10); c.writeUInt32LE(crc, 16);
    let x = Buffer.alloc(0);
    if (opts.zip64) {
      c.writeUInt32LE(0xffffffff, 20); c.writeUInt32LE(0xffffffff, 24); c.writeUInt32LE(0xffffffff, 42);
      x = Buffer.alloc(28); x.writeUInt16LE(1, 0); x.writeUInt16LE(24, 2);
      x.writeBigUInt64LE(BigInt(data.length), 4); x.writeBigUInt64LE(BigInt(data.length), 12);
      x.writeBigUInt64LE(BigInt(offset), 20);
    } else {
      c.writeUInt32LE(data.length, 20); c.writeUInt32LE(data.length, 24); c.writeUInt32LE(offset, 42);
    }
    c.writeUInt16LE(nb.length, 28); c.writeUInt16LE(x.length, 30);
    central.push(c, nb, x);
  }
  const cd = Buffer.concat(central);
  const cdOffset = pos;
  out.push(cd);
  pos += cd.length;
  if (opts.zip64) {
    const z = Buffer.alloc(56);
    z.writeUInt32LE(0x06064b50, 0); z.writeBigUInt64LE(44n, 4); z.writeUInt16LE(45, 12); z.writeUInt16LE(45, 14);
    z.writeBigUInt64LE(BigInt(records.length), 24); z.writeBigUInt64LE(BigInt(records.length), 32);
    z.writeBigUInt64LE(BigInt(cd.length), 40); z.writeBigUInt64LE(BigInt(cdOffset), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0); loc.writeBigUInt64LE(BigInt(pos), 8); loc.writeUInt32LE(1, 16);
    out.push(z, loc);
  }
  const e = Buffer.alloc(22);
  e.writeUInt32LE(0x06054b50, 0);
  e.writeUInt16LE(opts.zip64 ? 0xffff : records.length, 8); e.writeUInt16LE(opts.zip64 ? 0xffff : records.length, 10);
  e.writeUInt32LE(opts.zip64 ? 0xffffffff : cd.length, 12); e.writeUInt32LE(opts.zip64 ? 0xffffffff : cdOffset, 16);
  out.push(e);
  return Buffer.concat(out);
}

/** A torch.save file of `dict` whose storages hold `storages` (raw little-endian bytes). */
export function torchSave(dict: DictSpec, storages: Record<string, Buffer>, opts: ZipOptions & {
  archive?: string; pickle?: Buffer } = {}): Buffer {
  const a = opts.archive ?? 'archive';
  const sizes = Object.fromEntries(Object.entries(storages).map(([k, b]) => [k, b.length]));
  const records: [string, Buffer][] = [[`${a}/data.pkl`, opts.pickle ?? picklePayload(dict, sizes)],
    [`${a}/byteorder`, Buffer.from('little')]];
  for (const [k, b] of Object.entries(storages)) records.push([`${a}/data/${k}`, b]);
  records.push([`${a}/version`, Buffer.from('3\n')]);
  return zipStored(records, opts);
}

export function f32(values: number[]): Buffer {
  return Buffer.from(new Float32Array(values).buffer);
}
