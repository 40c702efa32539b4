// The layout of native/ (issue 11, "math apart from bindings"): N-API only in native/napi/, includes written from
// native/, comments that cite only repository files, and AdamW and gradient clipping written once.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { root } from '../helpers.js';

const native = path.join(root, 'native');

function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? files(p) : /\.(h|cc|cu|cuh)$/.test(e.name) ? [p] : [];
  });
}
const rel = (f: string) => path.relative(native, f);
const all = files(native);
const read = (f: string) => fs.readFileSync(f, 'utf8');

describe('native/ layout', () => {
  it('has the folders of the architecture, and nothing at its top level', () => {
    expect(new Set(all.map((f) => rel(f).split(path.sep)[0]))).toEqual(
      new Set(['core', 'models', 'train', 'sample', 'kernels', 'napi']));
    expect(all.filter((f) => !rel(f).includes(path.sep))).toEqual([]);
  });

  it('includes <napi.h> and uses Napi:: only in native/napi/', () => {
    const outside = all.filter((f) => !rel(f).startsWith(`napi${path.sep}`));
    expect(outside.length).toBeGreaterThan(30);
    expect(outside.filter((f) => /#include\s*<napi\.h>|Napi::|"napi\//.test(read(f))).map(rel)).toEqual([]);
  });

  it('writes every project include relative to native/, and each one exists', () => {
    const missing: string[] = [];
    for (const f of all)
      for (const m of read(f).matchAll(/#include\s+"([^"]+)"/g))
        if (!fs.existsSync(path.join(native, m[1]))) missing.push(`${rel(f)}: ${m[1]}`);
    expect(missing).toEqual([]);
  });

  it('cites no file outside the repository', () => {
    expect(all.filter((f) => /shared\/docs|\.\.\/shared/.test(read(f))).map(rel)).toEqual([]);
  });

  it('has one AdamW and one gradient clipping', () => {
    const adam = all.filter((f) => /addcdiv_\(/.test(read(f))).map(rel);
    expect(adam).toEqual([path.join('train', 'adamw.cc')]);
    const clip = all.filter((f) => /norm \+ 1e-6/.test(read(f))).map(rel);
    expect(clip).toEqual([path.join('train', 'grad_norm.cc')]);
  });
});
