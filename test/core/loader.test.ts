import fs from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { loadAddon, prebuildName, targetLibTorch } from '../../lib/core/native.js';
import { root, tmpDir } from '../helpers.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const plat = `${process.platform}-${process.arch}`;

it('prefers a prebuild whose LibTorch tag matches the LibTorch in use', () => {
  const version = targetLibTorch(root);
  expect(version).toMatch(/^\d+\.\d+\.\d+/);
  const pkg = path.join(dir, 'good');
  fs.mkdirSync(path.join(pkg, 'prebuilds', plat), { recursive: true });
  fs.mkdirSync(path.join(pkg, 'build'), { recursive: true });
  fs.copyFileSync(path.join(root, 'build', 'libtorch.json'), path.join(pkg, 'build', 'libtorch.json'));
  fs.copyFileSync(path.join(root, 'build', 'Release', 'x2i.node'), path.join(pkg, 'prebuilds', plat, prebuildName(version!)));
  const addon = loadAddon(pkg);
  expect(addon.buildInfo().libtorchVersion).toBe(version);
});

it('throws one error listing every candidate and why it failed', () => {
  const pkg = path.join(dir, 'bad');
  fs.mkdirSync(path.join(pkg, 'prebuilds', plat), { recursive: true });
  fs.mkdirSync(path.join(pkg, 'build'), { recursive: true });
  fs.writeFileSync(path.join(pkg, 'build', 'libtorch.json'), JSON.stringify({ fullVersion: '2.13.0+cpu' }));
  fs.writeFileSync(path.join(pkg, 'prebuilds', plat, prebuildName('2.11.0+cu130')), 'not an ELF file');
  fs.writeFileSync(path.join(pkg, 'prebuilds', plat, prebuildName('2.13.0+cpu')), 'not an ELF file');
  let err: (Error & { code?: string }) | undefined;
  try {
    loadAddon(pkg);
  } catch (e) {
    err = e as Error;
  }
  expect(err?.code).toBe('ERR_ADDON_LOAD');
  expect(err?.message).toContain(`libtorch-2.11.0+cu130.node: built for LibTorch 2.11.0+cu130, but this install uses LibTorch 2.13.0+cpu`);
  expect(err?.message).toMatch(/libtorch-2\.13\.0\+cpu\.node: .*(invalid ELF header|file too short)/);
  expect(err?.message).toContain(`${path.join(pkg, 'build', 'Release', 'x2i.node')}: not found`);
  expect(err?.message).toContain('npm rebuild x2i');
});

// ---- attacks on the loader, each in a CHILD process (a crash shows as an exit code, not a dead runner)

import { spawnSync } from 'node:child_process';
import { beforeAll, describe } from 'vitest';
import { sourceFingerprint } from '../../lib/core/native.js';

describe('never loads an unchecked binary in-process', () => {
  const gcc = spawnSync('gcc', ['--version'], { stdio: 'ignore' }).status === 0;
  const real = path.join(root, 'build', 'Release', 'x2i.node');
  let loader = '';
  let undefinedSo = '';
  /** A Node-API module whose init calls a function nobody defines (the issue's x2i::dist::*), carrying the
   * given fingerprint (the package's own: then only the symbol check can stop it). */
  const compileUndefined = (name: string, fp: string) => {
    const src = path.join(dir, `${name}.c`);
    fs.writeFileSync(src, `extern int x2i_dist_missing(void);
__attribute__((used)) static const char fp[] = "x2i-source-fingerprint:${fp}";
__attribute__((visibility("default"))) void* napi_register_module_v1(void* env, void* exports) { x2i_dist_missing(); return exports; }
`);
    const so = path.join(dir, `${name}.so`);
    const r = spawnSync('gcc', ['-shared', '-fPIC', src, '-o', so], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    return so;
  };

  beforeAll(async () => {
    // the loader as it is in lib/ now (not a possibly stale dist/), bundled for a plain node child
    const esbuild = await import('esbuild');
    loader = path.join(dir, 'native-loader.mjs');
    await esbuild.build({ entryPoints: [path.join(root, 'lib', 'core', 'native.ts')], bundle: true, format: 'esm',
      platform: 'node', target: 'node20', outfile: loader, logLevel: 'error' });
    if (gcc) undefinedSo = compileUndefined('undef', '0'.repeat(64));
  }, 60_000);

  /** A package folder: the real sources (so it has a fingerprint), build/libtorch.json, the real local build (a symlink). */
  function pkg(name: string, { local = true } = {}): { root: string; prebuild: string } {
    const p = path.join(dir, name);
    fs.mkdirSync(path.join(p, 'prebuilds', plat), { recursive: true });
    fs.mkdirSync(path.join(p, 'build', 'Release'), { recursive: true });
    for (const f of ['native', 'CMakeLists.txt', 'binding.gyp']) fs.cpSync(path.join(root, f), path.join(p, f), { recursive: true });
    fs.copyFileSync(path.join(root, 'build', 'libtorch.json'), path.join(p, 'build', 'libtorch.json'));
    if (local) fs.symlinkSync(real, path.join(p, 'build', 'Release', 'x2i.node'));
    return { root: p, prebuild: path.join(p, 'prebuilds', plat, prebuildName(targetLibTorch(root)!)) };
  }

  const load = (pkgRoot: string) => spawnSync(process.execPath, ['--input-type=module', '-e', `
    const { loadAddon } = await import(${JSON.stringify(new URL(`file://${loader}`).href)});
    try { console.log(JSON.stringify(loadAddon(process.argv[1]).buildInfo())); }
    catch (e) { console.error('LOAD_ERROR', e.code, e.message); process.exit(1); }`, pkgRoot], { encoding: 'utf8', timeout: 60_000 });

  const loadsLocal = (r: ReturnType<typeof load>) => {
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!).libtorchVersion).toBe(targetLibTorch(root));
  };

  it.skipIf(!gcc)('the attack is real: the module with an undefined symbol kills a plain require() (exit 127)', () => {
    // what require() of a .node file does: process.dlopen with lazy binding
    const r = spawnSync(process.execPath, ['-e', `process.dlopen({ exports: {} }, ${JSON.stringify(undefinedSo)})`], { encoding: 'utf8' });
    expect(r.status).toBe(127);
    expect(r.stderr).toContain('symbol lookup error');
  });

  it.skipIf(!gcc)('a prebuild with an undefined symbol is skipped (RTLD_NOW), the local build loads', () => {
    const p = pkg('undef');
    fs.copyFileSync(compileUndefined('undef-own', sourceFingerprint(p.root)!), p.prebuild);
    const r = load(p.root);
    loadsLocal(r);
    expect(r.stderr).toContain('X2I_ADDON_SKIPPED');
    expect(r.stderr).toContain(`skipped ${p.prebuild}: `);
    expect(r.stderr).toContain('undefined symbol: x2i_dist_missing');
  });

  it('a prebuild built from other sources is skipped, the local build loads', () => {
    const p = pkg('other-sources');
    copyWithFingerprint(real, p.prebuild, '0'.repeat(64));   // a copy of the real addon, another fingerprint
    const r = load(p.root);
    loadsLocal(r);
    expect(r.stderr).toMatch(new RegExp(`skipped ${p.prebuild.replace(/[+.]/g, '\\$&')}: built from other sources \\(fingerprint 000000000000…`));
  });

  it('a prebuild without a source fingerprint is skipped', () => {
    const p = pkg('no-fingerprint');
    fs.copyFileSync(real, p.prebuild);
    if (inspect(real)) return;   // a real build that carries one: covered by the test above
    const r = load(p.root);
    loadsLocal(r);
    expect(r.stderr).toContain('carries no source fingerprint');
  });

  it('a non-ELF prebuild and one for another machine are skipped, the local build loads', () => {
    const p = pkg('not-elf');
    fs.writeFileSync(p.prebuild, '#!/bin/sh\necho this is not a shared object, but long enough to have a header of 64 bytes\n');
    let r = load(p.root);
    loadsLocal(r);
    expect(r.stderr).toContain('invalid ELF header');
    const q = pkg('other-machine');
    const bytes = fs.readFileSync(real);
    bytes.writeUInt16LE(process.arch === 'arm64' ? 62 : 183, 18);   // e_machine
    fs.writeFileSync(q.prebuild, bytes);
    r = load(q.root);
    loadsLocal(r);
    expect(r.stderr).toContain('an ELF shared object for another machine');
  });

  it.skipIf(!gcc)('with every candidate bad: one clear error listing each, never a dead process', () => {
    const p = pkg('all-bad', { local: false });
    fs.copyFileSync(compileUndefined('undef-all-bad', sourceFingerprint(p.root)!), p.prebuild);
    fs.copyFileSync(real, path.join(p.root, 'prebuilds', plat, prebuildName('0.0.1+cpu')));
    fs.writeFileSync(path.join(p.root, 'build', 'Release', 'x2i.node'), 'not an ELF file');
    const r = load(p.root);
    expect(r.signal).toBeNull();
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('LOAD_ERROR ERR_ADDON_LOAD x2i: could not load the native addon');
    expect(r.stderr).toContain(`${p.prebuild}: undefined symbol: x2i_dist_missing`);
    expect(r.stderr).toContain('libtorch-0.0.1+cpu.node: built for LibTorch 0.0.1+cpu');
    expect(r.stderr).toContain(`${path.join(p.root, 'build', 'Release', 'x2i.node')}: file too short`);
    expect(r.stderr).toContain('npm rebuild x2i');
  });

  it('a prebuild from these sources loads (no local build needed)', () => {
    const p = pkg('good-prebuild', { local: false });
    copyWithFingerprint(real, p.prebuild, sourceFingerprint(p.root)!);
    const r = load(p.root);
    loadsLocal(r);
    expect(r.stderr).not.toContain('X2I_ADDON_SKIPPED');
    expect(r.stderr).not.toContain('X2I_STALE_BUILD');
  });

  it.skipIf(!gcc || !fs.existsSync(path.join(root, 'dist', 'core', 'native.js')))(
    'scripts/install.mjs checks a prebuild as the loader does, in a child process', async () => {
      const { checkPrebuild } = await import(path.join(root, 'scripts', 'install.mjs')) as {
        checkPrebuild: (file: string, lt: { lib: string }, root?: string) => string | undefined };
      const lt = JSON.parse(fs.readFileSync(path.join(root, 'build', 'libtorch.json'), 'utf8'));
      const text = path.join(dir, 'install-text.node');
      fs.writeFileSync(text, 'not an ELF file');
      expect(checkPrebuild(text, lt)).toMatch(/file too short/);
      const other = path.join(dir, 'install-other.node');
      copyWithFingerprint(real, other, '0'.repeat(64));
      expect(checkPrebuild(other, lt)).toMatch(/built from other sources/);
      const undef = compileUndefined('install-undef', sourceFingerprint(root)!);
      expect(checkPrebuild(undef, lt)).toMatch(/undefined symbol: x2i_dist_missing/);
      const good = path.join(dir, 'install-good.node');
      copyWithFingerprint(real, good, spawnSync(process.execPath, [path.join(root, 'scripts', 'sources.mjs'), '--fingerprint'],
        { encoding: 'utf8' }).stdout.trim());
      expect(checkPrebuild(good, lt)).toBeUndefined();
    });

  it('a stale local build loads with one warning (a developer editing native/ is not blocked)', () => {
    const p = pkg('stale');
    fs.appendFileSync(path.join(p.root, 'native', 'core', 'errors.h'), '\n// edited, not rebuilt\n');
    const r = load(p.root);
    loadsLocal(r);
    expect(r.stderr).toContain('X2I_STALE_BUILD');
    expect(r.stderr).toContain('rebuild with `npm run build:native`');
  });
});

/** A copy of a binary whose embedded fingerprint (patched in place, else appended) is fp. */
function copyWithFingerprint(from: string, to: string, fp: string): void {
  const b = fs.readFileSync(from);
  const at = b.indexOf('x2i-source-fingerprint:');
  if (at >= 0) b.write(fp, at + 'x2i-source-fingerprint:'.length, 'latin1');
  fs.writeFileSync(to, at >= 0 ? b : Buffer.concat([b, Buffer.from(`x2i-source-fingerprint:${fp}`)]));
}

function inspect(file: string): boolean {
  const b = fs.readFileSync(file);
  return b.includes('x2i-source-fingerprint:');
}
