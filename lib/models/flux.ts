/** x2i.FluxTransformer: the FLUX.1 MM-DiT (native/models/flux.cc), teacher and student of X2I. */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { loadSafetensors, readSafetensorsHeader } from '../core/io.js';
import { addon } from '../core/native.js';
import type { NativeFlux, NativeFluxConfig, NativeFluxInputs, NativeTensor } from '../core/addon.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { CONFIG_LIMITS, ConfigReader, describeValue } from '../core/config.js';
import { defaultDtype } from './pretrained.js';
import { Tensor, type DType } from '../core/tensor.js';
import type { Divergence } from '../train/distill.js';

export interface DistillationStepResult {
  /** Sum of the finite per-layer terms. */
  loss: number;
  terms: { doubleImg: number[]; doubleTxt: number[]; single: number[] };
  /** Terms that were NaN/Inf (skipped: no loss, no gradient). */
  skipped: number;
  /** d loss / d the student's conditioning inputs. */
  grad: { encoderHiddenStates: Tensor; pooledProjections: Tensor };
}

/** diffusers `FluxTransformer2DModel` config keys (snake_case, as in config.json). */
export interface FluxConfig {
  patch_size?: number;
  in_channels?: number;
  out_channels?: number | null;
  num_layers?: number;
  num_single_layers?: number;
  attention_head_dim?: number;
  num_attention_heads?: number;
  joint_attention_dim?: number;
  pooled_projection_dim?: number;
  guidance_embeds?: boolean;
  axes_dims_rope?: number[];
  /** RoPE base (FLUX.1: 10000). */
  theta?: number;
}

/** FLUX.1-dev defaults (BFL `FluxParams`). */
export const FLUX_DEV_CONFIG: Required<Omit<FluxConfig, 'out_channels'>> & { out_channels: number | null } = {
  patch_size: 1, in_channels: 64, out_channels: null, num_layers: 19, num_single_layers: 38,
  attention_head_dim: 128, num_attention_heads: 24, joint_attention_dim: 4096, pooled_projection_dim: 768,
  guidance_embeds: true, axes_dims_rope: [16, 56, 56], theta: 10000,
};
const CONFIG_KEYS = new Set(Object.keys(FLUX_DEV_CONFIG));

export interface FluxLoadOptions {
  /** 'cpu' (default) or 'cuda[:N]'. */
  device?: string;
  /** Default: 'bfloat16' on CUDA, 'float32' on the CPU. */
  dtype?: DType;
  /** Overrides or supplies config.json keys; for BFL single files, what tensor shapes cannot tell. */
  config?: FluxConfig;
  /**
   * 'fast' (default): fused kernels (on CUDA, one kernel for QKV split + QK-RMSNorm + RoPE, forward and
   * backward; LayerNorm with the AdaLN modulation as its affine; gate and residual in one op), rounding once
   * where the reference rounds after every op. 'reference': the BFL op chain with one rounding per op, for bit-level parity
   * with the reference implementations in bf16. Identical up to float rounding in float32/float64.
   */
  precision?: 'fast' | 'reference';
}

export interface FluxInputs {
  /** Packed latents [B, N, in_channels]. */
  hiddenStates: Tensor;
  /** Text embeddings [B, T, joint_attention_dim] (T5, or AlignNet's for the student). */
  encoderHiddenStates: Tensor;
  /** Pooled text embedding [B, pooled_projection_dim] (CLIP, or AlignNet's). */
  pooledProjections: Tensor;
  /** [B] (or a scalar) in [0, 1]; multiplied by 1000 inside. */
  timestep: Tensor;
  /** [B] (or a scalar), e.g. 3.5; required by guidance-distilled (dev) checkpoints. */
  guidance?: Tensor;
  /** [N, 3] (or [B, N, 3]) = (0, row, col) of each packed latent token. */
  imgIds: Tensor;
  /** [T, 3] (or [B, T, 3]), zeros for FLUX.1 text. */
  txtIds: Tensor;
}

/** FluxInputs for {@link FluxTransformer.denoise}: the timestep comes from the schedule. */
export type DenoiseInputs = Omit<FluxInputs, 'timestep'> & { timestep?: Tensor };

/** The X2I distillation taps, stacked over blocks on dim 1. */
export interface FluxCaptures {
  /** [B, num_layers, N, D]: image-stream attention output after its output projection, before the gate. */
  doubleImg: Tensor;
  /** [B, num_layers, T, D]: text-stream attention output after its output projection, before the gate. */
  doubleTxt: Tensor;
  /** [B, num_single_layers, T + N, D]: single-block attention output before linear2, text first. */
  single: Tensor;
}

export interface FluxOutput {
  sample: Tensor;
  captures?: FluxCaptures;
}

/** AdamW for `FluxTransformer.trainStep` (PyTorch's AdamW; clipping by the global gradient norm, 0 = off). */
export interface FluxTrainOptions {
  /** Default 1e-4. */ lr?: number;
  /** Default 0.9. */ beta1?: number;
  /** Default 0.999. */ beta2?: number;
  /** Default 1e-2. */ weightDecay?: number;
  /** Default 1e-8. */ eps?: number;
  /** Default 1. */ maxGradNorm?: number;
}
type Layout = 'bfl' | 'diffusers';

function detectLayout(keys: string[], source: string): Layout {
  const has = (k: string) => keys.includes(k) || keys.includes(`model.diffusion_model.${k}`);
  if (has('x_embedder.weight')) return 'diffusers';
  if (has('img_in.weight')) return 'bfl';
  throw new X2IError(`${source}: not a FLUX transformer checkpoint (neither 'x_embedder.weight' (diffusers) nor ` +
    "'img_in.weight' (BFL) found)", 'ERR_CHECKPOINT_KEY');
}

/** What a BFL single file's shapes tell: widths, depths, head count (from the QK-norm size), guidance. */
function inferBflConfig(shapes: Map<string, number[]>, source: string): FluxConfig {
  const strip = (k: string) => k.replace(/^model\.diffusion_model\./, '');
  const s = new Map([...shapes].map(([k, v]) => [strip(k), v]));
  const need = (k: string) => {
    const v = s.get(k);
    if (!v) throw new X2IError(`${source}: missing tensor '${k}' needed to infer the config`, 'ERR_CHECKPOINT_KEY');
    return v;
  };
  const count = (re: RegExp) => new Set([...s.keys()].map((k) => re.exec(k)?.[1]).filter((x) => x !== undefined)).size;
  const hidden = need('img_in.weight')[0];
  const headDim = (s.get('double_blocks.0.img_attn.norm.query_norm.scale') ?? s.get('single_blocks.0.norm.query_norm.scale'))?.[0];
  return {
    in_channels: need('img_in.weight')[1],
    out_channels: need('final_layer.linear.weight')[0],
    joint_attention_dim: need('txt_in.weight')[1],
    pooled_projection_dim: need('vector_in.in_layer.weight')[1],
    num_layers: count(/^double_blocks\.(\d+)\./),
    num_single_layers: count(/^single_blocks\.(\d+)\./),
    guidance_embeds: s.has('guidance_in.in_layer.weight'),
    ...(headDim ? { attention_head_dim: headDim, num_attention_heads: hidden / headDim } : {}),
  };
}

function checkConfigKeys(cfg: Record<string, unknown>, source: string): FluxConfig {
  for (const k of Object.keys(cfg)) {
    if (k.startsWith('_')) continue;
    if (!CONFIG_KEYS.has(k))
      throw new X2IError(`${source}: unknown FluxTransformer config key '${k}' (known: ${[...CONFIG_KEYS].join(', ')})`, 'ERR_CONFIG');
  }
  return cfg as FluxConfig;
}

function precisionFlag(p: unknown): boolean {
  if (p === undefined || p === 'fast') return true;
  if (p === 'reference') return false;
  throw invalidArg('precision', "'fast' or 'reference'", p);
}

function toNativeConfig(c: FluxConfig, source: string): NativeFluxConfig {
  const full = { ...FLUX_DEV_CONFIG, ...Object.fromEntries(Object.entries(c).filter(([, v]) => v !== undefined)) };
  const r = new ConfigReader(full as Record<string, unknown>, source);
  if (full.patch_size !== 1) throw new X2IError(`${source}: patch_size ${describeValue(full.patch_size)} is not supported (FLUX packs latents outside the model: 1)`, 'ERR_CONFIG');
  const inChannels = r.int('in_channels');
  const outChannels = full.out_channels === null ? inChannels : r.int('out_channels');
  const headDim = r.int('attention_head_dim'), heads = r.int('num_attention_heads');
  r.check(headDim * heads <= CONFIG_LIMITS.size, `attention_head_dim × num_attention_heads (${headDim} × ${heads}) is more than ` +
    `${CONFIG_LIMITS.size}`);
  const depth = r.layers('num_layers', { min: 0 }), depthSingle = r.layers('num_single_layers', { min: 0 });
  const jointDim = r.int('joint_attention_dim'), pooledDim = r.int('pooled_projection_dim');
  const guidance = r.bool('guidance_embeds');
  const theta = r.num('theta', { positive: true });
  const axes = r.intList('axes_dims_rope', { even: true });
  const axesSum = axes.reduce((a, b) => a + b, 0);
  if (axesSum !== headDim)
    throw new X2IError(`${source}: axes_dims_rope [${axes.join(', ')}] sum to ${axesSum} but the head ` +
      `dim is ${headDim}; pass { config: { axes_dims_rope: [...] } } (FLUX.1 uses [16, 56, 56])`, 'ERR_CONFIG');
  return {
    inChannels, outChannels, hidden: headDim * heads, heads, jointDim, pooledDim, depth, depthSingle, guidance, axes, theta,
  };
}

function resolvePath(p: string): { weights: string; configFile?: string } {
  if (!fs.existsSync(p)) throw new X2IError(`${p}: no such file or folder`, 'ERR_FILE_NOT_FOUND');
  if (!fs.statSync(p).isDirectory()) return { weights: p };
  const sub = path.join(p, 'transformer');
  if (fs.existsSync(path.join(sub, 'config.json'))) p = sub;  // a whole FLUX pipeline folder
  const cfg = path.join(p, 'config.json');
  return { weights: p, configFile: fs.existsSync(cfg) ? cfg : undefined };
}

const inputNames = ['hiddenStates', 'encoderHiddenStates', 'pooledProjections', 'timestep', 'guidance', 'imgIds', 'txtIds'] as const;

function nativeInputs(inputs: FluxInputs): NativeFluxInputs {
  if (!inputs || typeof inputs !== 'object') throw invalidArg('inputs', 'an object of Tensors', inputs);
  const out: NativeFluxInputs = {};
  for (const k of inputNames) {
    const t = inputs[k];
    if (t === undefined || t === null) continue;
    if (!(t instanceof Tensor)) throw invalidArg(`inputs.${k}`, 'a Tensor', t);
    requireNonEmpty(`inputs.${k}`, t);
    out[k] = t.handle;
  }
  return out;
}


export class FluxTransformer extends NativeModel<NativeFlux> {
  /** The resolved config (diffusers keys). */
  readonly config: Readonly<FluxConfig>;
  readonly device: string;
  readonly dtype: DType;
  /** Number of parameters. */
  readonly parameters: number;
  /** Checkpoint layout it was loaded from. */
  readonly layout: Layout;
  readonly precision: 'fast' | 'reference';

  private constructor(h: NativeFlux, config: FluxConfig, layout: Layout, precision: 'fast' | 'reference' = 'fast') {
    super(h, 'FluxTransformer');
    const info = h.info();
    this.config = Object.freeze({ ...config });
    this.device = info.device;
    this.dtype = info.dtype as DType;
    this.parameters = info.parameters;
    this.layout = layout;
    this.precision = precision;
  }

  /**
   * Loads a diffusers folder (`config.json` + weights, sharded or not; a pipeline folder's `transformer/`)
   * or a BFL single file (`flux1-dev.safetensors`; depth, widths and head count inferred from the tensor
   * shapes, FLUX.1 defaults for the rest, `config` overrides). Tensors are memory-mapped and moved to the
   * device one by one in the requested dtype.
   */
  static async fromPretrained(p: string, opts: FluxLoadOptions = {}): Promise<FluxTransformer> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder or file path', p);
    const { device, dtype } = defaultDtype(opts);
    const { weights, configFile } = resolvePath(p);
    let config: FluxConfig;
    let layout: Layout;
    if (configFile) {
      let json: Record<string, unknown>;
      try {
        json = JSON.parse(fs.readFileSync(configFile, 'utf8'));
      } catch (e) {
        throw new X2IError(`${configFile}: not valid JSON (${(e as Error).message})`, 'ERR_CONFIG');
      }
      config = { ...checkConfigKeys(json, configFile), ...checkConfigKeys({ ...opts.config }, 'options.config') };
      layout = 'diffusers';
    } else {
      const header = await readSafetensorsHeader(weights);
      const shapes = new Map(header.entries.map((e) => [e.name, e.shape]));
      layout = detectLayout([...shapes.keys()], weights);
      if (layout === 'diffusers')
        throw new X2IError(`${weights}: a diffusers-layout file needs its config.json (load the folder, or pass the ` +
          'full config in options.config)', 'ERR_CONFIG');
      config = { ...inferBflConfig(shapes, weights), ...checkConfigKeys({ ...opts.config }, 'options.config') };
    }
    const nativeConfig = { ...toNativeConfig(config, configFile ?? weights), fast: precisionFlag(opts.precision) };
    const tensors = await loadSafetensors(weights, { device, dtype });
    if (configFile) layout = detectLayout(Object.keys(tensors), weights);
    try {
      const handles = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, t.handle]));
      const Native = addon().NativeFlux;
      const h = await nativeCall(() => Native.load(nativeConfig, handles, layout, weights));
      return new FluxTransformer(h, config, layout, opts.precision ?? 'fast');
    } finally {
      for (const t of Object.values(tensors)) t.dispose();
    }
  }

  /**
   * A model of the given config (diffusers keys; FLUX.1-dev defaults for the rest) with random weights
   * (PyTorch's default Linear init), drawn on the device from `seed`: for benchmarks, tests and demos.
   */
  static async fromConfig(config: FluxConfig = {}, opts: { device?: string; dtype?: DType; seed?: number;
    precision?: 'fast' | 'reference' } = {}): Promise<FluxTransformer> {
    const { device, dtype } = defaultDtype(opts);
    const full = { ...FLUX_DEV_CONFIG, ...checkConfigKeys({ ...config }, 'config') };
    const nativeConfig = { ...toNativeConfig(full, 'config'), fast: precisionFlag(opts.precision) };
    const Native = addon().NativeFlux;
    const h = await nativeCall(() => Native.random(nativeConfig, device, dtype, opts.seed ?? 0));
    return new FluxTransformer(h, full, 'bfl', opts.precision ?? 'fast');
  }



  /** The velocity for packed latents; with `capture`, the X2I distillation taps of every block. */
  async forward(inputs: FluxInputs, opts: { capture?: boolean } = {}): Promise<FluxOutput> {
    const ins = nativeInputs(inputs);
    const r = await this.call((h) => h.forward(ins, Boolean(opts.capture)));
    const out: FluxOutput = { sample: new Tensor(r.sample) };
    if (r.captures) {
      out.captures = { doubleImg: new Tensor(r.captures.doubleImg), doubleTxt: new Tensor(r.captures.doubleTxt),
        single: new Tensor(r.captures.single) };
    }
    return out;
  }

  /**
   * Backward through the frozen transformer to its conditioning inputs: the gradient of
   * ⟨gradSample, sample⟩ + Σ ⟨gradCaptures.*, captures.*⟩ with respect to `encoderHiddenStates` and
   * `pooledProjections` (the forward is recomputed).
   */
  async forwardBackward(inputs: FluxInputs, grads: { gradSample?: Tensor; gradCaptures?: Partial<FluxCaptures>;
    /** Activation checkpointing: keep each block's inputs only and recompute the block in the backward pass
     * (less memory, one more forward of every block). Default false. */
    checkpoint?: boolean }):
    Promise<{ sample: Tensor; grad: { encoderHiddenStates: Tensor; pooledProjections: Tensor } }> {
    const ins = nativeInputs(inputs);
    const gs = grads?.gradSample ? grads.gradSample.handle : null;
    let gc: Partial<Record<keyof FluxCaptures, NativeTensor>> | null = null;
    if (grads?.gradCaptures) {
      gc = {};
      for (const k of ['doubleImg', 'doubleTxt', 'single'] as const) {
        const t = grads.gradCaptures[k];
        if (t) gc[k] = t.handle;
      }
    }
    const r = await this.call((h) => h.forwardBackward(ins, gs, gc, Boolean(grads?.checkpoint)));
    return { sample: new Tensor(r.sample), grad: { encoderHiddenStates: new Tensor(r.grad.encoderHiddenStates),
      pooledProjections: new Tensor(r.grad.pooledProjections) } };
  }

  /**
   * One training step of the transformer's own weights (a teacher trained from scratch, as `x2i demo` does):
   * the mean squared error of the predicted velocity against `target` (flow matching: noise − x0), backward to
   * every parameter, clipping, AdamW with the moments this model keeps across calls. float32 models only; the
   * weights are frozen again after the step (the other methods never compute weight gradients).
   */
  async trainStep(inputs: FluxInputs, target: Tensor, opts: FluxTrainOptions = {}): Promise<{ loss: number; gradNorm: number; step: number }> {
    if (!(target instanceof Tensor)) throw invalidArg('target', 'a Tensor', target);
    const ins = nativeInputs(inputs);
    return this.call((h) => h.trainStep(ins, target.handle, opts));
  }

  /** Euler steps of FLUX's sampler (FluxPipeline): at step i the model sees timestep t_i / 1000 and
   * x ← x + (σ_{i+1} − σ_i)·v, in float32; `sigmas` has one entry more than `timesteps`. `stepLatents`
   * stacks the latent after each step ([steps, ...]); pass `{ returnStepLatents: false }` to skip it. */
  async denoise(inputs: DenoiseInputs, timesteps: number[], sigmas: number[]):
    Promise<{ latents: Tensor; stepLatents: Tensor }>;
  async denoise(inputs: DenoiseInputs, timesteps: number[], sigmas: number[], options: { returnStepLatents: false }):
    Promise<{ latents: Tensor; stepLatents?: undefined }>;
  async denoise(inputs: DenoiseInputs, timesteps: number[], sigmas: number[], options: { returnStepLatents?: boolean } = {}):
    Promise<{ latents: Tensor; stepLatents?: Tensor }> {
    if (!Array.isArray(timesteps) || timesteps.length === 0 || !timesteps.every(Number.isFinite))
      throw invalidArg('timesteps', 'a non-empty array of finite numbers', timesteps);
    if (!Array.isArray(sigmas) || sigmas.length !== timesteps.length + 1 || !sigmas.every(Number.isFinite))
      throw invalidArg('sigmas', `an array of ${timesteps.length + 1} finite numbers (one more than timesteps)`, sigmas);
    const ins = nativeInputs(inputs as FluxInputs);
    const r = await this.call((h) => h.denoise(ins, timesteps, sigmas, options.returnStepLatents ?? true));
    return { latents: new Tensor(r.latents), stepLatents: r.stepLatents && new Tensor(r.stepLatents) };
  }

  /**
   * One X2I distillation step through this frozen transformer: the teacher forward (e.g. T5 + CLIP
   * conditioning) keeps its 76 taps; the student forward (e.g. AlignNet's conditioning, same latents,
   * timestep, guidance and ids) computes each tap's loss term and gradient the moment the tap exists (one
   * fused pass per row on CUDA) and sends the gradients back into the student's conditioning inputs.
   * `teacher` may also be the teacher's taps computed elsewhere (`{ captures }` of `forward(..., { capture: true })`,
   * e.g. on another GPU: X2ITrainer's `parallel: { mode: 'split' }`).
   */
  async distillationStep(teacher: FluxInputs | { captures: FluxCaptures }, student: FluxInputs, opts: { divergence?: Divergence;
    temperature?: number; checkpoint?: boolean } = {}): Promise<DistillationStepResult> {
    const t = 'captures' in teacher ? { captures: { doubleImg: teacher.captures.doubleImg.handle,
      doubleTxt: teacher.captures.doubleTxt.handle, single: teacher.captures.single.handle } } : nativeInputs(teacher);
    const s = nativeInputs(student);
    const r = await this.call((h) => h.distillationStep(t, s, opts.divergence ?? 'rkl',
      opts.temperature ?? 3, Boolean(opts.checkpoint)));
    return { loss: r.loss, terms: r.terms, skipped: r.skipped, grad: {
      encoderHiddenStates: new Tensor(r.grad.encoderHiddenStates),
      pooledProjections: new Tensor(r.grad.pooledProjections) } };
  }

  /** Frees the weights once calls in flight have finished. */
}
