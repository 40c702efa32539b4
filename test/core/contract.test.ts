// The typed addon contract (lib/core/addon.ts): lib/ reaches the addon without casts, the loaded addon exports
// exactly the names (and class members) the contract declares, and the benchmark/test probes stay out of the
// production table.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ADDON_CLASSES, ADDON_EXPORTS, ADDON_TESTING_EXPORTS } from '../../lib/core/addon.js';
import { addon } from '../../lib/core/native.js';
import { probes } from '../../lib/testing.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const lib = path.join(root, 'lib');

function tsFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? tsFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** The source without comments (a comment may say "any" in prose). */
function code(file: string): string {
  return fs.readFileSync(file, 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/(^|[^:\\])\/\/.*$/gm, '$1');
}

const sorted = (xs: Iterable<string>) => [...xs].sort();

describe('the addon contract', () => {
  it('lib/ has no casts through unknown and no any', () => {
    const files = tsFiles(lib);
    expect(files.length).toBeGreaterThan(20);
    const hits: string[] = [];
    for (const f of files) {
      code(f).split('\n').forEach((line, i) => {
        if (/\bas\s+unknown\s+as\b/.test(line) || /:\s*any\b/.test(line) || /\bas\s+any\b/.test(line) || /<any>/.test(line))
          hits.push(`${path.relative(root, f)}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(hits).toEqual([]);
  });

  it('the loaded addon exports exactly the names the contract declares', () => {
    expect(sorted(Object.keys(addon()))).toEqual(sorted(Object.keys(ADDON_EXPORTS)));
  });

  it('every native class has exactly the statics and methods the contract declares', () => {
    const exports: Record<string, unknown> = { ...addon() };
    const classes = Object.keys(exports).filter((k) => /^Native[A-Z]/.test(k));
    expect(sorted(Object.keys(ADDON_CLASSES))).toEqual(sorted(classes));
    for (const [name, { statics, methods }] of Object.entries(ADDON_CLASSES)) {
      const C = exports[name] as { prototype: object } & Record<string, unknown>;
      expect(typeof C, name).toBe('function');
      const own = Object.getOwnPropertyNames(C).filter((k) => typeof C[k] === 'function');
      expect(sorted(own), `${name} statics`).toEqual(sorted(Object.keys(statics)));
      const proto = Object.getOwnPropertyNames(C.prototype).filter((k) => k !== 'constructor');
      expect(sorted(proto), `${name} methods`).toEqual(sorted(Object.keys(methods)));
    }
  });

  it('addon.testing holds exactly the probes the contract declares', () => {
    expect(sorted(Object.keys(probes()))).toEqual(sorted(Object.keys(ADDON_TESTING_EXPORTS)));
    for (const [name, fn] of Object.entries(probes())) expect(typeof fn, name).toBe('function');
  });

  it('no probe is in the production table', () => {
    const production = new Set([...Object.keys(addon()), ...Object.keys(ADDON_EXPORTS)]);
    for (const name of Object.keys(ADDON_TESTING_EXPORTS)) expect(production.has(name), name).toBe(false);
    for (const name of ['noop', 'noopAsync', 'benchCopy', 'benchDistillTap', 'distillTap', 'narrowView', 'sdpaBackend', 'groupNorm'])
      expect(production.has(name), name).toBe(false);
    // public names that are not probes stay in the production table
    for (const name of ['matmul', 'relativeError']) expect(production.has(name), name).toBe(true);
  });

  it('only lib/testing.ts reaches the probes; the production entry does not import it', () => {
    const users = tsFiles(lib).filter((f) => !f.endsWith(path.join('lib', 'testing.ts')) && !f.endsWith(path.join('core', 'addon.ts')))
      .filter((f) => /\.testing\b|from '\.{1,2}\/(\.\.\/)*testing\.js'/.test(code(f)));
    expect(users.map((f) => path.relative(root, f))).toEqual([]);
  });
});
