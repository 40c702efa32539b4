// The README tells the truth: its quick start runs as written (from a project that installed x2i, as an ES
// module, on this Node), and every JavaScript example in it is valid syntax on the Node of this process (the CI
// machine runs the `engines` floor's major version: no syntax newer than that, such as `using` declarations).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { root, tmpDir } from '../helpers.js';

const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
const jsBlocks = [...readme.matchAll(/^```js\n([\s\S]*?)^```/gm)].map((m) => m[1]);

/** A temporary project with x2i installed (node_modules/x2i → this package). */
function project(): string {
  const dir = tmpDir();
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(root, path.join(dir, 'node_modules', 'x2i'), 'dir');
  return dir;
}

describe('README', () => {
  it('the quick start runs as written', () => {
    const section = readme.slice(readme.indexOf('## Quick start'), readme.indexOf('## API'));
    const code = /```js\n([\s\S]*?)```/.exec(section)?.[1];
    expect(code).toBeDefined();
    const dir = project();
    fs.writeFileSync(path.join(dir, 'quickstart.mjs'), code!);
    const r = spawnSync(process.execPath, ['quickstart.mjs'], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('[ 2, 3 ] float32 cpu');
    expect(r.stdout).toContain('[ 2, 4 ] 0');
    expect(r.stdout).toMatch(/tensors: 0, bytes: 0/);
    expect(fs.existsSync(path.join(dir, 'quickstart.safetensors'))).toBe(true);
  });

  it('every JavaScript example parses on this Node', () => {
    expect(jsBlocks.length).toBeGreaterThan(5);
    const dir = tmpDir();
    const bad = jsBlocks.flatMap((code, i) => {
      const f = path.join(dir, `example-${i}.mjs`);
      fs.writeFileSync(f, code);
      const r = spawnSync(process.execPath, ['--check', f], { encoding: 'utf8' });
      return r.status === 0 ? [] : [`example ${i}: ${r.stderr.split('\n').slice(0, 5).join(' | ')}`];
    });
    expect(bad).toEqual([]);
  });

  it('every repository path it names exists, and every npm script it names is defined', () => {
    const paths = [...readme.matchAll(/`((?:native|lib|test|bench|scripts|bin)\/[^`\s*<]+)`/g)].map((m) => m[1]);
    expect(paths.length).toBeGreaterThan(5);
    expect(paths.filter((p) => !fs.existsSync(path.join(root, p)))).toEqual([]);
    const scripts = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).scripts as Record<string, string>;
    const named = [...readme.matchAll(/npm run ([\w:-]+)/g)].map((m) => m[1]);
    expect(named.length).toBeGreaterThan(3);
    expect(named.filter((n) => !(n in scripts))).toEqual([]);
  });
});
