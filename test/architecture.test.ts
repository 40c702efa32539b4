// The structure of the repository, as ARCHITECTURE.md states it: model, training and sampling math free of
// N-API (only native/napi/ reaches <napi.h>), one set of concept folders mirrored by native/, lib/ and test/,
// GPU tests beside the CPU tests, ARCHITECTURE.md true of the tree, comments that cite only files of the
// repository.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { root } from './helpers.js';

const rel = (p: string) => path.relative(root, p);

function walk(dir: string, keep: (f: string) => boolean = () => true): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p, keep));
    else if (e.isFile() && keep(p)) out.push(p);
  }
  return out.sort();
}
const folders = (dir: string, except: string[] = []) =>
  fs.readdirSync(path.join(root, dir), { withFileTypes: true })
    .filter((e) => e.isDirectory() && !except.includes(e.name)).map((e) => e.name).sort();

const nativeDir = path.join(root, 'native');
const nativeFiles = walk(nativeDir, (f) => /\.(cc|h|cu|cuh)$/.test(f));

/** The quoted includes of a native file, resolved against native/ (the include root) or the file's folder. */
function includes(file: string): { local: string[]; system: string[] } {
  const src = fs.readFileSync(file, 'utf8');
  const local: string[] = [], system: string[] = [];
  for (const m of src.matchAll(/^\s*#\s*include\s*([<"])([^>"]+)[>"]/gm)) {
    if (m[1] === '<') { system.push(m[2]); continue; }
    const candidates = [path.join(nativeDir, m[2]), path.join(path.dirname(file), m[2])];
    const hit = candidates.find((c) => fs.existsSync(c));
    if (hit) local.push(hit); else system.push(m[2]);
  }
  return { local, system };
}

/** The chain of includes by which `file` reaches napi.h, or undefined. */
function napiChain(file: string, seen = new Set<string>()): string[] | undefined {
  if (seen.has(file)) return undefined;
  seen.add(file);
  const { local, system } = includes(file);
  if (system.some((s) => /(^|\/)(napi|node_api|js_native_api)\.h$/.test(s))) return [rel(file)];
  for (const l of local) {
    const chain = napiChain(l, seen);
    if (chain) return [rel(file), ...chain];
  }
  return undefined;
}

describe('native: math apart from bindings', () => {
  it('only native/napi/ includes napi.h, directly or through another header', () => {
    const offenders = nativeFiles.filter((f) => !rel(f).startsWith('native/napi/'))
      .map((f) => napiChain(f)).filter((c): c is string[] => !!c).map((c) => c.join(' -> '));
    expect(offenders).toEqual([]);
  });

  it('every native file sits in a concept folder, and every quoted include resolves', () => {
    expect(fs.readdirSync(nativeDir).filter((f) => fs.statSync(path.join(nativeDir, f)).isFile())).toEqual([]);
    const unresolved = nativeFiles.flatMap((f) => includes(f).system.filter((s) => /\.(h|cuh)$/.test(s) &&
      fs.readFileSync(f, 'utf8').includes(`"${s}"`)).map((s) => `${rel(f)}: "${s}"`));
    expect(unresolved).toEqual([]);
  });

  it('the training step, the optimizer, clipping, the sampler and the image math have files of their own', () => {
    for (const f of ['train/step.h', 'train/adamw.h', 'train/grad_norm.h', 'sample/euler.h', 'sample/latents.h',
      'sample/image.h', 'sample/evaluate.h']) {
      expect(fs.existsSync(path.join(nativeDir, f)), `native/${f}`).toBe(true);
    }
  });
});

describe('one layout, mirrored', () => {
  const lib = folders('lib'), native = folders('native'), test = folders('test', ['fixtures']);

  it('native/, lib/ and test/ share their concept folders', () => {
    // lib's app/ (CLI, demo) has no native half; native's kernels/ (CUDA) and napi/ (bindings) no TS half
    expect(lib.filter((d) => d !== 'app')).toEqual(native.filter((d) => d !== 'kernels' && d !== 'napi'));
    // tests exist for every concept of lib/ and for the CUDA kernels; the bindings are tested through lib/
    expect(test).toEqual([...new Set([...lib, 'kernels'])].sort());
  });

  it('lib/ has only its entries at the top, test/ only shared helpers', () => {
    expect(fs.readdirSync(path.join(root, 'lib')).filter((f) => f.endsWith('.ts')).sort()).toEqual(['index.ts', 'testing.ts']);
    expect(walk(path.join(root, 'test'), (f) => /\.test\.(ts|mjs)$/.test(f)).map(rel)
      .filter((f) => path.dirname(f) === 'test')).toEqual(['test/architecture.test.ts']);
  });

  it('GPU tests sit beside the CPU tests of their concept', () => {
    const gpu = walk(path.join(root, 'test'), (f) => f.endsWith('.gpu.test.mjs')).map(rel);
    expect(gpu.length).toBeGreaterThan(0);
    expect(fs.existsSync(path.join(root, 'test', 'gpu'))).toBe(false);
    for (const f of gpu) {
      const concept = path.dirname(f).split(path.sep)[1];
      expect(test, f).toContain(concept);
    }
  });
});

describe('ARCHITECTURE.md', () => {
  const doc = fs.readFileSync(path.join(root, 'ARCHITECTURE.md'), 'utf8');

  it('names every folder of native/, lib/ and test/', () => {
    for (const top of ['native', 'lib', 'test']) {
      for (const d of folders(top)) expect(doc, `${top}/${d}/`).toContain(`${top}/${d}/`);
    }
  });

  it('every path it names exists', () => {
    const paths = [...doc.matchAll(/`((?:native|lib|test|bench|scripts|bin)\/[^`\s*]+)`/g)].map((m) => m[1]);
    expect(paths.length).toBeGreaterThan(20);
    // `test/<concept>/<name>.test.ts` and the like are patterns, not paths
    const missing = paths.filter((p) => !p.includes('<')).map((p) => p.replace(/[:#].*$/, ''))
      .filter((p) => !fs.existsSync(path.join(root, p)));
    expect(missing).toEqual([]);
  });
});

describe('comments cite only files of the repository', () => {
  it('no source file points at documents outside it', () => {
    const sources = [
      ...walk(path.join(root, 'native')), ...walk(path.join(root, 'lib')),
      ...walk(path.join(root, 'test'), (f) => !f.includes(`${path.sep}fixtures${path.sep}golden${path.sep}`)),
      ...walk(path.join(root, 'bench'), (f) => /\.(mjs|py)$/.test(f)), ...walk(path.join(root, 'scripts')),
      ...walk(path.join(root, 'bin')), path.join(root, 'CMakeLists.txt'), path.join(root, 'binding.gyp'),
    ].filter((f) => f !== path.join(root, 'test', 'architecture.test.ts'));
    const hits = sources.flatMap((f) => fs.readFileSync(f, 'utf8').split('\n')
      .map((line, i) => ({ line, i })).filter(({ line }) => /(^|[\s(`'"])(\.\.\/)*shared\/(docs|baselines|golden|device)\b/.test(line))
      .map(({ i }) => `${rel(f)}:${i + 1}`));
    expect(hits).toEqual([]);
  });
});
