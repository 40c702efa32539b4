// The GPU suite: every test/**/*.gpu.test.mjs (each beside the CPU test of its concept), run by Node's own
// test runner, which the GPU machine has (it has no vitest). Usage: node scripts/gpu-tests.mjs [node --test
// options...] [files...]; without files, all of them. Exits with the runner's status.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The GPU test files, sorted, relative to the project root. */
export function gpuTestFiles() {
  const out = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory() && e.name !== 'fixtures') walk(rel);
      else if (e.isFile() && e.name.endsWith('.gpu.test.mjs')) out.push(rel);
    }
  };
  walk('test');
  return out.sort();
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const options = args.filter((a) => a.startsWith('-'));
  const files = args.filter((a) => !a.startsWith('-'));
  const r = spawnSync(process.execPath, ['--test', ...options, ...(files.length ? files : gpuTestFiles())],
    { cwd: root, stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
