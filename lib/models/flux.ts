/** x2i.FluxTransformer: the FLUX.1 MM-DiT (native/models/flux.cc), teacher and student of X2I. */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { loadSafetensors, readSafetensorsHeader } from '../core/io.js';
import { finiteOption } from '../core/options.js';
import { addon } from '../core/native.js';
import type { NativeFlux, NativeFluxConfig, NativeFluxInputs, NativeLoraPart, NativeTensor } from '../core/addon.js';
import { defaultLoraTargets, diffusersModules, loraParts, matchModules, peftTensors, type LoraModelShape } from './lora.js';
import { loadTorchCheckpoint, saveSafetensors } from '../core/io.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { CONFIG_LIMITS, ConfigReader, describeValue } from '../core/config.js';
import { afterAbortCheck, defaultDtype, type LoadingOptions } from './pretrained.js';
import { resolveModelPath } from '../core/hub.js';
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

export interface FluxLoadOptions extends LoadingOptions {
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
  /**
   * 'model' (default): t·1000 and guidance·1000 are rounded to the model dtype before the sinusoidal embedding, as
   * diffusers and BFL do (in bf16, t = 0.75 becomes 752 and guidance 3.5 becomes 3504). 'float32': they enter the
   * sinusoids exactly (closer to the float32 model in bf16).
   */
  timestepPrecision?: 'model' | 'float32';
  /**
   * 'none' (default): every weight in `dtype`. 'fp8': the double and single blocks' linear layers (99% of the
   * weights) in FP8 e4m3 with one scale per output channel, quantized on the device as they load (the full-precision
   * model is never there at once: FLUX.1-dev takes 12 GB instead of 24 GB); activations are scaled per token at run time
   * and, for bf16 models on compute capability 8.9+ (Ada, Hopper), the GEMMs run on FP8 tensor cores (fp16 models, older
   * GPUs and CPUs: the same quantized numbers through a dequantized matmul). Embedders, final layer, norms and attention stay in `dtype` (bf16/fp16). The
   * input gradient (X2I's frozen student, LoRA training) runs on FP8 tensor cores too where the forward does (the output
   * gradient quantized per token after the weight's row scales are folded in; `X2I_FP8_BACKWARD=dequantize`: through the
   * dequantized weights, as elsewhere); training the weights
   * themselves (`trainStep`) and fusing LoRA adapters into them are refused. An option, off by default: bf16 is the
   * reference path (bench/RESULTS.md has its error against bf16).
   */
  quantize?: 'none' | 'fp8';
  /**
   * With `quantize: 'fp8'`: also keep each FP8 weight transposed, the operand of the input gradient on FP8 tensor
   * cores (which take their second operand column-major only). false (default): each backward transposes the weight
   * it needs (a buffer of one layer). true: the FP8 block weights take twice their memory (FLUX.1-dev: about 22 GiB
   * instead of 11.4, as much as bf16) for a faster training step (bench/RESULTS.md). It does nothing where the input
   * gradient cannot run on FP8 tensor cores (no FP8, CPUs, GPUs before compute capability 8.9, fp16 models):
   * `flux.fp8TransposedWeights` says whether the copies were made.
   */
  fp8TransposedWeights?: boolean;
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

/** Per-call options of the forward passes: LightControl residuals and adapter scales. */
export interface FluxCallOptions {
  /** LightControl residuals [B, n, N, D] (`LightControl.forward`), added to the image stream after double blocks
   * 0..n−1, times `controlScale` (default 1). */
  controlResiduals?: Tensor;
  controlScale?: number;
  /** Adapter scales for this call only (0 disables an adapter); the others keep the scales of `setLoraScales`. */
  loraScales?: Record<string, number>;
}

/** Options of `loadLora`. */
export interface LoadLoraOptions {
  /** Default: the file name without extension (or 'default'); must be new. */
  adapterName?: string;
  /** The adapter's scale (default 1; 0 disables it). */
  scale?: number;
}

/** Options of `addLora`: a new trainable adapter. */
export interface AddLoraOptions {
  adapterName?: string;
  /** Rank (default 16). */
  rank?: number;
  /** alpha (default = rank: scale 1). */
  alpha?: number;
  /** Modules to adapt: diffusers module names or their dotted suffixes (`'to_q'`, `'ff.net.2'`) or RegExps over full
   * names. Default: the set FLUX LoRAs are trained on (`defaultLoraTargets`). */
  targets?: (string | RegExp)[];
  /** Seed of A's initialisation (B starts at zero). Default 0. */
  seed?: number;
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

function exactTimestepsFlag(p: unknown): boolean {
  if (p === undefined || p === 'model') return false;
  if (p === 'float32') return true;
  throw invalidArg('timestepPrecision', "'model' or 'float32'", p);
}

function fp8Flag(q: unknown): boolean {
  if (q === undefined || q === 'none') return false;
  if (q === 'fp8') return true;
  throw invalidArg('quantize', "'none' or 'fp8'", q);
}

function transposedFlag(t: unknown): boolean {
  if (t === undefined || typeof t === 'boolean') return t === true;
  throw invalidArg('fp8TransposedWeights', 'a boolean', t);
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

function nativeInputs(inputs: FluxInputs, call: FluxCallOptions = {}, scales?: Map<string, number>): NativeFluxInputs {
  if (!inputs || typeof inputs !== 'object') throw invalidArg('inputs', 'an object of Tensors', inputs);
  const out: NativeFluxInputs = {};
  for (const k of inputNames) {
    const t = inputs[k];
    if (t === undefined || t === null) continue;
    if (!(t instanceof Tensor)) throw invalidArg(`inputs.${k}`, 'a Tensor', t);
    requireNonEmpty(`inputs.${k}`, t);
    out[k] = t.handle;
  }
  if (call.controlResiduals !== undefined) {
    if (!(call.controlResiduals instanceof Tensor)) throw invalidArg('controlResiduals', 'a Tensor [B, n, N, D]', call.controlResiduals);
    out.controlResiduals = call.controlResiduals.handle;
  }
  if (call.controlScale !== undefined) out.controlScale = finiteOption('controlScale', call.controlScale);
  if (scales && scales.size > 0) out.loraScales = Object.fromEntries(scales);
  if (call.loraScales !== undefined) {
    if (call.loraScales === null || typeof call.loraScales !== 'object') throw invalidArg('loraScales', 'a record of adapter name → number', call.loraScales);
    for (const [k, v] of Object.entries(call.loraScales)) {
      if (!scales?.has(k)) throw new X2IError(`loraScales: no adapter '${k}' (loaded: ${[...(scales?.keys() ?? [])].join(', ') || 'none'})`, 'ERR_INVALID_ARG');
      finiteOption(`loraScales['${k}']`, v);
    }
    out.loraScales = { ...out.loraScales, ...call.loraScales };
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
  /** 'fp8' where the block layers hold FP8 weights (FluxLoadOptions.quantize). */
  readonly quantize: 'none' | 'fp8';
  /** Whether FP8 weights are also kept transposed (FluxLoadOptions.fp8TransposedWeights, where it applies). */
  readonly fp8TransposedWeights: boolean;

  private constructor(h: NativeFlux, config: FluxConfig, layout: Layout, precision: 'fast' | 'reference' = 'fast') {
    super(h, 'FluxTransformer');
    const info = h.info();
    this.config = Object.freeze({ ...config });
    this.device = info.device;
    this.dtype = info.dtype as DType;
    this.parameters = info.parameters;
    this.layout = layout;
    this.precision = precision;
    this.quantize = info.fp8 ? 'fp8' : 'none';
    this.fp8TransposedWeights = info.fp8Transposed;
  }

  /**
   * Loads a diffusers folder (`config.json` + weights, sharded or not; a pipeline folder's `transformer/`), a
   * Hugging Face repo id in the local cache (`black-forest-labs/FLUX.1-dev`: its `transformer/`; resolveModelPath)
   * or a BFL single file (`flux1-dev.safetensors`; depth, widths and head count inferred from the tensor
   * shapes, FLUX.1 defaults for the rest, `config` overrides). Tensors are memory-mapped and moved to the
   * device one by one in the requested dtype.
   */
  static async fromPretrained(p: string, opts: FluxLoadOptions = {}): Promise<FluxTransformer> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder or file path', p);
    const { device, dtype } = defaultDtype(opts);
    const { weights, configFile } = resolvePath(resolveModelPath(p, opts));
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
    const fp8 = fp8Flag(opts.quantize);
    const nativeConfig = { ...toNativeConfig(config, configFile ?? weights), fast: precisionFlag(opts.precision),
      exactTimesteps: exactTimestepsFlag(opts.timestepPrecision), fp8, fp8Transposed: transposedFlag(opts.fp8TransposedWeights) };
    // FP8: the tensors stay memory-mapped on the CPU (a dtype other than the file's costs a host copy) and move to the
    // device one by one inside load, each block weight quantized as it arrives
    const tensors = await loadSafetensors(weights, { device: fp8 ? 'cpu' : device, dtype, mmap: fp8, signal: opts.signal, onProgress: opts.onProgress });
    if (configFile) layout = detectLayout(Object.keys(tensors), weights);
    try {
      const handles = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, t.handle]));
      const Native = addon().NativeFlux;
      const h = afterAbortCheck(await nativeCall(() => Native.load(nativeConfig, handles, layout, weights, device)), opts.signal);
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
    precision?: 'fast' | 'reference'; timestepPrecision?: 'model' | 'float32'; quantize?: 'none' | 'fp8'; fp8TransposedWeights?: boolean } = {}): Promise<FluxTransformer> {
    const { device, dtype } = defaultDtype(opts);
    const full = { ...FLUX_DEV_CONFIG, ...checkConfigKeys({ ...config }, 'config') };
    const nativeConfig = { ...toNativeConfig(full, 'config'), fast: precisionFlag(opts.precision),
      exactTimesteps: exactTimestepsFlag(opts.timestepPrecision), fp8: fp8Flag(opts.quantize),
      fp8Transposed: transposedFlag(opts.fp8TransposedWeights) };
    const Native = addon().NativeFlux;
    const h = await nativeCall(() => Native.random(nativeConfig, device, dtype, opts.seed ?? 0));
    return new FluxTransformer(h, full, 'bfl', opts.precision ?? 'fast');
  }



  /** The velocity for packed latents; with `capture`, the X2I distillation taps of every block. */
  async forward(inputs: FluxInputs, opts: { capture?: boolean } & FluxCallOptions = {}): Promise<FluxOutput> {
    const ins = nativeInputs(inputs, opts, this.#lora);
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
    checkpoint?: boolean } & FluxCallOptions):
    Promise<{ sample: Tensor; grad: { encoderHiddenStates: Tensor; pooledProjections: Tensor } }> {
    const ins = nativeInputs(inputs, grads ?? {}, this.#lora);
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
    const ins = nativeInputs(inputs, {}, this.#lora);
    return this.call((h) => h.trainStep(ins, target.handle, opts));
  }

  /** Euler steps of FLUX's sampler (FluxPipeline): at step i the model sees timestep t_i / 1000 and
   * x ← x + (σ_{i+1} − σ_i)·v, in float32; `sigmas` has one entry more than `timesteps`. `stepLatents`
   * stacks the latent after each step ([steps, ...]); pass `{ returnStepLatents: false }` to skip it. */
  async denoise(inputs: DenoiseInputs, timesteps: number[], sigmas: number[]):
    Promise<{ latents: Tensor; stepLatents: Tensor }>;
  async denoise(inputs: DenoiseInputs, timesteps: number[], sigmas: number[], options: { returnStepLatents: false } & FluxCallOptions):
    Promise<{ latents: Tensor; stepLatents?: undefined }>;
  async denoise(inputs: DenoiseInputs, timesteps: number[], sigmas: number[], options: { returnStepLatents?: boolean } & FluxCallOptions = {}):
    Promise<{ latents: Tensor; stepLatents?: Tensor }> {
    if (!Array.isArray(timesteps) || timesteps.length === 0 || !timesteps.every(Number.isFinite))
      throw invalidArg('timesteps', 'a non-empty array of finite numbers', timesteps);
    if (!Array.isArray(sigmas) || sigmas.length !== timesteps.length + 1 || !sigmas.every(Number.isFinite))
      throw invalidArg('sigmas', `an array of ${timesteps.length + 1} finite numbers (one more than timesteps)`, sigmas);
    const ins = nativeInputs(inputs as FluxInputs, options, this.#lora);
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
    temperature?: number; checkpoint?: boolean;
    /** Adapter scales of the teacher's and of the student's pass (e.g. a LoRA on the student only). */
    loraScales?: { teacher?: Record<string, number>; student?: Record<string, number> } } = {}): Promise<DistillationStepResult> {
    const t = 'captures' in teacher ? { captures: { doubleImg: teacher.captures.doubleImg.handle,
      doubleTxt: teacher.captures.doubleTxt.handle, single: teacher.captures.single.handle } }
      : nativeInputs(teacher, { loraScales: opts.loraScales?.teacher }, this.#lora);
    const s = nativeInputs(student, { loraScales: opts.loraScales?.student }, this.#lora);
    const r = await this.call((h) => h.distillationStep(t, s, opts.divergence ?? 'rkl',
      opts.temperature ?? 3, Boolean(opts.checkpoint)));
    return { loss: r.loss, terms: r.terms, skipped: r.skipped, grad: {
      encoderHiddenStates: new Tensor(r.grad.encoderHiddenStates),
      pooledProjections: new Tensor(r.grad.pooledProjections) } };
  }

  // ---------------------------------------------------------------- LoRA (models/lora.ts, native/models/lora.cc)
  #lora = new Map<string, number>();
  #trainable = new Set<string>();

  /** The sizes LoRA files are mapped with. */
  get loraShape(): LoraModelShape {
    const c = { ...FLUX_DEV_CONFIG, ...this.config };
    return { hidden: c.attention_head_dim * c.num_attention_heads, depth: c.num_layers, depthSingle: c.num_single_layers,
      guidance: c.guidance_embeds };
  }

  /** The loaded adapters and their scales. */
  get loraAdapters(): Record<string, number> {
    return Object.fromEntries(this.#lora);
  }

  #newName(name: string | undefined, fallback: string): string {
    const n = name ?? fallback;
    if (typeof n !== 'string' || n === '') throw invalidArg('adapterName', 'a non-empty string', n);
    if (this.#lora.has(n)) throw new X2IError(`an adapter named '${n}' is already loaded (unloadLora('${n}') first, or pass adapterName)`, 'ERR_INVALID_ARG');
    return n;
  }

  /**
   * Loads a LoRA in any layout FLUX.1 LoRAs are shared in (diffusers/PEFT, kohya/sd-scripts, XLabs; a `.safetensors`
   * file, a PEFT folder with `adapter_model.safetensors`, a `torch.save` `.bin`, or named tensors) as a new adapter;
   * resolves to its name. Every key must map onto this transformer (an unknown key is an error naming it). The
   * adapter is applied unfused (its own low-rank GEMMs) at `scale`; see `setLoraScales` and `fuseLora`.
   */
  async loadLora(pathOrTensors: string | Record<string, Tensor>, opts: LoadLoraOptions = {}): Promise<string> {
    const scale = opts.scale === undefined ? 1 : finiteOption('scale', opts.scale);
    let tensors: Record<string, Tensor>, metadata: Record<string, string> = {}, file: string | undefined;
    let owned = false;
    if (typeof pathOrTensors === 'string') {
      file = pathOrTensors;
      if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
        const inner = ['adapter_model.safetensors', 'pytorch_lora_weights.safetensors'].map((f) => path.join(file!, f)).find((f) => fs.existsSync(f));
        if (!inner) throw new X2IError(`${file}: no adapter_model.safetensors or pytorch_lora_weights.safetensors in this folder`, 'ERR_FILE_NOT_FOUND');
        file = inner;
      }
      if (/\.(bin|pt|pth|ckpt)$/i.test(file)) tensors = await loadTorchCheckpoint(file);
      else {
        metadata = (await readSafetensorsHeader(file)).metadata;
        tensors = await loadSafetensors(file);
      }
      owned = true;
    } else if (pathOrTensors && typeof pathOrTensors === 'object') {
      tensors = pathOrTensors;
      for (const [k, t] of Object.entries(tensors)) if (!(t instanceof Tensor)) throw invalidArg(`LoRA tensor '${k}'`, 'a Tensor', t);
    } else throw invalidArg('pathOrTensors', 'a LoRA file path or a record of Tensors', pathOrTensors);
    const name = this.#newName(opts.adapterName, file ? path.basename(file).replace(/\.[^.]*$/, '') : 'default');
    let created: Tensor[] = [];
    try {
      const r = await loraParts(tensors, this.loraShape, { metadata, file });
      created = r.created;
      const parts: NativeLoraPart[] = r.parts.map((p) => ({ target: p.target, row: p.row, A: p.A.handle, B: p.B.handle, scale: p.scale }));
      await this.call((h) => h.loraAdd(name, parts, scale, false, 0));
      this.#lora.set(name, scale);
      return name;
    } finally {
      for (const t of created) t.dispose();
      if (owned) for (const t of Object.values(tensors)) t.dispose();
    }
  }

  /** A new trainable adapter (float32 leaves; A uniform ±1/√in, B zeros, so the model is unchanged until trained) on
   * `targets`; resolves to its name. Train it with `LoraTrainer` (lib/train/finetune.ts). */
  async addLora(opts: AddLoraOptions = {}): Promise<string> {
    const rank = opts.rank ?? 16;
    if (!Number.isSafeInteger(rank) || rank < 1 || rank > 4096) throw invalidArg('rank', 'an integer in 1..4096', rank);
    const alpha = opts.alpha === undefined ? rank : finiteOption('alpha', opts.alpha, { min: 0, minExclusive: true });
    const shape = this.loraShape;
    const modules = opts.targets === undefined ? defaultLoraTargets(shape) : matchModules(shape, opts.targets);
    const map = diffusersModules(shape);
    const parts: NativeLoraPart[] = [];  // rows 0: the whole layer (native/models/lora.h)
    for (const m of modules)
      for (const x of map.get(m)!) parts.push({ target: x.target, row: x.row, rows: x.rows, rank, scale: alpha / rank });
    const name = this.#newName(opts.adapterName, 'default');
    await this.call((h) => h.loraAdd(name, parts, 1, true, opts.seed ?? 0));
    this.#lora.set(name, 1);
    this.#trainable.add(name);
    return name;
  }

  /** Sets adapter scales (0 disables one); they apply to every later call (calls may override them). */
  setLoraScales(scales: Record<string, number>): void {
    if (!scales || typeof scales !== 'object') throw invalidArg('scales', 'a record of adapter name → number', scales);
    for (const [k, v] of Object.entries(scales)) {
      if (!this.#lora.has(k)) throw new X2IError(`setLoraScales: no adapter '${k}' (loaded: ${[...this.#lora.keys()].join(', ') || 'none'})`, 'ERR_INVALID_ARG');
      finiteOption(`scales['${k}']`, v);
    }
    for (const [k, v] of Object.entries(scales)) this.#lora.set(k, v);
  }

  /** Merges every adapter with a non-zero scale into the weights at its current scale (no extra GEMMs per call);
   * `unfuseLora` takes them out again (restoring the weights up to one rounding in the model dtype). */
  async fuseLora(): Promise<void> {
    if (this.#trainable.size > 0) throw new X2IError(`fuseLora: adapter '${[...this.#trainable][0]}' is being trained (save it and load it to fuse)`, 'ERR_NOT_SUPPORTED');
    const scales = Object.fromEntries(this.#lora);
    await this.call((h) => h.loraOp('fuse', undefined, scales));
  }

  async unfuseLora(): Promise<void> {
    await this.call((h) => h.loraOp('unfuse'));
  }

  /** Removes one adapter (or all): unfused first if fused. Queued after the calls in flight. */
  unloadLora(name?: string): void {
    if (name !== undefined && !this.#lora.has(name))
      throw new X2IError(`unloadLora: no adapter '${name}' (loaded: ${[...this.#lora.keys()].join(', ') || 'none'})`, 'ERR_INVALID_ARG');
    if (name === undefined) this.#lora.clear(), this.#trainable.clear();
    else this.#lora.delete(name), this.#trainable.delete(name);
    void this.call((h) => h.loraOp('remove', name)).catch(() => undefined);
  }

  /** An adapter's parts as float32 tensors (the caller disposes them). */
  async loraWeights(name: string): Promise<{ target: string; row: number; A: Tensor; B: Tensor; scale: number }[]> {
    if (!this.#lora.has(name)) throw new X2IError(`loraWeights: no adapter '${name}'`, 'ERR_INVALID_ARG');
    const r = await this.call((h) => h.loraWeights(name));
    return r.map((p) => ({ target: p.target, row: p.row, A: new Tensor(p.A), B: new Tensor(p.B), scale: p.scale }));
  }

  /** Writes an adapter in the diffusers/PEFT layout (`transformer.<module>.lora_A/B.weight`, float32, rank and alpha
   * in the `lora_adapter_metadata` metadata as diffusers writes them), atomically. */
  async saveLora(file: string, name: string): Promise<void> {
    const parts = await this.loraWeights(name);
    let created: Tensor[] = [];
    try {
      const r = await peftTensors(parts, this.loraShape);
      created = r.created;
      await saveSafetensors(file, r.tensors, r.metadata);
    } finally {
      for (const p of parts) p.A.dispose(), p.B.dispose();
      for (const t of created) t.dispose();
    }
  }

  /** @internal The native handle, for fine-tuning runs (lib/train/finetune.ts) queued on this model. */
  runQueued<T>(fn: (h: NativeFlux) => Promise<T>): Promise<T> {
    return this.call(fn);
  }
}
