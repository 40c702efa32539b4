/**
 * Loads the native addon, checking every candidate binary before it is loaded into this process.
 *
 * Candidates, in order (the first that passes the checks and loads wins):
 *   1. `X2I_NATIVE`, an explicit path to an `x2i.node`;
 *   2. a prebuild `prebuilds/<platform>-<arch>/x2i.napi.<libc>.libtorch-<version>.node` whose LibTorch tag
 *      matches the LibTorch in use (recorded at build time in build/libtorch.json, or `LIBTORCH`);
 *   3. the local build `build/Release/x2i.node` (before 2 when it is newer than the matching prebuild).
 *
 * Checks, before any candidate is loaded (`verifyBinary`, also used by scripts/install.mjs):
 *   - an ELF shared object for this platform's machine and word size, else skipped (read from its header);
 *   - its source fingerprint: each build embeds "x2i-source-fingerprint:<sha256>" (scripts/sources.mjs: the
 *     sha256 over native/**, CMakeLists.txt and binding.gyp), read here from the file's bytes. A PREBUILD built
 *     from other sources than this package's (or without a fingerprint) is skipped. The LOCAL build and
 *     X2I_NATIVE are loaded anyway, with one warning (X2I_STALE_BUILD), so that a developer editing native/
 *     is not blocked before the next `npm run build:native`. A package without native/ (nothing to compare
 *     with) skips this check;
 *   - then it is loaded with immediate binding (RTLD_NOW): a missing symbol is a load error here, never a
 *     `symbol lookup error` that kills the process at the first call.
 * A skipped or failing candidate gives a warning (X2I_ADDON_SKIPPED) naming the file and why, and the next one
 * is tried; if none loads, one error lists every candidate and why it failed, with the likely fix.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { X2IError } from './errors.js';

import type { Addon } from './addon.js';

export type * from './addon.js';

/** The package folder: the nearest folder above this module whose package.json is x2i's (dist/ and dist/cjs/). */
function findPackageRoot(from: string): string {
  for (let d = from; ; d = path.dirname(d)) {
    try {
      if (JSON.parse(fs.readFileSync(path.join(d, 'package.json'), 'utf8')).name === 'x2i') return d;
    } catch { /* keep looking */ }
    if (path.dirname(d) === d) return path.resolve(from, '..', '..');
  }
}

export const packageRoot = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)));

type Kind = 'explicit' | 'prebuild' | 'local';

interface Candidate {
  path: string;
  kind: Kind;
  why?: string;
}

/** The LibTorch the addon is meant to run against: the one recorded by the local build, else LIBTORCH's. */
export function targetLibTorch(root = packageRoot): string | undefined {
  try {
    const rec = JSON.parse(fs.readFileSync(path.join(root, 'build', 'libtorch.json'), 'utf8'));
    if (typeof rec.fullVersion === 'string') return rec.fullVersion;
  } catch { /* no local build record */ }
  const lt = process.env.LIBTORCH;
  if (lt) {
    for (const f of ['build-version', 'version.py']) {
      try {
        const t = fs.readFileSync(path.join(lt, f), 'utf8');
        return f === 'build-version' ? t.trim() : /__version__\s*=\s*['"]([^'"]+)/.exec(t)?.[1];
      } catch { /* try the next */ }
    }
  }
  return undefined;
}

export function prebuildName(libtorchVersion: string, libc = 'glibc'): string {
  return `x2i.napi.${libc}.libtorch-${libtorchVersion}.node`;
}

// ---- the source fingerprint (the same computation as scripts/sources.mjs; test/core/build.test.ts compares them)

export const FINGERPRINT_MARKER = 'x2i-source-fingerprint:';

function walk(dir: string, rel = ''): string[] {
  let entries: fs.Dirent[];
  try { entries = fs.readdirSync(path.join(dir, rel), { withFileTypes: true }); } catch { return []; }
  const out: string[] = [];
  for (const e of entries) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...walk(dir, r));
    else if (e.isFile() || (e.isSymbolicLink() && fs.statSync(path.join(dir, r), { throwIfNoEntry: false })?.isFile())) out.push(r);
  }
  return out;
}

const fingerprints = new Map<string, string | undefined>();

/** sha256 of the package's native sources (native/**, CMakeLists.txt, binding.gyp); undefined without native/. */
export function sourceFingerprint(root = packageRoot): string | undefined {
  if (fingerprints.has(root)) return fingerprints.get(root);
  const files = walk(path.join(root, 'native')).map((f) => `native/${f}`);
  let fp: string | undefined;
  if (files.length) {
    for (const f of ['CMakeLists.txt', 'binding.gyp']) if (fs.existsSync(path.join(root, f))) files.push(f);
    files.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const h = crypto.createHash('sha256');
    for (const f of files) h.update(`${f}\0${crypto.createHash('sha256').update(fs.readFileSync(path.join(root, f))).digest('hex')}\n`);
    fp = h.digest('hex');
  }
  fingerprints.set(root, fp);
  return fp;
}

// ---- reading a binary without loading it

const ELF_MACHINES: Record<string, [machine: number, bits: 32 | 64, le: boolean]> = {
  x64: [62, 64, true], arm64: [183, 64, true], ia32: [3, 32, true], arm: [40, 32, true],
  ppc64: [21, 64, os.endianness() === 'LE'], s390x: [22, 64, false], riscv64: [243, 64, true], loong64: [258, 64, true],
};

export interface BinaryInfo {
  /** why this is not a loadable shared object for this platform, if it is not */
  notElf?: string;
  /** the embedded source fingerprint, null when the binary carries none */
  fingerprint?: string | null;
}

function readAt(fd: number, pos: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const n = fs.readSync(fd, b, 0, len, pos);
  return b.subarray(0, n);
}

/** Scans [start, end) of the file for the marker, in chunks (the marker may straddle two). */
function scanForMarker(fd: number, start: number, end: number): string | null {
  const want = Buffer.from(FINGERPRINT_MARKER);
  const chunk = 1 << 20;
  for (let pos = start; pos < end; pos += chunk) {
    const b = readAt(fd, pos, Math.min(chunk + want.length + 64, end - pos));
    const i = b.indexOf(want);
    if (i >= 0) {
      const hex = b.subarray(i + want.length, i + want.length + 64).toString('latin1');
      if (/^[0-9a-f]{64}$/.test(hex)) return hex;
      if (hex.startsWith('unknown')) return 'unknown';
    }
    if (b.length < chunk) break;
  }
  return null;
}

/** The ELF header checks and the embedded fingerprint of a file, read from its bytes (nothing is loaded). */
export function inspectBinary(file: string): BinaryInfo {
  let fd: number;
  try { fd = fs.openSync(file, 'r'); } catch (e) { return { notElf: (e as Error).message }; }
  try {
    const size = fs.fstatSync(fd).size;
    const h = readAt(fd, 0, 64);
    if (process.platform === 'linux') {
      if (h.length < 52) return { notElf: `file too short (${size} bytes): not an ELF shared object` };
      if (h.readUInt32BE(0) !== 0x7f454c46) return { notElf: 'invalid ELF header: not an ELF shared object' };
      const want = ELF_MACHINES[process.arch];
      const bits = h[4] === 2 ? 64 : 32, le = h[5] === 1;
      const u16 = (o: number) => (le ? h.readUInt16LE(o) : h.readUInt16BE(o));
      if (u16(16) !== 3) return { notElf: `an ELF file of type ${u16(16)}, not a shared object (type 3)` };
      if (want && (u16(18) !== want[0] || bits !== want[1] || le !== want[2]))
        return { notElf: `an ELF shared object for another machine (e_machine ${u16(18)}, ${bits}-bit), not ${process.arch}` };
      // the marker lives in .rodata: find it through the section headers, else scan the whole file
      if (bits === 64 && le && h.length >= 64) {
        const shoff = Number(h.readBigUInt64LE(0x28)), shentsize = h.readUInt16LE(0x3a), shnum = h.readUInt16LE(0x3c);
        const shstrndx = h.readUInt16LE(0x3e);
        if (shoff > 0 && shentsize >= 64 && shnum > 0 && shoff + shnum * shentsize <= size && shstrndx < shnum) {
          const sh = readAt(fd, shoff, shnum * shentsize);
          const sec = (i: number) => ({ name: sh.readUInt32LE(i * shentsize), off: Number(sh.readBigUInt64LE(i * shentsize + 0x18)),
            size: Number(sh.readBigUInt64LE(i * shentsize + 0x20)) });
          const strtab = sec(shstrndx);
          const names = readAt(fd, strtab.off, Math.min(strtab.size, 1 << 20));
          for (let i = 0; i < shnum; i++) {
            const s = sec(i);
            const end = names.indexOf(0, s.name);
            if (names.toString('latin1', s.name, end < 0 ? undefined : end) !== '.rodata') continue;
            const fp = scanForMarker(fd, s.off, Math.min(size, s.off + s.size));
            if (fp) return { fingerprint: fp };
          }
        }
      }
    }
    return { fingerprint: scanForMarker(fd, 0, size) };
  } finally {
    fs.closeSync(fd);
  }
}

export interface Verdict {
  /** false: do not load this file (why says why) */
  ok: boolean;
  why?: string;
  /** a reason to warn while loading it anyway (a stale local build) */
  warning?: string;
  fingerprint?: string | null;
}

/**
 * Whether a candidate may be loaded into this process: an ELF shared object for this platform and, for a
 * prebuild, built from this package's sources (strict: prebuilds; lenient with a warning: local, explicit).
 */
export function verifyBinary(file: string, kind: Kind, root = packageRoot): Verdict {
  const info = inspectBinary(file);
  if (info.notElf) return { ok: false, why: info.notElf };
  const want = sourceFingerprint(root);
  const got = info.fingerprint ?? null;
  if (!want || got === want) return { ok: true, fingerprint: got };
  const short = (f: string) => f.slice(0, 12);
  const why = got === null || got === 'unknown'
    ? 'carries no source fingerprint (built before fingerprints, or without node at build time)'
    : `built from other sources (fingerprint ${short(got)}…, this package's sources are ${short(want)}…)`;
  if (kind === 'prebuild') return { ok: false, why, fingerprint: got };
  const fix = kind === 'local' ? 'rebuild with `npm run build:native`' : 'rebuild it from these sources';
  return { ok: true, fingerprint: got, warning: `${file} ${why}: it may not match native/ as it is now; loading it anyway (${fix})` };
}

function candidates(root: string): Candidate[] {
  const out: Candidate[] = [];
  if (process.env.X2I_NATIVE) out.push({ path: path.resolve(process.env.X2I_NATIVE), kind: 'explicit' });
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const want = targetLibTorch(root);
  let files: string[] = [];
  try { files = fs.readdirSync(dir).filter((f) => f.endsWith('.node')).sort(); } catch { /* none */ }
  if (!files.length) out.push({ path: path.join(dir, prebuildName(want ?? '<version>')), kind: 'prebuild', why: 'no prebuild shipped' });
  for (const f of files) {
    const tag = /\.libtorch-(.+)\.node$/.exec(f)?.[1];
    const why = !tag ? 'file name carries no libtorch tag'
      : want && tag !== want ? `built for LibTorch ${tag}, but this install uses LibTorch ${want}` : undefined;
    out.push({ path: path.join(dir, f), kind: 'prebuild', why });
  }
  const local: Candidate = { path: path.join(root, 'build', 'Release', 'x2i.node'), kind: 'local' };
  // A local build newer than the prebuilds (rebuilt after `npm run build:prebuild`) goes first, so that it takes effect.
  const mtime = (p: string) => { try { return fs.statSync(p).mtimeMs; } catch { return -1; } };
  const newest = Math.max(-1, ...out.filter((c) => !c.why && c.kind === 'prebuild').map((c) => mtime(c.path)));
  if (mtime(local.path) > newest && newest >= 0) out.splice(process.env.X2I_NATIVE ? 1 : 0, 0, local);
  else out.push(local);
  return out;
}

function hint(message: string): string {
  if (/libtorch|libc10|libtorch_cpu|libtorch_cuda/.test(message) && /cannot open shared object/.test(message))
    return 'LibTorch libraries not found: rebuild against your LibTorch (`npm rebuild x2i`), or export LIBTORCH ' +
      'and LD_LIBRARY_PATH=$LIBTORCH/lib before starting node';
  if (/libcudart|libnvToolsExt|libcublas|libcudnn/.test(message))
    return 'CUDA runtime libraries not found: install the CUDA runtime that your LibTorch expects';
  if (/GLIBCXX_|CXXABI_/.test(message)) return 'the C++ runtime of this OS is older than the one the addon was built with';
  if (/undefined symbol: _ZN/.test(message))
    return 'the addon and the LibTorch it loaded differ in version or C++ ABI, or it was linked from an incomplete ' +
      'source list: rebuild with `npm rebuild x2i`';
  if (/undefined symbol/.test(message)) return 'the binary was linked incompletely: rebuild with `npm rebuild x2i`';
  if (/ERR_DLOPEN_DISABLED|--no-addons/.test(message)) return 'native addons are disabled: run node without --no-addons';
  return '';
}

const loadedFiles = new Map<string, Addon>();
const warned = new Set<string>();

/** Loads a shared object with immediate binding: an undefined symbol throws here instead of killing the process later. */
function dlopenNow(file: string): Addon {
  const real = fs.realpathSync(file);
  const done = loadedFiles.get(real);
  if (done) return done;
  const mod = { exports: {} as Addon };
  process.dlopen(mod, real, os.constants.dlopen.RTLD_NOW);
  loadedFiles.set(real, mod.exports);
  return mod.exports;
}

let cached: Addon | undefined;

// Large host tensors are allocated fresh and filled at once (fromArray, toArray, loads): transparent huge
// pages cut the page faults of that first touch by up to 512× (c10's CPU allocator reads this variable).
// Set THP_MEM_ALLOC_ENABLE=0 to opt out.
process.env.THP_MEM_ALLOC_ENABLE ??= '1';

/** The loaded addon (loaded on first use). */
export function addon(): Addon {
  cached ??= loadAddon(packageRoot);
  return cached;
}

/** Loads the addon from a package folder, checking and trying every candidate in order (exported for tests). */
export function loadAddon(root: string): Addon {
  const failures: string[] = [];
  const skip = (c: Candidate, why: string) => {
    failures.push(`  - ${c.path}: ${why}`);
    const key = `${c.path}\0${why}`;
    if (!warned.has(key)) {
      warned.add(key);
      process.emitWarning(`x2i: skipped ${c.path}: ${why.split('\n')[0]}`, { code: 'X2I_ADDON_SKIPPED' });
    }
  };
  for (const c of candidates(root)) {
    if (c.why) { failures.push(`  - ${c.path}: ${c.why}`); continue; }
    if (!fs.existsSync(c.path)) { failures.push(`  - ${c.path}: not found`); continue; }
    const v = verifyBinary(c.path, c.kind, root);
    if (!v.ok) { skip(c, v.why!); continue; }
    try {
      const loaded = dlopenNow(c.path);
      const info = loaded.buildInfo();
      if (v.warning && !warned.has(v.warning)) {
        warned.add(v.warning);
        process.emitWarning(`x2i: ${v.warning}`, { code: 'X2I_STALE_BUILD' });
      }
      if (info.builtWithCuda && !info.cudaBackendRegistered) {
        process.emitWarning(`x2i: ${c.path} was built with CUDA but LibTorch's CUDA backend did not register ` +
          '(libtorch_cuda not loaded); CUDA is unavailable', { code: 'X2I_CUDA_NOT_REGISTERED' });
      }
      return loaded;
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0];
      const h = hint(msg);
      skip(c, `${msg}${h ? `\n      fix: ${h}` : ''}`);
    }
  }
  throw new X2IError(
    `x2i: could not load the native addon for ${process.platform}-${process.arch} (Node ${process.version}).\n` +
    `Tried:\n${failures.join('\n')}\n` +
    'Build it from source with `npm rebuild x2i` (needs cmake, a C++17 compiler and LibTorch: see README, ' +
    '"How LibTorch is found").', 'ERR_ADDON_LOAD');
}
