import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { root } from '../helpers.js';

const script = path.join(root, 'scripts', 'libtorch.mjs');
const recorded = JSON.parse(fs.readFileSync(path.join(root, 'build', 'libtorch.json'), 'utf8'));
const run = (env: Record<string, string | undefined>) => spawnSync(process.execPath, [script, '--json'], {
  encoding: 'utf8', env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env } as NodeJS.ProcessEnv,
});

it('LIBTORCH wins when it points at a LibTorch folder', () => {
  const r = run({ LIBTORCH: recorded.root, X2I_PYTHON: '/nonexistent/python' });
  expect(r.status, r.stderr).toBe(0);
  const lt = JSON.parse(r.stdout);
  expect(lt.source).toBe('LIBTORCH');
  expect(lt.root).toBe(recorded.root);
  expect(lt.fullVersion).toBe(recorded.fullVersion);
});

it('fails with every place it tried and how to fix it', () => {
  const r = run({ LIBTORCH: '/nonexistent/libtorch', X2I_PYTHON: '/nonexistent/python', PYTHON: '/nonexistent/python2',
    PATH: '/nonexistent-bin', LIBTORCH_WHEEL: '/nonexistent/torch-9.9.9-cp311-none-any.whl' });
  expect(r.status).toBe(1);
  expect(r.stderr).toContain('LibTorch not found');
  expect(r.stderr).toMatch(/LIBTORCH=\/nonexistent\/libtorch: missing .*ATen\.h/);
  expect(r.stderr).toMatch(/Python torch \(\/nonexistent\/python\)/);
  expect(r.stderr).toContain('LIBTORCH_WHEEL=/nonexistent/torch-9.9.9-cp311-none-any.whl: no such file');
  expect(r.stderr).toContain('export LIBTORCH=');
  expect(r.stderr).toContain('pip install torch');
});
