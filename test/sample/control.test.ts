import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AutoencoderKL, FluxPipeline, FluxTransformer, LightControl, Tensor } from '../../lib/index.js';
import { fluxInputsOf, golden } from '../helpers.js';

const lcDir = path.join(golden, 'lightcontrol');
let io: Record<string, Tensor>;
let flux: FluxTransformer;
let lc: LightControl;
let pipe: FluxPipeline;

beforeAll(async () => {
  io = await x2i.loadSafetensors(path.join(lcDir, 'io.safetensors'));
  flux = await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'));
  lc = await LightControl.fromPretrained(path.join(lcDir, 'lightcontrol.bin'));
  // a tiny VAE with FLUX's factor 8 (16 pixels per packed token, as the branches' stride 16)
  const vae = await AutoencoderKL.fromConfig({ block_out_channels: [8, 8, 8, 8], layers_per_block: 1, norm_num_groups: 4,
    latent_channels: 4 }, { seed: 3 });
  pipe = new FluxPipeline({ transformer: flux, vae, lightControl: lc });
});
afterAll(() => {
  for (const t of Object.values(io)) t.dispose();
  flux.dispose();
  lc.dispose();
});

describe('LightControl in the transformer and the pipeline', () => {
  it('the transformer output with every branch added matches the official forward (golden sample)', async () => {
    const { residuals } = await lc.forward({ hint: io.hint, timestep: io.timestep });
    const inputs = fluxInputsOf(io);
    const { sample } = await flux.forward(inputs, { controlResiduals: residuals });
    const err = await x2i.relativeError(sample, io.sample);
    console.log(`LightControl transformer sample: relative error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-4);
    // a wrong residual shape is a named error
    await expect(flux.forward(inputs, { controlResiduals: io.hint })).rejects.toThrow(/controlResiduals has shape/);
    residuals.dispose();
    sample.dispose();
  });

  it('generate({ control }): the residuals steer the sampling; scale 0 is exactly no control', async () => {
    const e = { promptEmbeds: await x2i.randn([1, 7, 32], { seed: 1 }), pooledPromptEmbeds: await x2i.randn([1, 24], { seed: 2 }) };
    const base = { ...e, height: 32, width: 32, numInferenceSteps: 3, seed: 4 };
    const hint = { data: new Uint8Array(32 * 32 * 3).map((_, i) => (i * 37) % 256), width: 32, height: 32 };
    const plain = await pipe.generate(base);
    const off = await pipe.generate({ ...base, control: { image: hint, scale: 0 } });
    const on = await pipe.generate({ ...base, control: { image: hint } });
    expect(await off.images.toArray()).toEqual(await plain.images.toArray());
    expect(await x2i.relativeError(on.images, plain.images)).toBeGreaterThan(1e-3);
    await expect(new FluxPipeline({ transformer: flux, vae: pipe.vae }).generate({ ...base, control: { image: hint } }))
      .rejects.toThrow(/no LightControl/);
    for (const r of [plain, off, on]) r.images.dispose();
  });

  it('generate({ loraScales }): an adapter per generation; fused and unfused give the same images', async () => {
    const e = { promptEmbeds: await x2i.randn([1, 7, 32], { seed: 1 }), pooledPromptEmbeds: await x2i.randn([1, 24], { seed: 2 }) };
    const base = { ...e, height: 32, width: 32, numInferenceSteps: 3, seed: 4 };
    const plain = await pipe.generate(base);
    const name = await flux.loadLora(path.join(golden, 'flux-lora', 'lora_diffusers.safetensors'));
    const withLora = await pipe.generate(base);
    const disabled = await pipe.generate({ ...base, loraScales: { [name]: 0 } });
    await flux.fuseLora();
    const fused = await pipe.generate(base);
    await flux.unfuseLora();
    flux.unloadLora(name);
    expect(await x2i.relativeError(disabled.images, plain.images)).toBeLessThan(1e-6);
    expect(await x2i.relativeError(withLora.images, plain.images)).toBeGreaterThan(1e-3);
    expect(await x2i.relativeError(fused.images, withLora.images)).toBeLessThan(1e-5);
    await expect(pipe.generate({ ...base, loraScales: { nope: 1 } })).rejects.toThrow(/no adapter 'nope'/);
    for (const r of [plain, withLora, disabled, fused]) r.images.dispose();
  });
});
