import fs from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { loadAddon, prebuildName, targetLibTorch } from '../../lib/core/native.js';
import { root, tmpDir } from '../helpers.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const plat = `${process.platform}-${process.arch}`;

it('prefers a prebuild whose LibTorch tag matches the LibTorch in use', () => {
  const version = targetLibTorch(root);
  expect(version).toMatch(/^\d+\.\d+\.\d+/);
  const pkg = path.join(dir, 'good');
  fs.mkdirSync(path.join(pkg, 'prebuilds', plat), { recursive: true });
  fs.mkdirSync(path.join(pkg, 'build'), { recursive: true });
  fs.copyFileSync(path.join(root, 'build', 'libtorch.json'), path.join(pkg, 'build', 'libtorch.json'));
  fs.copyFileSync(path.join(root, 'build', 'Release', 'x2i.node'), path.join(pkg, 'prebuilds', plat, prebuildName(version!)));
  const addon = loadAddon(pkg);
  expect(addon.buildInfo().libtorchVersion).toBe(version);
});

it('throws one error listing every candidate and why it failed', () => {
  const pkg = path.join(dir, 'bad');
  fs.mkdirSync(path.join(pkg, 'prebuilds', plat), { recursive: true });
  fs.mkdirSync(path.join(pkg, 'build'), { recursive: true });
  fs.writeFileSync(path.join(pkg, 'build', 'libtorch.json'), JSON.stringify({ fullVersion: '2.13.0+cpu' }));
  fs.writeFileSync(path.join(pkg, 'prebuilds', plat, prebuildName('2.11.0+cu130')), 'not an ELF file');
  fs.writeFileSync(path.join(pkg, 'prebuilds', plat, prebuildName('2.13.0+cpu')), 'not an ELF file');
  let err: (Error & { code?: string }) | undefined;
  try {
    loadAddon(pkg);
  } catch (e) {
    err = e as Error;
  }
  expect(err?.code).toBe('ERR_ADDON_LOAD');
  expect(err?.message).toContain(`libtorch-2.11.0+cu130.node: built for LibTorch 2.11.0+cu130, but this install uses LibTorch 2.13.0+cpu`);
  expect(err?.message).toMatch(/libtorch-2\.13\.0\+cpu\.node: .*(invalid ELF header|file too short)/);
  expect(err?.message).toContain(`${path.join(pkg, 'build', 'Release', 'x2i.node')}: not found`);
  expect(err?.message).toContain('npm rebuild x2i');
});
