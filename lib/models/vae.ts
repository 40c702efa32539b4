/** x2i.AutoencoderKL: FLUX's VAE (native/models/vae.cc). */
import { X2IError, invalidArg } from '../core/errors.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { addon } from '../core/native.js';
import type { NativeAutoencoderKL, NativeVaeConfig, NativeTensor } from '../core/addon.js';
import { ConfigReader } from '../core/config.js';
import { loadNative, loadOptions, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { Tensor } from '../core/tensor.js';

/** FLUX.1's VAE config (vae/config.json). */
const FLUX_VAE: Record<string, unknown> = { in_channels: 3, out_channels: 3, latent_channels: 16, norm_num_groups: 32, layers_per_block: 2,
  block_out_channels: [128, 256, 512, 512], scaling_factor: 0.3611, shift_factor: 0.1159, use_quant_conv: false, use_post_quant_conv: false,
  mid_block_add_attention: true };

/** The native loader's config from a diffusers AutoencoderKL config. */
function nativeConfig(config: Record<string, unknown>, file: string): NativeVaeConfig {
  const r = new ConfigReader(config, file);
  for (const k of ['use_quant_conv', 'use_post_quant_conv']) if (config[k] !== null) r.bool(k, false);
  if (config.use_quant_conv || config.use_post_quant_conv)
    throw new X2IError(`${file}: quant convs are not supported (FLUX's VAE has none)`, 'ERR_CONFIG');
  const blocks = r.intList('block_out_channels', { max: 1 << 16 });
  for (const [k, v] of [['down_block_types', 'DownEncoderBlock2D'], ['up_block_types', 'UpDecoderBlock2D']] as const) {
    const types = config[k];
    if (types === undefined || types === null) continue;
    if (!Array.isArray(types)) throw r.error(k, types, `a list of '${v}'`);
    if (types.some((t) => t !== v)) throw new X2IError(`${file}: ${k} other than ${v} are not supported`, 'ERR_CONFIG');
    r.check(types.length === blocks.length, `field '${k}' has ${types.length} entries but block_out_channels has ${blocks.length}`);
  }
  const groups = r.int('norm_num_groups', { fallback: 32 });
  for (const c of blocks)
    r.check(c % groups === 0, `block_out_channels [${blocks.join(', ')}]: ${c} channels are not a multiple of norm_num_groups (${groups})`);
  r.num('scaling_factor', { fallback: 0.3611, positive: true });
  r.num('shift_factor', { fallback: 0.1159 });
  return { inChannels: r.int('in_channels', { fallback: 3 }), outChannels: r.int('out_channels', { fallback: 3 }),
    latentChannels: r.int('latent_channels'), normNumGroups: groups,
    layersPerBlock: r.layers('layers_per_block', { fallback: 2 }), blockOutChannels: blocks,
    midBlockAddAttention: r.bool('mid_block_add_attention', true) };
}

export class AutoencoderKL extends NativeModel<NativeAutoencoderKL> {
  readonly config: Readonly<Record<string, unknown>>;
  /** Latent normalisation the pipeline applies: z_vae = z / scalingFactor + shiftFactor (FLUX: 0.3611, 0.1159). */
  readonly scalingFactor: number;
  readonly shiftFactor: number;

  private constructor(h: NativeAutoencoderKL, config: Record<string, unknown>) {
    super(h, 'AutoencoderKL');
    this.config = Object.freeze(config);
    this.scalingFactor = Number(config.scaling_factor ?? 0.3611);
    this.shiftFactor = Number(config.shift_factor ?? 0.1159);
  }

  /** A diffusers VAE folder (FLUX's `vae/`: config.json + diffusion_pytorch_model.safetensors). */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<AutoencoderKL> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const { config, configFile: file, weights } = readModelFolder(p, opts.config, opts);
    const native = nativeConfig(config, file);
    const Native = addon().NativeAutoencoderKL;
    const h = await loadNative(weights, loadOptions(opts), (w) => Native.load(native, w, weights));
    return new AutoencoderKL(h, config);
  }

  /** A VAE of the given config (diffusers `config.json` fields; FLUX.1's VAE by default) with random weights
   * drawn on the device, encoder and decoder: benchmarks at real sizes without a checkpoint. */
  static async fromConfig(config: Record<string, unknown> = {}, opts: RandomOptions = {}): Promise<AutoencoderKL> {
    const c = { ...FLUX_VAE, ...config };
    return new AutoencoderKL(await randomNative(addon().NativeAutoencoderKL, nativeConfig(c, 'config'), opts), c);
  }

  /** Latents [B, C, h, w] → the raw decoder output [B, 3, 8h, 8w] (no scaling applied; about [−1, 1]). */
  async decode(latents: Tensor): Promise<Tensor> {
    if (!(latents instanceof Tensor)) throw invalidArg('latents', 'a Tensor', latents);
    requireNonEmpty('latents', latents);
    const x = latents.handle;
    return new Tensor(await this.call((h) => h.forward(x, 'decode')));
  }

  /** An image [B, 3, H, W] in [−1, 1] → the posterior mean [B, C, H/8, W/8] (no scaling applied). */
  async encode(image: Tensor): Promise<Tensor> {
    if (!(image instanceof Tensor)) throw invalidArg('image', 'a Tensor', image);
    requireNonEmpty('image', image, 'image or batch');
    const x = image.handle;
    return new Tensor(await this.call((h) => h.forward(x, 'encode')));
  }
}
