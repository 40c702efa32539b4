import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { root } from '../helpers.js';

// The GPU suite is every test/**/*.gpu.test.mjs (Node's test runner: it also runs on the GPU machine, which has
// no vitest), run by scripts/gpu-tests.mjs. Here it runs as a child process: on a CPU machine every test must
// report as skipped.
it('GPU suite (npm run test:gpu) passes, or skips cleanly without CUDA', () => {
  const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'gpu-tests.mjs'), '--test-reporter=tap'], {
    cwd: root, encoding: 'utf8', timeout: 300_000,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  expect(r.status, out).toBe(0);
  expect(out).toMatch(/^# fail 0$/m);
  if (!x2i.cuda.isAvailable()) {
    expect(out).toMatch(/^# pass 0$/m);
    expect(Number(/^# skipped (\d+)$/m.exec(out)?.[1])).toBeGreaterThan(0);
  } else {
    expect(Number(/^# pass (\d+)$/m.exec(out)?.[1])).toBeGreaterThan(10);
  }
});
