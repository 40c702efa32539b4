/**
 * Loads the native addon and declares its typed contract.
 *
 * Candidates, in order (the first that loads wins):
 *   1. `X2I_NATIVE`, an explicit path to an `x2i.node`;
 *   2. a prebuild `prebuilds/<platform>-<arch>/x2i.napi.<libc>.libtorch-<version>.node` whose LibTorch tag
 *      matches the LibTorch in use (recorded at build time in build/libtorch.json, or `LIBTORCH`);
 *   3. the local build `build/Release/x2i.node` (before 2 when it is newer than the matching prebuild).
 * If none loads, one error lists every candidate and why it failed, with the likely fix.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { X2IError } from './errors.js';

import type { Addon } from './addon.js';

export type * from './addon.js';

export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Candidate {
  path: string;
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

function candidates(root: string): Candidate[] {
  const out: Candidate[] = [];
  if (process.env.X2I_NATIVE) out.push({ path: path.resolve(process.env.X2I_NATIVE) });
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const want = targetLibTorch(root);
  let files: string[] = [];
  try { files = fs.readdirSync(dir).filter((f) => f.endsWith('.node')).sort(); } catch { /* none */ }
  if (!files.length) out.push({ path: path.join(dir, prebuildName(want ?? '<version>')), why: 'no prebuild shipped' });
  for (const f of files) {
    const tag = /\.libtorch-(.+)\.node$/.exec(f)?.[1];
    const why = !tag ? 'file name carries no libtorch tag'
      : want && tag !== want ? `built for LibTorch ${tag}, but this install uses LibTorch ${want}` : undefined;
    out.push({ path: path.join(dir, f), why });
  }
  const local = { path: path.join(root, 'build', 'Release', 'x2i.node') };
  // A local build newer than the prebuilds (rebuilt after `npm run prebuild`) goes first, so that it takes effect.
  const mtime = (p: string) => { try { return fs.statSync(p).mtimeMs; } catch { return -1; } };
  const newest = Math.max(-1, ...out.filter((c) => !c.why && c.path.includes(`${path.sep}prebuilds${path.sep}`)).map((c) => mtime(c.path)));
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
    return 'the addon and the LibTorch it loaded differ in version or C++ ABI: rebuild with `npm rebuild x2i`';
  if (/ERR_DLOPEN_DISABLED|--no-addons/.test(message)) return 'native addons are disabled: run node without --no-addons';
  return '';
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

/** Loads the addon from a package folder, trying every candidate in order (exported for tests). */
export function loadAddon(root: string): Addon {
  const require = createRequire(import.meta.url);
  const failures: string[] = [];
  for (const c of candidates(root)) {
    if (c.why) { failures.push(`  - ${c.path}: ${c.why}`); continue; }
    if (!fs.existsSync(c.path)) { failures.push(`  - ${c.path}: not found`); continue; }
    try {
      const loaded = require(c.path) as Addon;
      const info = loaded.buildInfo();
      if (info.builtWithCuda && !info.cudaBackendRegistered) {
        process.emitWarning(`x2i: ${c.path} was built with CUDA but LibTorch's CUDA backend did not register ` +
          '(libtorch_cuda not loaded); CUDA is unavailable', { code: 'X2I_CUDA_NOT_REGISTERED' });
      }
      return loaded;
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0];
      const h = hint(msg);
      failures.push(`  - ${c.path}: ${msg}${h ? `\n      fix: ${h}` : ''}`);
    }
  }
  throw new X2IError(
    `x2i: could not load the native addon for ${process.platform}-${process.arch} (Node ${process.version}).\n` +
    `Tried:\n${failures.join('\n')}\n` +
    'Build it from source with `npm rebuild x2i` (needs cmake, a C++17 compiler and LibTorch: see README, ' +
    '"How LibTorch is found").', 'ERR_ADDON_LOAD');
}
