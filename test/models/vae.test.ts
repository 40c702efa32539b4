import fs from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AutoencoderKL } from '../../lib/index.js';
import { golden, tmpDir } from '../helpers.js';

const dir = path.join(golden, 'vae');
const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

it('decode and encode (posterior mean) match diffusers', async () => {
  const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
  using vae = await AutoencoderKL.fromPretrained(dir);
  expect([vae.scalingFactor, vae.shiftFactor]).toEqual([0.3611, 0.1159]);
  const d = await vae.decode(io.latents);
  expect(d.shape).toEqual([2, 3, 32, 32]);
  expect(await x2i.relativeError(d, io.decoded)).toBeLessThan(1e-4);
  expect(await x2i.relativeError(await vae.encode(io.image), io.encoded_mean)).toBeLessThan(1e-4);
});

it('decoder-only files, wrong shapes, unsupported configs', async () => {
  const w = await x2i.loadSafetensors(path.join(dir, 'diffusion_pytorch_model.safetensors'));
  const d = path.join(tmp, 'decoder-only');
  fs.mkdirSync(d);
  await x2i.saveSafetensors(path.join(d, 'diffusion_pytorch_model.safetensors'),
    Object.fromEntries(Object.entries(w).filter(([k]) => k.startsWith('decoder.'))));
  fs.copyFileSync(path.join(dir, 'config.json'), path.join(d, 'config.json'));
  using dec = await AutoencoderKL.fromPretrained(d);
  const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
  expect(await x2i.relativeError(await dec.decode(io.latents), io.decoded)).toBeLessThan(1e-4);
  await expect(dec.encode(io.image)).rejects.toThrow(/no encoder/);
  await expect(dec.decode(io.image)).rejects.toThrow(/latents has shape \[2, 3, 32, 32\], expected \[B, 4, H, W\]/);
  const q = path.join(tmp, 'quant');
  fs.mkdirSync(q);
  fs.writeFileSync(path.join(q, 'config.json'), JSON.stringify({ ...JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')), use_quant_conv: true }));
  await expect(AutoencoderKL.fromPretrained(q)).rejects.toThrow(/quant convs are not supported/);
});
