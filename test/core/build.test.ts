// The two build routes agree and fail loudly: binding.gyp compiles exactly the files CMake compiles (one list,
// scripts/sources.mjs), both link with -Wl,--no-undefined (Node-API functions excepted), the source fingerprint
// is embedded so that the loader can read it without loading the binary, and `npm run build` never runs the
// prebuild script.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inspectBinary, sourceFingerprint } from '../../lib/core/native.js';
import { root, tmpDir } from '../helpers.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const script = path.join(root, 'scripts', 'sources.mjs');
const node = (args: string[], cwd = root) => spawnSync(process.execPath, [script, ...args], { cwd, encoding: 'utf8' });
const has = (cmd: string) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;

/** binding.gyp's sources as gyp sees them: the file parsed (comments dropped), each <!@(command) run in a staging
 * copy of the package (as scripts/prebuild.mjs builds; the command writes its generated unit under build/). */
function gypSources(): string[] {
  const stage = path.join(dir, 'gyp-stage');
  fs.rmSync(stage, { recursive: true, force: true });
  for (const f of ['binding.gyp', 'CMakeLists.txt', 'package.json', 'native', 'scripts'])
    fs.cpSync(path.join(root, f), path.join(stage, f), { recursive: true });
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(stage, 'node_modules'));
  const text = fs.readFileSync(path.join(stage, 'binding.gyp'), 'utf8').split('\n').filter((l) => !/^\s*#/.test(l)).join('\n');
  const gyp = JSON.parse(text);
  const out: string[] = [];
  for (const s of gyp.targets[0].sources as string[]) {
    const m = /^<!@\((.*)\)$/.exec(s);
    if (!m) { out.push(s); continue; }
    const r = spawnSync(m[1], { shell: true, cwd: stage, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    out.push(...r.stdout.split(/\s+/).filter(Boolean));
  }
  return out;
}

const nativeCc = (files: string[]) => files.filter((f) => f.startsWith('native/')).sort();

describe('one source list', () => {
  let cmakeFiles: string[] | undefined;
  let cmakeWhy = '';
  let ninja = '';
  beforeAll(() => {
    // a fresh configure (no compile, ~2 s) of CMakeLists.txt with compile_commands.json: what CMake compiles now
    if (!has('cmake')) { cmakeWhy = 'no cmake'; return; }
    const lt = spawnSync(process.execPath, [path.join(root, 'scripts', 'libtorch.mjs'), '--prefix'], { encoding: 'utf8' });
    if (lt.status !== 0) { cmakeWhy = `no LibTorch: ${lt.stderr}`; return; }
    const headers = spawnSync(process.execPath, ['-p', "require('node-api-headers').include_dir"], { cwd: root, encoding: 'utf8' });
    const b = path.join(dir, 'cmake');
    const r = spawnSync('cmake', ['-S', root, '-B', b, ...(has('ninja') ? ['-G', 'Ninja'] : []),
      `-DCMAKE_PREFIX_PATH=${lt.stdout.trim()}`, `-DNODE_API_HEADERS=${headers.stdout.trim()}`,
      `-DNODE_ADDON_API_DIR=${path.join(root, 'node_modules', 'node-addon-api')}`, '-DCMAKE_EXPORT_COMPILE_COMMANDS=ON'],
    { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const cc = JSON.parse(fs.readFileSync(path.join(b, 'compile_commands.json'), 'utf8')) as { file: string; command?: string }[];
    cmakeFiles = cc.map((c) => path.relative(root, c.file).split(path.sep).join('/'));
    for (const f of ['build.ninja', path.join('CMakeFiles', 'x2i.dir', 'link.txt')])
      if (fs.existsSync(path.join(b, f))) ninja += fs.readFileSync(path.join(b, f), 'utf8');
  }, 120_000);

  it('binding.gyp compiles exactly the native sources that CMake compiles', ({ skip }) => {
    if (!cmakeFiles) skip(cmakeWhy);
    const gyp = gypSources();
    const cmake = cmakeFiles!;
    expect(cmake.length).toBeGreaterThan(5);
    expect(nativeCc(gyp)).toEqual(nativeCc(cmake));
    // both also compile the generated unit with the fingerprint
    expect(gyp.some((f) => f.endsWith('x2i_fingerprint.cc'))).toBe(true);
    expect(cmake.some((f) => f.endsWith('generated/x2i_fingerprint.cc'))).toBe(true);
    // and the list is the one scripts/sources.mjs gives
    expect(nativeCc(gyp)).toEqual(node(['--list']).stdout.trim().split('\n').sort());
  });

  it('follows CMake\'s GLOB_RECURSE rule for a new file in a new folder', () => {
    const pkg = path.join(dir, 'glob');
    fs.mkdirSync(path.join(pkg, 'native', 'a', 'b'), { recursive: true });
    fs.mkdirSync(path.join(pkg, 'scripts'), { recursive: true });
    fs.copyFileSync(script, path.join(pkg, 'scripts', 'sources.mjs'));
    for (const f of ['a/b/deep.cc', 'top.cc', 'a/header.h', 'a/kernel.cu', 'a/b/not.cc.txt']) fs.writeFileSync(path.join(pkg, 'native', f), '');
    const r = spawnSync(process.execPath, [path.join(pkg, 'scripts', 'sources.mjs'), '--list'], { cwd: pkg, encoding: 'utf8' });
    expect(r.stdout.trim().split('\n')).toEqual(['native/a/b/deep.cc', 'native/top.cc']);
  });

  it('both routes link with -Wl,--no-undefined', ({ skip }) => {
    if (!cmakeFiles) skip(cmakeWhy);
    expect(ninja).toContain('-Wl,--no-undefined');
    expect(ninja).toMatch(/-Wl,@\S+x2i-napi-undefined\.rsp/);
    const gyp = fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8');
    expect(gyp).toContain('scripts/sources.mjs --ldflags');
    expect(gyp).toMatch(/"native",/);   // includes are written like "core/errors.h"
  });
});

describe('the source fingerprint', () => {
  it('is the same in the build script and the loader', () => {
    const r = node(['--fingerprint']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^[0-9a-f]{64}$/);
    expect(sourceFingerprint(root)).toBe(r.stdout.trim());
  });

  it('changes with any file under native/, CMakeLists.txt or binding.gyp', () => {
    const pkg = path.join(dir, 'fp');
    fs.mkdirSync(path.join(pkg, 'native', 'core'), { recursive: true });
    fs.writeFileSync(path.join(pkg, 'native', 'core', 'x.h'), 'a');
    const before = sourceFingerprint(pkg);
    for (const [f, text] of [['native/core/x.h', 'b'], ['CMakeLists.txt', 'x'], ['binding.gyp', '{}']]) {
      const pkg2 = path.join(dir, `fp-${path.basename(f)}`);
      fs.cpSync(pkg, pkg2, { recursive: true });
      fs.writeFileSync(path.join(pkg2, f), text);
      expect(sourceFingerprint(pkg2), f).not.toBe(before);
    }
    expect(sourceFingerprint(path.join(dir, 'no-such-package'))).toBeUndefined();
  });
});

describe('links fail loudly', () => {
  const gcc = has('gcc');
  const header = 'typedef struct napi_env__* napi_env; typedef struct napi_value__* napi_value;\n' +
    'int napi_create_object(napi_env, napi_value*);\n';
  const link = (name: string, body: string, extra: string[] = []) => {
    const src = path.join(dir, `${name}.c`);
    fs.writeFileSync(src, header + body);
    const flags = node(['--ldflags', '--rsp', path.join(dir, 'napi.rsp')]);
    expect(flags.status, flags.stderr).toBe(0);
    return spawnSync('gcc', ['-shared', '-fPIC', '-O2', src, ...extra, '-o', path.join(dir, `${name}.so`),
      ...flags.stdout.trim().split('\n')], { encoding: 'utf8' });
  };

  it.skipIf(!gcc)('a binary that references only Node-API functions links (node provides them)', () => {
    const r = link('napi_only', 'int use(napi_env e, napi_value* v) { return napi_create_object(e, v); }\n');
    expect(r.status, r.stderr).toBe(0);
  });

  it.skipIf(!gcc)('a binary missing one of its own symbols fails to LINK', () => {
    const r = link('missing', 'int x2i_dist_missing(void);\n' +
      'int use(napi_env e, napi_value* v) { return napi_create_object(e, v) + x2i_dist_missing(); }\n');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("undefined reference to `x2i_dist_missing'");
    expect(fs.existsSync(path.join(dir, 'missing.so'))).toBe(false);
  });

  it('excepts every Node-API function of node-api-headers, and only napi_* / node_api_* names', async () => {
    node(['--ldflags', '--rsp', path.join(dir, 'napi2.rsp')]);
    const listed = fs.readFileSync(path.join(dir, 'napi2.rsp'), 'utf8').trim().split('\n').map((l) => l.replace('--ignore-unresolved-symbol=', ''));
    expect(listed.every((s) => /^(napi|node_api)_\w+$/.test(s))).toBe(true);
    const { createRequire } = await import('node:module');
    const req = createRequire(path.join(root, 'package.json'));
    let symbols: Record<string, Record<string, string[]>> | undefined;
    try { symbols = req('node-api-headers').symbols; } catch { /* not installed */ }
    if (symbols) {
      const all = new Set(Object.values(symbols).flatMap((v) => Object.values(v).flat()));
      expect([...all].filter((s) => !listed.includes(s))).toEqual([]);
    }
  });

  it.skipIf(!gcc)('the fingerprint unit survives -O2 and strip, and is read from the file without loading it', () => {
    const unit = path.join(dir, 'unit', 'x2i_fingerprint.cc');
    expect(node(['--write-fingerprint', unit]).status).toBe(0);
    const so = path.join(dir, 'fp.so');
    const r = spawnSync('g++', ['-shared', '-fPIC', '-O2', unit, '-o', so], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    if (has('strip')) spawnSync('strip', [so]);
    expect(inspectBinary(so)).toEqual({ fingerprint: sourceFingerprint(root) });
  });
});

describe('npm scripts', () => {
  const scripts = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).scripts as Record<string, string>;
  /** The scripts that `npm run <name>` runs: pre<name>, <name>, post<name>, and every `npm run x` inside them. */
  const closure = (name: string, seen = new Set<string>()): Set<string> => {
    for (const s of [`pre${name}`, name, `post${name}`]) {
      if (!(s in scripts) || seen.has(s)) continue;
      seen.add(s);
      for (const m of scripts[s].matchAll(/npm run(?:-script)? ([\w:.-]+)/g)) closure(m[1], seen);
    }
    return seen;
  };

  it('`npm run build` never makes a prebuild (no `prebuild` script, nothing in its chain runs prebuild.mjs)', () => {
    expect(scripts.prebuild).toBeUndefined();
    const chain = closure('build');
    expect([...chain]).toEqual(expect.arrayContaining(['build', 'build:native', 'build:ts']));
    for (const s of chain) expect(scripts[s], s).not.toMatch(/prebuild\.mjs|prebuildify/);
    expect(scripts['build:prebuild']).toContain('scripts/prebuild.mjs');
    // no script whose name npm would run as a `pre` hook of the build chain
    for (const s of chain) expect(scripts[`pre${s}`] ?? '', `pre${s}`).not.toMatch(/prebuild/);
  });
});
