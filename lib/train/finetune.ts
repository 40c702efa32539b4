/**
 * Fine-tuning on the frozen FLUX transformer by flow matching (native/train/finetune.cc): X2I's LoRA training
 * (image-text-to-image through the student's conditioning, MLLM + AlignNet frozen, or text-to-image through T5 +
 * CLIP) and LightControl's training (X2I §5.3, with the source image as the hint).
 *
 * One micro-batch (one sample): the conditioning (frozen encoders), the target image encoded by the VAE into packed
 * latents x0, noise ε from a seed, u ~ logit-normal(0, 1) and σ = the scheduler's training sigma at ⌊u·1000⌋ (the
 * official recipe), x_σ = (1 − σ)x0 + σε, guidance 3.5; loss = mean (v − (ε − x0))²; gradients into the adapter /
 * branches only, accumulated; every `gradientAccumulation` micro-batches: clipping and AdamW with warmup + cosine.
 * Checkpoints are run folders (lib/train/checkpoints.ts): the adapter in the diffusers/PEFT layout (`lora.safetensors`)
 * and/or the branches (`lightcontrol.safetensors`), with `optimizer.safetensors` (float32 parameters and moments).
 */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { addon } from '../core/native.js';
import { LIMITS, finiteOption, imageSide, nonNegativeInt, outputDir, positiveInt, seedOption } from '../core/options.js';
import { loadSafetensors, saveSafetensors } from '../core/io.js';
import { Tensor, randn } from '../core/tensor.js';
import type { NativeFineTune, NativeFineTuneState } from '../core/addon.js';
import type { AddLoraOptions, FluxTransformer } from '../models/flux.js';
import type { AlignNet } from '../models/alignnet.js';
import type { AutoencoderKL } from '../models/vae.js';
import { encodeStudentPrompt, type StudentEncodeOptions, type StudentEncoder, type StudentPrompt } from '../models/students.js';
import type { T5Encoder } from '../models/t5.js';
import type { ClipTextEncoder } from '../models/clip.js';
import type { LightControl } from '../models/lightcontrol.js';
import type { RgbImage } from '../models/qwen_vision.js';
import { pythonRepr } from '../models/tokenizers.js';
import { hostFloats } from '../models/lora.js';
import { FluxPipeline, encodeFluxPrompt } from '../sample/pipeline.js';
import { FlowMatchEulerScheduler } from '../sample/scheduler.js';
import { imageForVae, type GenerateImageInput } from '../sample/image_input.js';
import { ProcessGroup } from './distributed.js';
import { MetricsLog, checkFinite, checkRunConfig, checkpointFolderName, commitCheckpoint, readRunJson, verifiedCheckpoint } from './checkpoints.js';
import { OPTIMIZER_DEFAULTS, checkOptimizerOptions, mulberry32, scheduledLearningRate, type OptimizerOptions } from './optimizer.js';

/** One training sample (datasets' `TrainingSample` is one). */
export interface FineTuneSample {
  /** The target image (or give `latents`). */
  image?: GenerateImageInput;
  /** Precomputed packed latents of the target [1, N, in_channels] (x0, already normalised): no VAE pass. */
  latents?: Tensor;
  /** Precomputed conditioning (skips the encoders): FLUX's sequence [1, T, joint_dim] and pooled [1, pooled_dim]. */
  conditioning?: { encoderHiddenStates: Tensor; pooledProjections: Tensor };
  /** Reference / source images: the MLLM sees them (IT2I); LightControl's hint is the first by default. */
  references?: RgbImage[];
  caption?: string;
  instruction?: string;
  /** LightControl's control image (default: references[0], the source image). */
  hint?: GenerateImageInput;
}

/** The paper's IT2I prompt: Python's str() of {"text prompt": caption, "editing prompt": ..., "image prompt": "yes",
 * "video prompt": "no", "audio prompt": "no"} (the reference images go before it in the chat). */
export function it2iPrompt(caption: string, opts: { editingPrompt?: string; imagePrompt?: boolean } = {}): string {
  return `{'text prompt': ${pythonRepr(caption)}, 'editing prompt': ${pythonRepr(opts.editingPrompt ?? 'Style Information Only from Reference Image')}, ` +
    `'image prompt': ${pythonRepr(opts.imagePrompt === false ? 'no' : 'yes')}, 'video prompt': 'no', 'audio prompt': 'no'}`;
}

export interface FineTuneOptions extends OptimizerOptions {
  /** Training resolution: images are resized (cover) to it (default 1024 × 1024; multiples of 16). */
  height?: number;
  width?: number;
  /** Guidance fed to FLUX (default 3.5). */
  guidance?: number;
  /** Seed of the noise and of σ (micro-batch i uses seed + i). Default 0. */
  seed?: number;
  /** Activation checkpointing in the transformer (less memory, one more forward). Default false. */
  checkpoint?: boolean;
  /** How text (and reference images) reach FLUX: 'student' (MLLM + AlignNet, the X2I way: IT2I when a sample has
   * references) or 'teacher' (T5 + CLIP: plain FLUX text-to-image). Default: 'student' when mllm and alignNet are
   * given. */
  conditioning?: 'student' | 'teacher';
  /** The editing prompt of the IT2I template (default "Style Information Only from Reference Image"). */
  editingPrompt?: string;
  /** The MLLM's tokenizer (default: the one in the MLLM's folder) and the length prompts are padded to (512). */
  tokenizer?: StudentEncodeOptions['tokenizer'];
  maxLength?: number;
  /** Builds the MLLM prompt of a sample instead (student conditioning). */
  prompt?: (sample: FineTuneSample) => string | StudentPrompt;
  /** LightControl: the hint image. 'source' (default): `sample.hint ?? sample.references[0]`. 'target': the target
   * image itself, as the released official script does (a leak: the model learns to copy its hint; for
   * reproducing the official checkpoints only). */
  hint?: 'source' | 'target';
  /** Data parallel (one process per GPU, e.g. started by `x2i.launch`): every rank holds the models and trains on
   * its own samples (give each rank its shard); the trained parameters start from rank 0's and every optimizer step
   * averages the gradients of all ranks' micro-batches (one all-reduce), so the ranks stay identical. Rank r's
   * micro-batch m draws the noise and σ of micro-batch m·worldSize + r: N ranks train like one process accumulating N.
   * Rank 0 writes the checkpoints. Stop every rank together (the same step count, or every rank's signal). */
  parallel?: { group: ProcessGroup } | null;
  /** Checkpoint folders kept by save() (default 2). */
  keepLast?: number;
  /** Allow writing into a non-empty folder this trainer did not write or resume from. Default false. */
  overwrite?: boolean;
  /** How the run was configured (e.g. the CLI's effective flags): a plain JSON object recorded in trainer.json as
   * "config" (`recordedConfig(dir)` reads it back). */
  config?: Record<string, unknown>;
}

export interface FineTuneStepInfo {
  step: number;
  microStep: number;
  loss: number;
  sigma: number;
  lr: number;
  /** Set on micro-batches that ended an optimizer step. */
  gradNorm?: number;
  samplesPerSecond: number;
}

export interface FineTuneFitOptions {
  /** Samples: an array (micro-batch i takes data[i mod length], so resuming continues where it stopped) or any
   * (async) iterable, e.g. `datasets.fromWebDataset(...)` (resume it with its `skip` option). */
  data: FineTuneSample[] | Iterable<FineTuneSample> | AsyncIterable<FineTuneSample>;
  /** Micro-batches to run. */
  steps: number;
  signal?: AbortSignal;
  onStep?: (info: FineTuneStepInfo) => void;
  checkpointDir?: string;
  /** Save every N optimizer steps (and at the end). With `checkpointDir`, each optimizer step is also a line of
   * `checkpointDir/metrics.jsonl` (MetricsLog: the lines after this trainer's step are dropped first). */
  checkpointEvery?: number;
}

const DEFAULTS = { ...OPTIMIZER_DEFAULTS, height: 1024, width: 1024, guidance: 3.5, seed: 0, checkpoint: false,
  conditioning: undefined as 'student' | 'teacher' | undefined, editingPrompt: 'Style Information Only from Reference Image',
  prompt: undefined as FineTuneOptions['prompt'], parallel: null as { group: ProcessGroup } | null, tokenizer: undefined as StudentEncodeOptions['tokenizer'], maxLength: 512, hint: 'source' as 'source' | 'target', keepLast: 2, overwrite: false,
  config: undefined as Record<string, unknown> | undefined };

/** The files a fine-tuning checkpoint may hold. */
const FILES = ['lora.safetensors', 'lightcontrol.safetensors', 'config.json', 'optimizer.safetensors'] as const;

export interface FineTuneParts {
  transformer: FluxTransformer;
  /** Encodes the target images (not needed when every sample carries `latents`). */
  vae?: AutoencoderKL;
  /** The student's conditioning (frozen). */
  mllm?: StudentEncoder;
  alignNet?: AlignNet;
  /** The teacher's conditioning (frozen). */
  t5?: T5Encoder;
  clip?: ClipTextEncoder;
  scheduler?: FlowMatchEulerScheduler;
}

/** The common machinery of LoraTrainer and LightControlTrainer. */
abstract class FlowFineTuner {
  readonly transformer: FluxTransformer;
  readonly vae?: AutoencoderKL;
  readonly mllm?: StudentEncoder;
  readonly alignNet?: AlignNet;
  readonly t5?: T5Encoder;
  readonly clip?: ClipTextEncoder;
  readonly scheduler: FlowMatchEulerScheduler;
  readonly options: Readonly<typeof DEFAULTS> & { conditioning: 'student' | 'teacher' };
  /** Optimizer steps taken and micro-batches seen. */
  step = 0;
  microStep = 0;
  #ft: NativeFineTune | null = null;
  #ownDirs = new Set<string>();
  #poisoned: string | null = null;

  protected constructor(parts: FineTuneParts, options: FineTuneOptions, lrDefault: number) {
    if (!parts?.transformer) throw invalidArg('trainer parts', '{ transformer, vae, mllm?, alignNet?, t5?, clip? }', parts);
    this.transformer = parts.transformer;
    this.vae = parts.vae;
    this.mllm = parts.mllm;
    this.alignNet = parts.alignNet;
    this.t5 = parts.t5;
    this.clip = parts.clip;
    this.scheduler = parts.scheduler ?? new FlowMatchEulerScheduler();
    if (options === null || typeof options !== 'object') throw invalidArg('trainer options', 'an object', options);
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    const o = { ...DEFAULTS, lr: lrDefault, ...given } as typeof DEFAULTS;
    const conditioning = o.conditioning ?? (parts.mllm && parts.alignNet ? 'student' : 'teacher');
    FlowFineTuner.#validate(o);
    if (conditioning !== 'student' && conditioning !== 'teacher') throw invalidArg('conditioning', "'student' or 'teacher'", conditioning);
    this.options = Object.freeze({ ...o, conditioning });
  }

  static #validate(o: typeof DEFAULTS): void {
    checkOptimizerOptions(o);
    imageSide('height', o.height);
    imageSide('width', o.width);
    finiteOption('guidance', o.guidance);
    seedOption('seed', o.seed);
    if (typeof o.checkpoint !== 'boolean') throw invalidArg('checkpoint', 'a boolean', o.checkpoint);
    if (typeof o.editingPrompt !== 'string') throw invalidArg('editingPrompt', 'a string', o.editingPrompt);
    positiveInt('maxLength', o.maxLength, 1 << 20);
    if (o.prompt !== undefined && typeof o.prompt !== 'function') throw invalidArg('prompt', 'a function of the sample', o.prompt);
    if (o.hint !== 'source' && o.hint !== 'target') throw invalidArg('hint', "'source' or 'target'", o.hint);
    if (o.parallel !== null && (typeof o.parallel !== 'object' || !(o.parallel.group instanceof ProcessGroup)))
      throw invalidArg('parallel', '{ group: ProcessGroup } or null', o.parallel);
    positiveInt('keepLast', o.keepLast, 1000);
    if (typeof o.overwrite !== 'boolean') throw invalidArg('overwrite', 'a boolean', o.overwrite);
    checkRunConfig('config', o.config);
  }

  /** What is trained: the native run (made on first use). */
  protected abstract create(): Promise<NativeFineTune>;
  /** Writes the trained weights into a checkpoint folder; the file names written. */
  protected abstract saveWeights(folder: string): Promise<string[]>;
  /** The control branches (LightControl) or undefined. */
  protected control(): LightControl | undefined {
    return undefined;
  }

  protected async run(): Promise<NativeFineTune> {
    if (!this.#ft) {
      const ft = await this.create();
      const group = this.options.parallel?.group;
      if (group && group.worldSize > 1) {  // every rank starts from rank 0's parameters
        const st = await this.transformer.runQueued(() => ft.state());
        const all = [st.params, st.expAvg, st.expAvgSq].map((rec) => Object.values(rec).map((h) => new Tensor(h)));
        try {
          for (const t of all[0]) await group.broadcast(t, 0);
          const back = await this.transformer.runQueued(() => ft.state(st));
          for (const rec of [back.params, back.expAvg, back.expAvgSq]) for (const h of Object.values(rec)) h.dispose();
        } finally {
          for (const t of all.flat()) t.dispose();
        }
      }
      this.#ft = ft;
    }
    return this.#ft;
  }

  /** The micro-batch index that seeds this rank's next noise and σ (data parallel: m·worldSize + rank). */
  #sampleIndex(): number {
    const g = this.options.parallel?.group;
    return g ? this.microStep * g.worldSize + g.rank : this.microStep;
  }

  /** The learning rate of optimizer step `s`: linear warmup, then cosine to 0 at totalSteps. */
  learningRate(s = this.step): number {
    return scheduledLearningRate(this.options, s);
  }


  /** σ of micro-batch i: u = sigmoid(n), n ~ N(0, 1) from the seed; the training sigma at ⌊u · T⌋ of the scheduler
   * (T = num_train_timesteps; its static shift unless it shifts dynamically, as diffusers' training scripts read
   * `noise_scheduler.timesteps`). */
  sigmaOf(i: number): number {
    const rand = mulberry32(((this.options.seed * 0x9e3779b1) ^ (i * 0x85ebca6b)) >>> 0);
    const n = Math.sqrt(-2 * Math.log(Math.max(rand(), 1e-12))) * Math.cos(2 * Math.PI * rand());
    const u = 1 / (1 + Math.exp(-n));
    const c = this.scheduler.config;
    const T = c.num_train_timesteps;
    const k = Math.min(T - 1, Math.floor(u * T));
    const s = (T - k) / T;  // linspace(1, T, T)[::-1] / T at index k
    return c.use_dynamic_shifting ? s : (c.shift * s) / (1 + (c.shift - 1) * s);
  }

  /** The FLUX conditioning of a sample: the student's (MLLM → AlignNet; reference images in the IT2I template) or the
   * teacher's (T5 + CLIP on the caption). */
  async #conditioning(sample: FineTuneSample): Promise<{ seq: Tensor; pooled: Tensor }> {
    const o = this.options;
    if (sample.conditioning) {
      const { encoderHiddenStates: e, pooledProjections: p } = sample.conditioning;
      if (!(e instanceof Tensor) || !(p instanceof Tensor)) throw invalidArg('sample.conditioning', '{ encoderHiddenStates, pooledProjections } Tensors', sample.conditioning);
      return { seq: await e.to({}), pooled: await p.to({}) };  // new handles of the same storage (disposed after the step)
    }
    if (o.conditioning === 'teacher') {
      if (!this.t5 || !this.clip)
        throw new X2IError("trainer: conditioning 'teacher' needs t5 and clip (or mllm and alignNet for the student's, or sample.conditioning)", 'ERR_INVALID_ARG');
      // FLUX's text conditioning: T5 (padded to 512) → sequence, CLIP → pooled (as FluxPipeline.encodePrompt)
      const e = await encodeFluxPrompt(this.t5, this.clip, sample.caption ?? '');
      return { seq: e.promptEmbeds, pooled: e.pooledPromptEmbeds };
    }
    if (!this.mllm || !this.alignNet)
      throw new X2IError("trainer: conditioning 'student' needs mllm (QwenVLEncoder or InternVLEncoder) and alignNet (or sample.conditioning)", 'ERR_INVALID_ARG');
    const refs = sample.references ?? [];
    const prompt = o.prompt ? o.prompt(sample)
      : refs.length ? { text: it2iPrompt(sample.caption ?? '', { editingPrompt: sample.instruction ?? o.editingPrompt }), images: refs }
        : sample.caption ?? '';
    const { hiddenStates, attentionMask } = await encodeStudentPrompt(this.mllm, prompt, { template: refs.length ? 'chat' : 'x2i',
      tokenizer: o.tokenizer, maxLength: o.maxLength });
    attentionMask.dispose();
    try {
      const r = await this.alignNet.forward(hiddenStates);
      return { seq: r.encoderHiddenStates, pooled: r.pooledProjections };
    } finally {
      hiddenStates.dispose();
    }
  }

  /** x0: the sample's packed latents, or its image through the VAE ((z − shift)·scale, packed); the latent grid size. */
  async #targetLatents(sample: FineTuneSample, own: <T extends Tensor>(t: T) => T): Promise<{ x0: Tensor; lh: number; lw: number }> {
    const o = this.options;
    const [lh, lw] = [2 * Math.floor(o.height / 16), 2 * Math.floor(o.width / 16)];
    if (sample.latents !== undefined) {
      const x = sample.latents;
      const C = Number(this.transformer.config.in_channels ?? 64);
      if (!(x instanceof Tensor) || x.shape.length !== 3 || x.shape[0] !== 1 || x.shape[1] !== (lh / 2) * (lw / 2) || x.shape[2] !== C)
        throw invalidArg('sample.latents', `a Tensor [1, ${(lh / 2) * (lw / 2)}, ${C}] (packed latents at ${o.height}×${o.width})`, x);
      return { x0: own(await x.to({})), lh, lw };
    }
    if (!this.vae) throw new X2IError('trainer: samples with images need the vae (or give sample.latents)', 'ERR_INVALID_ARG');
    const vae = this.vae;
    const img = own(await imageForVae(sample.image!, { batch: 1, height: o.height, width: o.width, device: this.transformer.device, name: 'sample.image' }));
    const z = own(await vae.encode(img));
    const x0 = own(new Tensor(await nativeCall(() => addon().encodeLatents(z.handle, vae.scalingFactor, vae.shiftFactor))));
    return { x0, lh: z.shape[2], lw: z.shape[3] };
  }

  /**
   * The flow-matching loss on `samples` at fixed σ and noise seeds, without training: the mean over samples and σ
   * of mean (v − (ε − x0))². With `loraScales` (e.g. `{ [adapter]: 0 }`) the adapter's effect can be compared.
   */
  async evaluate(samples: FineTuneSample[], opts: { sigmas?: number[]; seed?: number; loraScales?: Record<string, number> } = {}): Promise<number> {
    if (!Array.isArray(samples) || samples.length === 0) throw invalidArg('samples', 'a non-empty array of samples', samples);
    const sigmas = opts.sigmas ?? [0.25, 0.5, 0.75];
    sigmas.forEach((v, k) => finiteOption(`sigmas[${k}]`, v, { min: 0, max: 1 }));
    const o = this.options, device = this.transformer.device, lc = this.control();
    let total = 0, count = 0;
    for (const [j, sample] of samples.entries()) {
      const owned: Tensor[] = [];
      const own = <T extends Tensor>(t: T): T => (owned.push(t), t);
      try {
        const { seq, pooled } = await this.#conditioning(sample);
        own(seq), own(pooled);
        const { x0, lh, lw } = await this.#targetLatents(sample, own);
        const T = seq.shape[1];
        const common = { encoderHiddenStates: seq, pooledProjections: pooled,
          guidance: own(Tensor.fromArray(new Float32Array([o.guidance]), [1], { device })),
          imgIds: own(FluxPipeline.imageIds(lh, lw, device)), txtIds: own(Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device })) };
        const hint = lc ? own(await imageForVae(o.hint === 'target' ? sample.image! : (sample.hint ?? sample.references?.[0])!,
          { batch: 1, height: o.height, width: o.width, device, name: 'sample.hint' })) : undefined;
        const x0v = await hostFloats(x0);
        for (const [k, sigma] of sigmas.entries()) {
          const noise = own(await randn([...x0.shape], { seed: (opts.seed ?? 12345) + j * 1000 + k, device, dtype: 'float32' }));
          const xs = own(new Tensor(await nativeCall(() => addon().noiseLatents(x0.handle, noise.handle, sigma))));
          const t = own(Tensor.fromArray(new Float32Array([sigma]), [1], { device }));
          const residuals = lc && hint ? own((await lc.forward({ hint, timestep: t })).residuals) : undefined;
          const v = own((await this.transformer.forward({ ...common, hiddenStates: xs, timestep: t },
            { controlResiduals: residuals, controlScale: lc?.scale, loraScales: opts.loraScales })).sample);
          const [vv, nn] = [await hostFloats(v), await hostFloats(noise)];
          let se = 0;
          for (let q = 0; q < vv.length; q++) se += (vv[q] - (nn[q] - x0v[q])) ** 2;
          total += se / vv.length;
          count++;
        }
      } finally {
        for (const t of owned) t.dispose();
      }
    }
    return total / count;
  }

  /** One micro-batch (one sample); an optimizer step every `gradientAccumulation` of them. */
  async trainStep(sample: FineTuneSample): Promise<FineTuneStepInfo> {
    if (!sample || typeof sample !== 'object' || (sample.image === undefined && !(sample.latents instanceof Tensor)))
      throw invalidArg('sample', '{ image | latents, references?, caption?, instruction?, hint? }', sample);
    const t0 = performance.now();
    const o = this.options;
    const ft = await this.run();
    const device = this.transformer.device;
    const owned: Tensor[] = [];
    const own = <T extends Tensor>(t: T): T => (owned.push(t), t);
    const i = this.#sampleIndex();
    const sigma = this.sigmaOf(i);
    let loss: number;
    try {
      const { seq, pooled } = await this.#conditioning(sample);
      own(seq), own(pooled);
      const { x0, lh, lw } = await this.#targetLatents(sample, own);
      const noise = own(await randn([...x0.shape], { seed: o.seed + i, device, dtype: 'float32' }));
      const lc = this.control();
      let hint: Tensor | undefined;
      if (lc) {
        const src = o.hint === 'target' ? sample.image : sample.hint ?? sample.references?.[0];
        if (o.hint === 'target' && src === undefined) throw new X2IError("LightControl training with hint 'target' needs sample.image", 'ERR_INVALID_ARG');
        if (src === undefined) throw new X2IError('LightControl training: the sample has no hint (sample.hint or references[0], the source image)', 'ERR_INVALID_ARG');
        hint = own(await imageForVae(src, { batch: 1, height: o.height, width: o.width, device, name: 'sample.hint' }));
      }
      const T = seq.shape[1];
      const batch = {
        hiddenStates: x0.handle, encoderHiddenStates: seq.handle, pooledProjections: pooled.handle,
        guidance: own(Tensor.fromArray(new Float32Array([o.guidance]), [1], { device })).handle,
        imgIds: own(FluxPipeline.imageIds(lh, lw, device)).handle,
        txtIds: own(Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device })).handle,
        noise: noise.handle, sigma: own(Tensor.fromArray(new Float32Array([sigma]), [1], { device })).handle,
        hint: hint?.handle, controlScale: lc?.scale, checkpoint: o.checkpoint,
        loraScales: this.transformer.loraAdapters,
      };
      loss = await this.transformer.runQueued(() => ft.backward(batch));
    } finally {
      for (const t of owned) t.dispose();
    }
    this.microStep++;
    if (!Number.isFinite(loss)) this.#poisoned = `a non-finite loss (${loss}) at micro-batch ${i}`;
    let gradNorm: number | undefined;
    const lr = this.learningRate();
    if (this.microStep % o.gradientAccumulation === 0) {
      const group = o.parallel ? ProcessGroup.handleOf(o.parallel.group) : undefined;
      gradNorm = await this.transformer.runQueued(() => ft.step({ lr, beta1: o.beta1, beta2: o.beta2, weightDecay: o.weightDecay,
        eps: o.eps, maxGradNorm: o.maxGradNorm }, group));
      if (!Number.isFinite(gradNorm)) this.#poisoned = `a non-finite gradient norm (${gradNorm}) at step ${this.step}`;
      this.step++;
    }
    return { step: this.step, microStep: this.microStep, loss, sigma, lr, gradNorm, samplesPerSecond: 1000 / (performance.now() - t0) };
  }

  /** Runs `steps` micro-batches; saves every `checkpointEvery` optimizer steps and at the end; stops early (after
   * the current micro-batch) when `signal` aborts. Resolves to the step infos. */
  async fit(opts: FineTuneFitOptions): Promise<FineTuneStepInfo[]> {
    if (!opts || typeof opts !== 'object') throw invalidArg('fit options', '{ data, steps, ... }', opts);
    nonNegativeInt('steps', opts.steps, LIMITS.trainSteps);
    if (opts.checkpointEvery !== undefined) positiveInt('checkpointEvery', opts.checkpointEvery, LIMITS.trainSteps);
    if (opts.onStep !== undefined && typeof opts.onStep !== 'function') throw invalidArg('onStep', 'a function', opts.onStep);
    if (opts.checkpointDir !== undefined) this.#checkOutputDir(opts.checkpointDir);
    const data = opts.data;
    let next: () => Promise<FineTuneSample | undefined>;
    if (Array.isArray(data)) {
      if (data.length === 0) throw invalidArg('data', 'a non-empty array or an iterable of samples', data);
      next = async () => data[this.microStep % data.length];
    } else if (data && (Symbol.asyncIterator in Object(data) || Symbol.iterator in Object(data))) {
      const it = Symbol.asyncIterator in Object(data) ? (data as AsyncIterable<FineTuneSample>)[Symbol.asyncIterator]()
        : (data as Iterable<FineTuneSample>)[Symbol.iterator]();
      next = async () => {
        const r = await it.next();
        return r.done ? undefined : r.value;
      };
    } else throw invalidArg('data', 'an array or an (async) iterable of samples', data);
    let log: MetricsLog | undefined;
    if (opts.checkpointDir !== undefined && this.#writer) {
      log = new MetricsLog(opts.checkpointDir, this.step);
      this.#ownDirs.add(path.resolve(opts.checkpointDir));
    }
    const out: FineTuneStepInfo[] = [];
    for (let k = 0; k < opts.steps; k++) {
      if (opts.signal?.aborted) break;
      const t0 = performance.now();
      const sample = await next();
      if (sample === undefined) break;
      const info = await this.trainStep(sample);
      log?.add(info, (performance.now() - t0) / 1000, info.gradNorm !== undefined);
      out.push(info);
      opts.onStep?.(info);
      if (opts.checkpointDir && opts.checkpointEvery && info.gradNorm !== undefined && this.step % opts.checkpointEvery === 0)
        await this.save(opts.checkpointDir);
    }
    if (opts.checkpointDir) await this.save(opts.checkpointDir);
    return out;
  }

  #checkOutputDir(dir: string, name = 'checkpointDir'): void {
    outputDir(name, dir, { refuseNonEmpty: !this.options.overwrite && !this.#ownDirs.has(path.resolve(dir)),
      hint: 'resume from it, or pass overwrite: true to replace its checkpoints' });
  }

  /** Whether this process writes the checkpoints and metrics: rank 0 (the ranks agree). */
  get #writer(): boolean {
    return !this.options.parallel || this.options.parallel.group.rank === 0;
  }

  /** Writes `dir/step-NNNNNN-M/` (the trained weights and `optimizer.safetensors`) and points `dir/trainer.json` at it
   * atomically; keeps the `keepLast` newest. Refuses (ERR_NON_FINITE) after a non-finite step or with non-finite state. */
  async save(dir: string): Promise<string> {
    const name = checkpointFolderName(this.step, this.microStep);
    const target = path.join(dir, name);
    if (!this.#writer) return target;
    if (this.#poisoned) throw new X2IError(`save: refusing to checkpoint after ${this.#poisoned}`, 'ERR_NON_FINITE');
    this.#checkOutputDir(dir, 'save dir');
    const ft = await this.run();
    const st = await this.transformer.runQueued(() => ft.state());
    const tensors: Record<string, Tensor> = {};
    for (const [part, rec] of [['param', st.params], ['exp_avg', st.expAvg], ['exp_avg_sq', st.expAvgSq]] as const)
      for (const [k, h] of Object.entries(rec)) tensors[`${part}.${k}`] = new Tensor(h);
    let files: string[];
    try {
      try {
        for (const [k, t] of Object.entries(tensors)) await checkFinite(t, `training state ${k}`, k.startsWith('exp_avg_sq.'));
      } catch (e) {
        this.#poisoned = (e as Error).message;
        throw new X2IError(`save: refusing to checkpoint non-finite state (${(e as Error).message})`, 'ERR_NON_FINITE', { cause: e });
      }
      fs.mkdirSync(target, { recursive: true });
      this.#ownDirs.add(path.resolve(dir));
      files = await this.saveWeights(target);
      await saveSafetensors(path.join(target, 'optimizer.safetensors'), tensors, { step: String(st.step) });
    } finally {
      for (const t of Object.values(tensors)) t.dispose();
    }
    const { prompt, tokenizer, parallel, config, ...options } = this.options;
    commitCheckpoint(dir, name, [...files, 'optimizer.safetensors'], { step: this.step, microStep: this.microStep,
      kind: this.constructor.name, options: { ...options, prompt: prompt ? 'custom' : undefined },
      parallel: parallel ? { mode: 'data', worldSize: parallel.group.worldSize } : null, ...(config ? { config } : {}) },
      this.options.keepLast);
    void tokenizer;
    return target;
  }

  /** The checkpoint folder `dir/trainer.json` points at. */
  static latestCheckpoint(dir: string): string {
    return path.join(dir, readRunJson(dir, FILES, 'fine-tuning').checkpoint);
  }

  /** Continues from a checkpoint written by save(): parameters, moments and counters (files checked against their
   * checksums; the state must be finite). */
  async resume(dir: string): Promise<void> {
    const meta = readRunJson(dir, FILES, 'fine-tuning');
    const ckpt = verifiedCheckpoint(dir, meta, ['optimizer.safetensors']);
    const ft = await this.run();
    const optFile = path.join(ckpt, 'optimizer.safetensors');
    const opt = await loadSafetensors(optFile);
    try {
      for (const [k, t] of Object.entries(opt)) await checkFinite(t, `${optFile}: ${k}`, k.startsWith('exp_avg_sq.'));
      const pick = (prefix: string) => Object.fromEntries(Object.entries(opt).filter(([k]) => k.startsWith(prefix + '.'))
        .map(([k, t]) => [k.slice(prefix.length + 1), t.handle]));
      const state: NativeFineTuneState = { step: meta.step, params: pick('param'), expAvg: pick('exp_avg'), expAvgSq: pick('exp_avg_sq') };
      const names = ft.names();
      for (const n of names)
        if (!(n in state.params)) throw new X2IError(`${optFile}: no 'param.${n}' (the checkpoint trains other parameters)`, 'ERR_BAD_CHECKPOINT');
      if (Object.keys(state.params).length !== names.length)
        throw new X2IError(`${optFile}: ${Object.keys(state.params).length} parameters, this trainer has ${names.length}`, 'ERR_BAD_CHECKPOINT');
      const back = await this.transformer.runQueued(() => ft.state(state));
      for (const rec of [back.params, back.expAvg, back.expAvgSq]) for (const h of Object.values(rec)) h.dispose();
    } finally {
      for (const t of Object.values(opt)) t.dispose();
    }
    this.step = meta.step;
    this.microStep = meta.microStep;
    this.#ownDirs.add(path.resolve(dir));
  }

  /** Frees the native run (the adapter stays on the transformer). */
  dispose(): void {
    this.#ft?.dispose();
    this.#ft = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface LoraTrainerOptions extends FineTuneOptions {
  /** The adapter: a new one (rank, alpha, targets; default rank 16 on the default FLUX targets) or the name of a
   * trainable adapter already added with `transformer.addLora`. */
  lora?: AddLoraOptions | string;
}

/** X2I's LoRA training: IT2I (reference images + text through the student) or T2I (text through the student or
 * through T5 + CLIP), the transformer frozen, the adapter trained. */
export class LoraTrainer extends FlowFineTuner {
  readonly #lora: AddLoraOptions | string;
  /** The trained adapter's name (after the first step or resume). */
  adapterName?: string;

  constructor(parts: FineTuneParts, options: LoraTrainerOptions = {}) {
    super(parts, options, DEFAULTS.lr);
    this.#lora = options.lora ?? {};
  }

  protected async create(): Promise<NativeFineTune> {
    const name = typeof this.#lora === 'string' ? this.#lora : await this.transformer.addLora(this.#lora);
    this.adapterName = name;
    const flux = this.transformer.nativeHandle();
    return nativeCall(() => addon().NativeFineTune.create(flux, { adapter: name }));
  }

  protected async saveWeights(folder: string): Promise<string[]> {
    await this.transformer.saveLora(path.join(folder, 'lora.safetensors'), this.adapterName!);
    return ['lora.safetensors'];
  }
}

export interface LightControlTrainerOptions extends FineTuneOptions {}

/** LightControl's training (X2I §5.3): the 19 ControlNeXt branches trained through the frozen transformer, the
 * hint being the source image (`options.hint: 'target'` reproduces the released script's leak). The branches must be
 * float32 (they are the masters); they compute in the transformer's dtype. */
export class LightControlTrainer extends FlowFineTuner {
  readonly lightControl: LightControl;

  constructor(parts: FineTuneParts & { lightControl: LightControl }, options: LightControlTrainerOptions = {}) {
    super(parts, options, 1e-5);
    if (!parts.lightControl) throw invalidArg('trainer parts', '{ transformer, vae, lightControl, ... }', parts);
    if (parts.lightControl.dtype !== 'float32')
      throw new X2IError(`LightControlTrainer: the branches are trained in float32, these are ${parts.lightControl.dtype} (load them with dtype 'float32')`, 'ERR_INVALID_DTYPE');
    this.lightControl = parts.lightControl;
  }

  protected override control(): LightControl {
    return this.lightControl;
  }

  protected async create(): Promise<NativeFineTune> {
    const flux = this.transformer.nativeHandle(), control = this.lightControl.nativeHandle();
    return nativeCall(() => addon().NativeFineTune.create(flux, { control }));
  }

  protected async saveWeights(folder: string): Promise<string[]> {
    await this.lightControl.save(path.join(folder, 'lightcontrol.safetensors'));
    // the branches' config beside them: the checkpoint folder loads with LightControl.fromPretrained(folder)
    fs.writeFileSync(path.join(folder, 'config.json'), JSON.stringify(this.lightControl.config, null, 2));
    return ['lightcontrol.safetensors', 'config.json'];
  }
}
