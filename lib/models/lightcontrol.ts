/** x2i.LightControl: X2I's ControlNeXt branches, one per FLUX double-stream block, turning a hint image and the
 * timestep into residual tokens for the image stream (native/models/lightcontrol.cc). */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { loadSafetensors, loadTorchCheckpoint, saveSafetensors } from '../core/io.js';
import { addon } from '../core/native.js';
import type { NativeLightControl, NativeLightControlConfig } from '../core/addon.js';
import { CONFIG_LIMITS, ConfigReader, describeValue } from '../core/config.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { Tensor, type DType } from '../core/tensor.js';
import { afterAbortCheck, defaultDtype, randomNative, type LoadingOptions, type RandomOptions } from './pretrained.js';
import { resolveModelPath } from '../core/hub.js';

/** The LightControl config (config.json's snake_case fields). Absent fields take the official values. */
export interface LightControlConfig {
  /** ControlNeXtModel's constructor arguments (official: [128, 128], [128, 256], [4, 8], 256, 320). */
  in_channels?: [number, number];
  out_channels?: [number, number];
  groups?: [number, number];
  time_embed_dim?: number;
  /** Ignored by the official class; kept for the round trip. */
  final_out_channels?: number;
  /** One branch per double-stream block (FLUX.1: 19); from the checkpoint's keys when absent. */
  num_branches?: number;
  /** Widths the official class hard-codes (official: [64, 64, 128], 2, 8, 3072 = FLUX.1's inner dim, 128). */
  embedding_channels?: [number, number, number];
  embedding_norm_groups?: number;
  mid_norm_groups?: number;
  control_out_channels?: number;
  time_proj_channels?: number;
  /** The residuals' scale in the transformer (a plain attribute in the official code; 1.0). */
  scale?: number;
  /** Fixed by the official code (checked when present): true, 0, 16. */
  flip_sin_to_cos?: boolean;
  downscale_freq_shift?: number;
  hint_pixels_per_token?: number;
}

/** Every config field the model keeps. */
export type LightControlFullConfig = Required<Omit<LightControlConfig, 'flip_sin_to_cos' | 'downscale_freq_shift' | 'hint_pixels_per_token'>>;

/** The official ControlNeXtModel of X2I's LightControl on FLUX.1 (19 branches, D = 3072). */
export const LIGHTCONTROL_OFFICIAL_CONFIG: Readonly<LightControlFullConfig> = Object.freeze<LightControlFullConfig>({
  in_channels: [128, 128], out_channels: [128, 256], groups: [4, 8], time_embed_dim: 256, final_out_channels: 320,
  num_branches: 19, embedding_channels: [64, 64, 128], embedding_norm_groups: 2, mid_norm_groups: 8,
  control_out_channels: 3072, time_proj_channels: 128, scale: 1.0,
});

/** config.json keys that document the model or its test data and are not read (the golden fixtures' extras,
 * diffusers' metadata). */
const DOCUMENTATION_KEYS = new Set(['notes', 'official_defaults', 'hint_shape', 'seed', 'param_init', 'hint_init',
  'transformer', '_class_name', '_diffusers_version', '_name_or_path']);

export interface LightControlLoadOptions extends LoadingOptions {
  /** 'cpu' (default) or 'cuda[:N]'. */
  device?: string;
  /** Default: 'bfloat16' on CUDA, 'float32' on the CPU (official bf16 checkpoints are cast to it). */
  dtype?: DType;
  /** Config fields over config.json's (or over the official config when there is none). */
  config?: LightControlConfig;
}

export interface LightControlInfo {
  /** Parameter elements over all branches. */
  parameters: number;
  branches: number;
}

export interface LightControlInputs {
  /** [B, 3, H, W] in [−1, 1], H and W multiples of 16 (one token per 16×16 pixels: the latent token grid). */
  hint: Tensor;
  /** FLUX's timestep in 0..1: [B], a one-element tensor or a number (the branches see 1000·timestep). */
  timestep: Tensor | number;
}

/** The native config from config.json's fields (validated: types, ranges, the channel rules). */
function nativeConfig(config: Record<string, unknown>, source: string, numBranches?: number): NativeLightControlConfig {
  const r = new ConfigReader(config, source);
  for (const k of Object.keys(config))
    if (!Object.prototype.hasOwnProperty.call(LIGHTCONTROL_OFFICIAL_CONFIG, k) && !DOCUMENTATION_KEYS.has(k) &&
      !['flip_sin_to_cos', 'downscale_freq_shift', 'hint_pixels_per_token'].includes(k))
      throw new X2IError(`${source}: unknown field '${k}' (not a LightControl config field)`, 'ERR_CONFIG');
  const o = LIGHTCONTROL_OFFICIAL_CONFIG;
  r.check(r.bool('flip_sin_to_cos', true), "field 'flip_sin_to_cos' must be true (the official Timesteps)");
  r.check(r.num('downscale_freq_shift', { fallback: 0 }) === 0, "field 'downscale_freq_shift' must be 0 (the official Timesteps)");
  r.check(r.num('hint_pixels_per_token', { fallback: 16 }) === 16, "field 'hint_pixels_per_token' must be 16 (total stride of the branch)");
  r.num('scale', { fallback: o.scale });
  const pair = (k: 'in_channels' | 'out_channels' | 'groups'): [number, number] => {
    const v = r.intList(k, { length: 2, fallback: [...o[k]] });
    return [v[0], v[1]];
  };
  const emb = r.intList('embedding_channels', { length: 3, fallback: [...o.embedding_channels] });
  const c: NativeLightControlConfig = {
    inChannels: pair('in_channels'), outChannels: pair('out_channels'), groups: pair('groups'),
    timeEmbedDim: r.int('time_embed_dim', { fallback: o.time_embed_dim }),
    finalOutChannels: r.int('final_out_channels', { fallback: o.final_out_channels }),
    embeddingChannels: [emb[0], emb[1], emb[2]],
    embeddingNormGroups: r.int('embedding_norm_groups', { fallback: o.embedding_norm_groups }),
    midNormGroups: r.int('mid_norm_groups', { fallback: o.mid_norm_groups }),
    controlOutChannels: r.int('control_out_channels', { fallback: o.control_out_channels }),
    timeProjChannels: r.int('time_proj_channels', { fallback: o.time_proj_channels }),
    numBranches: r.layers('num_branches', { fallback: numBranches ?? o.num_branches }),
  };
  r.check(c.timeProjChannels % 2 === 0, `field 'time_proj_channels' must be even, found ${c.timeProjChannels}`);
  r.check(c.embeddingChannels[2] === c.inChannels[0],
    `embedding_channels[2] (${c.embeddingChannels[2]}) must equal in_channels[0] (${c.inChannels[0]})`);
  r.check(c.outChannels[0] === c.inChannels[1], `in_channels[1] (${c.inChannels[1]}) must equal out_channels[0] (${c.outChannels[0]})`);
  for (const i of [0, 1])
    r.check(c.inChannels[i] % c.groups[i] === 0 && c.outChannels[i] % c.groups[i] === 0,
      `groups[${i}] (${c.groups[i]}) must divide in_channels[${i}] (${c.inChannels[i]}) and out_channels[${i}] (${c.outChannels[i]})`);
  for (const e of c.embeddingChannels)
    r.check(e % c.embeddingNormGroups === 0, `embedding_norm_groups (${c.embeddingNormGroups}) must divide embedding_channels (${e})`);
  r.check(c.outChannels[1] % c.midNormGroups === 0, `mid_norm_groups (${c.midNormGroups}) must divide out_channels[1] (${c.outChannels[1]})`);
  return c;
}

/** The weights file and the config.json (if any) of a path. */
function resolve(p: string): { file: string; configFile?: string } {
  if (!fs.existsSync(p)) throw new X2IError(`${p}: no such file or folder`, 'ERR_FILE_NOT_FOUND');
  if (!fs.statSync(p).isDirectory()) {
    if (!/\.(bin|safetensors|pt|pth)$/.test(p))
      throw new X2IError(`${p}: expected a LightControl weights file (.bin, .safetensors) or a folder`, 'ERR_INVALID_ARG');
    const sibling = path.join(path.dirname(p), 'config.json');
    return { file: p, configFile: fs.existsSync(sibling) ? sibling : undefined };
  }
  const files = fs.readdirSync(p);
  const configFile = files.includes('config.json') ? path.join(p, 'config.json') : undefined;
  for (const name of ['diffusion_pytorch_model.safetensors', 'lightcontrol.safetensors', 'diffusion_pytorch_model.bin', 'lightcontrol.bin'])
    if (files.includes(name)) return { file: path.join(p, name), configFile };
  const any = files.filter((f) => /\.(safetensors|bin|pt|pth)$/.test(f));
  if (any.length === 1) return { file: path.join(p, any[0]), configFile };
  throw new X2IError(`${p}: expected one LightControl weights file (.safetensors, .bin), found ${any.join(', ') || 'none'}`,
    'ERR_FILE_NOT_FOUND');
}

function readConfig(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new X2IError(`${file}: not valid JSON (${(e as Error).message})`, 'ERR_CONFIG');
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new X2IError(`${file}: the config must be an object, found ${describeValue(v)}`, 'ERR_CONFIG');
  return { ...v };
}

/** Official names `<i>.<param>`: drops the `module.` prefix of the official (DeepSpeed/accelerate-wrapped) saves;
 * any other layout is an error naming the key. Also the number of branches the keys hold. */
function canonical(w: Record<string, Tensor>, file: string): { weights: Record<string, Tensor>; branches: number } {
  const out: Record<string, Tensor> = {};
  let branches = 0;
  for (const [k, t] of Object.entries(w)) {
    const name = k.replace(/^module\./, '');
    const m = /^(\d+)\.[a-z_]/.exec(name);
    if (!m || Number(m[1]) >= CONFIG_LIMITS.layers) {
      for (const x of Object.values(w)) x.dispose();
      throw new X2IError(`LightControl (${file}): unexpected tensor '${k}' (expected '<branch>.<parameter>' or ` +
        `'module.<branch>.<parameter>', e.g. '0.time_embedding.linear_1.weight')`, 'ERR_CHECKPOINT_KEY');
    }
    if (Object.prototype.hasOwnProperty.call(out, name)) {
      for (const x of Object.values(w)) x.dispose();
      throw new X2IError(`LightControl (${file}): tensor '${name}' is stored twice (with and without 'module.')`, 'ERR_CHECKPOINT_KEY');
    }
    branches = Math.max(branches, Number(m[1]) + 1);
    Object.defineProperty(out, name, { value: t, enumerable: true, writable: true, configurable: true });
  }
  if (branches === 0) throw new X2IError(`LightControl (${file}): the file holds no tensors`, 'ERR_CHECKPOINT_KEY');
  return { weights: out, branches };
}

export class LightControl extends NativeModel<NativeLightControl> {
  readonly info: Readonly<LightControlInfo>;
  readonly device: string;
  readonly dtype: DType;
  /** The config (snake_case, every field filled). */
  readonly config: Readonly<LightControlFullConfig>;
  /** The scale the official transformer applies to the residuals (1.0). */
  readonly scale: number;

  private constructor(h: NativeLightControl, c: NativeLightControlConfig, scale: number) {
    super(h, 'LightControl');
    const { device, dtype, ...info } = h.info();
    this.info = Object.freeze(info);
    this.device = device;
    this.dtype = dtype as DType;
    this.scale = scale;
    this.config = Object.freeze({ in_channels: c.inChannels, out_channels: c.outChannels, groups: c.groups,
      time_embed_dim: c.timeEmbedDim, final_out_channels: c.finalOutChannels, num_branches: c.numBranches,
      embedding_channels: c.embeddingChannels, embedding_norm_groups: c.embeddingNormGroups, mid_norm_groups: c.midNormGroups,
      control_out_channels: c.controlOutChannels, time_proj_channels: c.timeProjChannels, scale });
  }

  /**
   * Loads X2I's LightControl: a folder (config.json + `diffusion_pytorch_model.bin` / `lightcontrol.bin` /
   * `*.safetensors`), or a single `.bin` (torch.save, as the official training writes it: `module.<i>.<param>`,
   * bf16) or `.safetensors` file (`<i>.<param>`; a config.json beside it is read); a Hugging Face repo id in the local
   * cache (resolveModelPath) names either. Without config.json the official
   * config applies; `opts.config` is laid over either; without `num_branches` the number of branches comes from the keys.
   */
  static async fromPretrained(p: string, opts: LightControlLoadOptions = {}): Promise<LightControl> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder or file path', p);
    const { device, dtype } = defaultDtype(opts);
    if (opts.config !== undefined && (!opts.config || typeof opts.config !== 'object' || Array.isArray(opts.config)))
      throw invalidArg('options.config', 'an object of config.json fields', opts.config);
    const { file, configFile } = resolve(resolveModelPath(p, opts));
    const source = configFile ?? 'options.config';
    const config = { ...(configFile ? readConfig(configFile) : {}), ...opts.config };
    nativeConfig(config, source, 1);  // a bad config fails before the weights are read
    const load = { device, dtype, signal: opts.signal, onProgress: opts.onProgress };
    const raw = file.endsWith('.safetensors') ? await loadSafetensors(file, load) : await loadTorchCheckpoint(file, load);
    const { weights, branches } = canonical(raw, file);
    try {
      const c = nativeConfig(config, source, branches);
      const Native = addon().NativeLightControl;
      const handles = Object.fromEntries(Object.entries(weights).map(([k, t]) => [k, t.handle]));
      const h = afterAbortCheck(await nativeCall(() => Native.load(c, handles, file)), opts.signal);
      return new LightControl(h, c, new ConfigReader(config, source).num('scale', { fallback: 1 }));
    } finally {
      for (const t of Object.values(weights)) t.dispose();
    }
  }

  /** Branches of the given config (the official one by default: 19 branches at FLUX.1's width) with random weights
   * drawn on the device (RandomInit: PyTorch's default conv/linear init, norms 1, biases 0). */
  static async fromConfig(config: LightControlConfig = {}, opts: RandomOptions = {}): Promise<LightControl> {
    const c = nativeConfig({ ...config }, 'config');
    const h = await randomNative(addon().NativeLightControl, c, opts);
    return new LightControl(h, c, new ConfigReader({ ...config }, 'config').num('scale', { fallback: 1 }));
  }

  /** hint [B, 3, H, W] in [−1, 1] and FLUX's timestep (0..1) → residuals [B, branches, (H/16)·(W/16), D]: branch i's
   * tokens (row-major, as FLUX's img_ids), added to the image stream after double block i. */
  async forward(inputs: LightControlInputs): Promise<{ residuals: Tensor }> {
    if (!inputs || typeof inputs !== 'object') throw invalidArg('inputs', '{ hint: Tensor, timestep: Tensor | number }', inputs);
    const { hint, timestep } = inputs;
    if (!(hint instanceof Tensor)) throw invalidArg('hint', 'a Tensor [B, 3, H, W]', hint);
    requireNonEmpty('hint', hint, 'image or batch');
    let t: Tensor;
    if (typeof timestep === 'number') {
      if (!Number.isFinite(timestep)) throw invalidArg('timestep', 'a finite number or a Tensor', timestep);
      t = Tensor.fromArray(new Float32Array([timestep]), [1]);
    } else if (timestep instanceof Tensor) {
      t = timestep;
    } else {
      throw invalidArg('timestep', 'a Tensor [B] or a number', timestep);
    }
    try {
      const [x, th] = [hint.handle, t.handle];
      return { residuals: new Tensor(await this.call((h) => h.forward(x, th))) };
    } finally {
      if (t !== timestep) t.dispose();
    }
  }

  /** The weights under their official names `<i>.<param>` (views of the model's: dispose them, not the model). */
  weights(): Record<string, Tensor> {
    return Object.fromEntries(Object.entries(this.native().weights()).map(([k, h]) => [k, new Tensor(h)]));
  }

  /** Saves the weights as safetensors under the official names `<i>.<param>` (loadable by fromPretrained). */
  async save(file: string, metadata: Record<string, string> = {}): Promise<void> {
    const w = this.weights();
    try {
      await saveSafetensors(file, w, { format: 'pt', 'x2i.model': 'LightControl', ...metadata });
    } finally {
      for (const t of Object.values(w)) t.dispose();
    }
  }
}
