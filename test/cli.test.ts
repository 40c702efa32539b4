import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { golden, root, tmpDir } from './helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const x2i = (...args: string[]) => spawnSync(process.execPath, [path.join(root, 'bin', 'x2i.js'), ...args], { encoding: 'utf8' });

it('x2i info, help and unknown commands', () => {
  const info = x2i('info');
  expect(info.status).toBe(0);
  expect(info.stdout).toMatch(/libtorch\s+\d+\.\d+/);
  expect(x2i('help').stdout).toContain('generate');
  expect(x2i('nope').status).toBe(2);
});

it('x2i generate: a PNG from precomputed embeddings through FLUX and its VAE, with a progress bar', async () => {
  const out = path.join(tmp, 'a.png');
  const r = x2i('generate', '--flux', path.join(golden, 'flux-transformer'), '--vae', path.join(golden, 'vae'),
    '--embeds', path.join(golden, 'pipeline', 'io.safetensors'), '--height', '32', '--width', '32', '--steps', '4', '--out', out);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toContain('4/4 decode');
  const { default: sharp } = await import('sharp');
  const meta = await sharp(out).metadata();
  expect([meta.format, meta.width, meta.height]).toEqual(['png', 32, 32]);
  expect(x2i('generate').status).toBe(2);
  expect(x2i('generate', '--flux', 'x').stderr).toMatch(/give --prompt or --embeds/);
  expect(x2i('generate', '--flux', 'nowhere', '--prompt', 'x', '--mllm', 'm').stderr).toMatch(/student needs --mllm, --alignnet and --prompt/);
});
