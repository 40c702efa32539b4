import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { LightControl, Tensor } from '../../lib/index.js';
import { golden, tmpDir } from '../helpers.js';

const dir = path.join(golden, 'lightcontrol');
const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The golden config's sizes as options.config (no config.json beside the file). */
const TINY = { in_channels: [16, 16], out_channels: [16, 32], groups: [4, 8], time_embed_dim: 32, final_out_channels: 32,
  embedding_channels: [8, 8, 16], control_out_channels: 32 } as const satisfies x2i.LightControlConfig;

/** A copy of the golden safetensors' tensors, changed by `edit`, written alone in a fresh folder. */
async function variant(name: string, edit: (w: Record<string, Tensor>) => Promise<Record<string, Tensor>> | Record<string, Tensor>): Promise<string> {
  const w = await x2i.loadSafetensors(path.join(dir, 'lightcontrol.safetensors'));
  const d = fs.mkdtempSync(path.join(tmp, 'v-'));
  const f = path.join(d, name);
  await x2i.saveSafetensors(f, await edit(w));
  return f;
}

describe('LightControl matches the official X2I ControlNeXt branches', () => {
  const outputs: Record<string, Float32Array> = {};
  for (const file of ['lightcontrol.bin', 'lightcontrol.safetensors']) {
    it(`from ${file} (config.json beside it)`, async () => {
      const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
      using lc = await LightControl.fromPretrained(path.join(dir, file));
      expect(lc.info.branches).toBe(2);
      expect(lc.config.control_out_channels).toBe(32);
      expect(lc.scale).toBe(1);
      const { residuals } = await lc.forward({ hint: io.hint, timestep: io.timestep });
      expect(residuals.shape).toEqual([2, 2, 64, 32]);
      expect(residuals.shape).toEqual(io.branch_outputs.shape);
      const err = await x2i.relativeError(residuals, io.branch_outputs);
      console.log(`LightControl ${file}: relative error ${err.toExponential(2)}`);
      expect(err).toBeLessThan(1e-4);
      outputs[file] = await residuals.toArray() as Float32Array;
    });
  }

  it('the .bin (module.-prefixed torch.save) and the safetensors give identical residuals', () => {
    expect(outputs['lightcontrol.bin']).toBeDefined();
    expect(outputs['lightcontrol.bin']).toEqual(outputs['lightcontrol.safetensors']);
  });

  it('loads the folder, and a lone file with options.config (branches from the keys)', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    using folder = await LightControl.fromPretrained(dir);
    const lone = await variant('diffusion_pytorch_model.safetensors', (w) => w);
    using file = await LightControl.fromPretrained(lone, { config: TINY });
    expect(file.info.branches).toBe(2);
    for (const lc of [folder, file]) {
      const { residuals } = await lc.forward({ hint: io.hint, timestep: io.timestep });
      expect(await x2i.relativeError(residuals, io.branch_outputs)).toBeLessThan(1e-4);
    }
    // the official sizes do not fit these tensors: the error names the tensor and the shapes
    await expect(LightControl.fromPretrained(lone)).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_SHAPE',
      message: expect.stringMatching(/'0\.time_embedding\.linear_1\.weight' has shape \[32, 128\], expected \[256, 128\]/) });
  });

  it('a scalar timestep is broadcast over the batch; bf16 checkpoints load', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    using lc = await LightControl.fromPretrained(path.join(dir, 'lightcontrol.safetensors'));
    const a = await lc.forward({ hint: io.hint, timestep: 0.25 });
    const b = await lc.forward({ hint: io.hint, timestep: Tensor.fromArray(new Float32Array([0.25, 0.25]), [2]) });
    expect(await a.residuals.toArray()).toEqual(await b.residuals.toArray());
    const bf16 = await variant('lightcontrol.safetensors', async (w) =>
      Object.fromEntries(await Promise.all(Object.entries(w).map(async ([k, t]) => [k, await t.to({ dtype: 'bfloat16' })]))));
    using lb = await LightControl.fromPretrained(bf16, { config: TINY });
    expect(lb.dtype).toBe('float32');
    const r = await lb.forward({ hint: io.hint, timestep: io.timestep });
    expect(await x2i.relativeError(r.residuals, io.branch_outputs)).toBeLessThan(5e-2);
  });

  it('saves safetensors under the official names that load back identically', async () => {
    using lc = await LightControl.fromPretrained(path.join(dir, 'lightcontrol.bin'));
    const out = path.join(tmp, 'saved.safetensors');
    await lc.save(out);
    const names = (await x2i.readSafetensorsHeader(out)).entries.map((e) => e.name).sort();
    const want = (await x2i.readSafetensorsHeader(path.join(dir, 'lightcontrol.safetensors'))).entries.map((e) => e.name).sort();
    expect(names).toEqual(want);
    const a = await x2i.loadSafetensors(out), b = await x2i.loadSafetensors(path.join(dir, 'lightcontrol.safetensors'));
    for (const k of want) expect(await a[k].toArray(), k).toEqual(await b[k].toArray());
  });

  it('fromConfig: random branches of a config, the same seed giving the same weights', async () => {
    const cfg = { ...TINY, num_branches: 3 };
    using a = await LightControl.fromConfig(cfg, { seed: 7 });
    using b = await LightControl.fromConfig(cfg, { seed: 7 });
    expect(a.info.branches).toBe(3);
    const hint = await x2i.randn([1, 3, 32, 48], { seed: 1 });
    const [ra, rb] = [await a.forward({ hint, timestep: 0.5 }), await b.forward({ hint, timestep: 0.5 })];
    expect(ra.residuals.shape).toEqual([1, 3, 6, 32]);
    expect(await ra.residuals.toArray()).toEqual(await rb.residuals.toArray());
  });
});

describe('LightControl errors', () => {
  it('a missing tensor, a wrong shape, an unexpected tensor, an unknown layout: named', async () => {
    const missing = await variant('m.safetensors', ({ '1.mid_convs.1.bias': gone, ...rest }) => (gone.dispose(), rest));
    await expect(LightControl.fromPretrained(missing, { config: TINY })).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_KEY',
      message: expect.stringMatching(/m\.safetensors\): missing tensor '1\.mid_convs\.1\.bias' \(expected shape \[32\]\)/) });
    const shape = await variant('s.safetensors', async (w) => ({ ...w, '0.embedding.0.weight': await x2i.randn([8, 3, 3, 2]) }));
    await expect(LightControl.fromPretrained(shape, { config: TINY })).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_SHAPE',
      message: expect.stringMatching(/'0\.embedding\.0\.weight' has shape \[8, 3, 3, 2\], expected \[8, 3, 3, 3\]/) });
    const extra = await variant('e.safetensors', async (w) => ({ ...w, '0.foo.weight': await x2i.randn([2]) }));
    await expect(LightControl.fromPretrained(extra, { config: TINY })).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_KEY',
      message: expect.stringMatching(/unexpected tensor\(s\).*'0\.foo\.weight'/) });
    const layout = await variant('l.safetensors', async (w) => ({ ...w, 'controlnet.weight': await x2i.randn([2]) }));
    await expect(LightControl.fromPretrained(layout, { config: TINY })).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_KEY',
      message: expect.stringMatching(/unexpected tensor 'controlnet\.weight'/) });
    // a branch the config does not have
    await expect(LightControl.fromPretrained(path.join(dir, 'lightcontrol.bin'), { config: { num_branches: 1 } }))
      .rejects.toMatchObject({ code: 'ERR_CHECKPOINT_KEY', message: expect.stringMatching(/unexpected tensor\(s\).*'1\./) });
  });

  it('configs: an unknown key, a bad value, inconsistent channels', async () => {
    const f = path.join(dir, 'lightcontrol.safetensors');
    await expect(LightControl.fromPretrained(f, { config: { ...TINY, hidden_size: 3 } as x2i.LightControlConfig }))
      .rejects.toMatchObject({ code: 'ERR_CONFIG', message: expect.stringMatching(/unknown field 'hidden_size'/) });
    await expect(LightControl.fromPretrained(f, { config: { time_embed_dim: 0 } }))
      .rejects.toMatchObject({ code: 'ERR_CONFIG', message: expect.stringMatching(/field 'time_embed_dim' must be a positive integer/) });
    await expect(LightControl.fromPretrained(f, { config: { groups: [3, 8] } }))
      .rejects.toMatchObject({ code: 'ERR_CONFIG', message: expect.stringMatching(/groups\[0\] \(3\) must divide in_channels\[0\] \(16\)/) });
    await expect(LightControl.fromConfig({ embedding_channels: [64, 64, 96] }))
      .rejects.toMatchObject({ code: 'ERR_CONFIG', message: expect.stringMatching(/embedding_channels\[2\] \(96\) must equal in_channels\[0\] \(128\)/) });
    const d = fs.mkdtempSync(path.join(tmp, 'c-'));
    fs.copyFileSync(f, path.join(d, 'lightcontrol.safetensors'));
    fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify({ ...TINY, layers: 4 }));
    await expect(LightControl.fromPretrained(d)).rejects.toMatchObject({ code: 'ERR_CONFIG',
      message: expect.stringMatching(/config\.json: unknown field 'layers'/) });
  });

  it('hints that are not [B, 3, 16h, 16w], timesteps that do not match the batch', async () => {
    using lc = await LightControl.fromPretrained(path.join(dir, 'lightcontrol.safetensors'));
    await expect(lc.forward({ hint: await x2i.randn([2, 3, 120, 128]), timestep: 0.5 })).rejects.toMatchObject({
      code: 'ERR_SHAPE_MISMATCH', message: expect.stringMatching(/hint has shape \[2, 3, 120, 128\], expected \[B, 3, H, W\] with H and W positive multiples of 16/) });
    await expect(lc.forward({ hint: await x2i.randn([2, 4, 32, 32]), timestep: 0.5 })).rejects.toMatchObject({ code: 'ERR_SHAPE_MISMATCH' });
    await expect(lc.forward({ hint: await x2i.randn([3, 32, 32]), timestep: 0.5 })).rejects.toMatchObject({ code: 'ERR_SHAPE_MISMATCH' });
    await expect(lc.forward({ hint: await x2i.randn([2, 3, 32, 32]), timestep: await x2i.randn([3]) })).rejects.toMatchObject({
      code: 'ERR_SHAPE_MISMATCH', message: expect.stringMatching(/timestep has shape \[3\], expected \[2\] or a scalar/) });
    await expect(lc.forward({ hint: await x2i.randn([2, 3, 32, 32]), timestep: Number.NaN })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    lc.dispose();
    await expect(lc.forward({ hint: await x2i.randn([1, 3, 32, 32]), timestep: 0.5 })).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
  });
});
