/**
 * x2i.X2ITrainer: AlignNet trained by attention distillation (the loss: lib/train/distill.ts). Teacher = the FLUX
 * transformer conditioned on T5 + CLIP; student = the same frozen weights conditioned on AlignNet(MLLM hidden
 * states); pure-noise latents at σ = 1, guidance 3.5; the loss is computed tap by tap inside
 * `FluxTransformer.distillationStep`, and its gradient flows into AlignNet only (AdamW on float32 masters,
 * warmup + cosine, gradient clipping, accumulation). Checkpoints are written atomically and resume exactly.
 */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg } from '../core/errors.js';
import { LIMITS, finiteOption, imageSide, nonNegativeInt, outputDir, positiveInt, seedOption } from '../core/options.js';
import type { AlignNet } from '../models/alignnet.js';
import type { Divergence } from './distill.js';
import type { FluxCaptures, FluxInputs, FluxTransformer } from '../models/flux.js';
import { loadSafetensors, saveSafetensors } from '../core/io.js';
import { FluxPipeline, encodeFluxPrompt } from '../sample/pipeline.js';
import { FlowMatchEulerScheduler } from '../sample/scheduler.js';
import { OPTIMIZER_DEFAULTS, checkOptimizerOptions, mulberry32, scheduledLearningRate, type OptimizerOptions } from './optimizer.js';
import { MetricsLog, checkFinite, checkRunConfig, checkpointFolderName, commitCheckpoint, readRunJson, verifiedCheckpoint } from './checkpoints.js';

export { mulberry32 } from './optimizer.js';
import { encodeStudentPrompt, type StudentEncoder, type StudentPrompt } from '../models/students.js';
import type { T5Encoder } from '../models/t5.js';
import type { ClipTextEncoder } from '../models/clip.js';
import { Tensor, memory, randn, zeros } from '../core/tensor.js';
import type { ProcessGroup } from './distributed.js';
import { FLUX_DEV_CONFIG } from '../models/flux.js';

export interface X2ITrainerOptions extends OptimizerOptions {
  /** Latent size in pixels (default 1024 × 1024). */
  height?: number;
  width?: number;
  /** Guidance fed to both passes (default 3.5). */
  guidance?: number;
  divergence?: Divergence;
  temperature?: number;
  /** Activation checkpointing in the student's backward. */
  checkpoint?: boolean;
  /** Seed of the noise latents (step i uses seed + i). */
  seed?: number;
  /** Distil along the teacher's denoising trajectory (the paper's variant; the official code uses σ = 1 only):
   * each micro-batch samples a step k < steps of the FLUX schedule, the teacher denoises the noise for k steps,
   * and both passes see that latent at σ_k. */
  trajectory?: { steps: number } | null;
  /**
   * Several processes (one per GPU, e.g. started by `x2i.launch` or `x2i train --nproc-per-node`), one group:
   * - `mode: 'data'`: every rank holds every model and trains on its own micro-batches (its shard of the data);
   *   AlignNet starts from rank 0's weights and every optimizer step averages the gradients of all ranks'
   *   micro-batches (one all-reduce of AlignNet's gradients), so all ranks stay identical. Rank r's micro-batch
   *   m draws the noise of micro-batch m·worldSize + r: N ranks train exactly like one process accumulating N.
   *   Rank 0 writes the checkpoints.
   * - `mode: 'split'` (2 ranks): rank 0 is the teacher (T5, CLIP and a transformer), rank 1 the student (MLLM,
   *   AlignNet and a transformer). Per micro-batch the teacher sends its latents and 76 taps to the student and
   *   goes on with the next one, so teacher and student passes overlap. Both ranks get
   *   the same batches (the teacher reads `batch.teacher`, the student `batch.student`); the student reports the
   *   loss and writes the checkpoints; the teacher's step info has loss NaN.
   */
  parallel?: { group: ProcessGroup; mode: 'data' | 'split' } | null;
  /** Checkpoint folders kept by save() (the newest first; default 2: the last one and the one before it). */
  keepLast?: number;
  /** Allow fit()/save() to write checkpoints into a non-empty folder this trainer did not write or resume from
   * (its older checkpoints are then removed by the retention). Default false: such a folder is refused. */
  overwrite?: boolean;
  /** How the run was configured (e.g. the CLI's effective flags): a plain JSON object recorded in trainer.json as
   * "config" (`recordedConfig(dir)` reads it back). */
  config?: Record<string, unknown>;
}

/** One micro-batch: the teacher's conditioning (or a caption for T5 + CLIP) and the student's MLLM input
 * (hidden states [B, C, S, H], or a prompt for the MLLM). */
export interface X2IBatch {
  teacher: { encoderHiddenStates: Tensor; pooledProjections: Tensor } | { caption: string };
  student: { hiddenStates: Tensor } | { prompt: string | StudentPrompt };
}

export interface X2IStepInfo {
  /** 'single' (one process), 'data' (a data-parallel rank), 'teacher' / 'student' (split mode). */
  role: 'single' | 'data' | 'teacher' | 'student';
  step: number;
  microStep: number;
  loss: number;
  terms: { doubleImg: number[]; doubleTxt: number[]; single: number[] };
  skipped: number;
  lr: number;
  gradNorm?: number;
  samplesPerSecond: number;
  memory: { tensors: number; bytes: number };
  /** Split mode: the other rank stopped (its signal was aborted) before this micro-batch; nothing was trained. */
  stopped?: boolean;
}

const DEFAULTS = { ...OPTIMIZER_DEFAULTS, height: 1024, width: 1024, guidance: 3.5, divergence: 'rkl' as Divergence, temperature: 3,
  checkpoint: false, seed: 0, trajectory: null as { steps: number } | null,
  parallel: null as { group: ProcessGroup; mode: 'data' | 'split' } | null, keepLast: 2, overwrite: false,
  config: undefined as Record<string, unknown> | undefined };

/** The files of one checkpoint folder (their sha256 is recorded in trainer.json and checked on resume). */
const CHECKPOINT_FILES = ['alignnet.safetensors', 'optimizer.safetensors'] as const;

function readTrainerJson(dir: string) {
  return readRunJson(dir, CHECKPOINT_FILES, 'X2ITrainer');
}

/** The step info's loss where this rank computes none (the split teacher, a stopped micro-batch). */
const NO_LOSS = Object.freeze({ loss: NaN, terms: Object.freeze({ doubleImg: [], doubleTxt: [], single: [] }), skipped: 0 }) as
  Pick<X2IStepInfo, 'loss' | 'terms' | 'skipped'>;

/** Captions for training from a JSONL file (the `caption_en` field, as X2I's data; `caption` or `text` also
 * accepted) or a text file (one caption per line); blank lines are skipped. */
export function loadCaptions(file: string): string[] {
  if (!fs.existsSync(file)) throw new X2IError(`${file}: no such file`, 'ERR_FILE_NOT_FOUND');
  const lines = fs.readFileSync(file, 'utf8').split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  if (!/\.jsonl?$/i.test(file)) return lines;
  return lines.map((l, i) => {
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(l);
    } catch (e) {
      throw new X2IError(`${file}:${i + 1}: not valid JSON (${(e as Error).message})`, 'ERR_DATA');
    }
    const c = o.caption_en ?? o.caption ?? o.text;
    if (typeof c !== 'string') throw new X2IError(`${file}:${i + 1}: no "caption_en" (or "caption", "text") string`, 'ERR_DATA');
    return c;
  });
}

export class X2ITrainer {
  readonly transformer: FluxTransformer;
  readonly alignNet: AlignNet;
  /** The student MLLM (QwenVLEncoder or InternVLEncoder). */
  readonly mllm?: StudentEncoder;
  readonly t5?: T5Encoder;
  readonly clip?: ClipTextEncoder;
  readonly options: Readonly<typeof DEFAULTS>;
  /** Optimizer steps taken and micro-batches seen. */
  step = 0;
  microStep = 0;

  constructor(parts: { transformer: FluxTransformer; alignNet: AlignNet; mllm?: StudentEncoder; t5?: T5Encoder;
    clip?: ClipTextEncoder }, options: X2ITrainerOptions = {}) {
    if (!parts?.transformer || !parts?.alignNet) throw invalidArg('X2ITrainer parts', '{ transformer, alignNet, mllm?, t5?, clip? }', parts);
    Object.assign(this, { transformer: parts.transformer, alignNet: parts.alignNet, mllm: parts.mllm, t5: parts.t5, clip: parts.clip });
    this.transformer = parts.transformer;
    this.alignNet = parts.alignNet;
    this.options = Object.freeze({ ...DEFAULTS, ...X2ITrainer.#defined(options) });
    X2ITrainer.#validate(this.options);
    const par = this.options.parallel;
    if (par) {
      if (par.mode !== 'data' && par.mode !== 'split') throw invalidArg('parallel.mode', "'data' or 'split'", par.mode);
      if (!par.group || typeof par.group.allReduce !== 'function') throw invalidArg('parallel.group', 'a ProcessGroup', par.group);
      if (par.mode === 'split' && par.group.worldSize !== 2)
        throw new X2IError(`X2ITrainer: parallel mode 'split' needs 2 ranks (teacher, student), the group has ${par.group.worldSize}`, 'ERR_INVALID_ARG');
    }
  }

  /** The options given, without those set to undefined (they take the defaults). */
  static #defined(o: X2ITrainerOptions): X2ITrainerOptions {
    if (o === null || typeof o !== 'object') throw invalidArg('X2ITrainer options', 'an object', o);
    return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as X2ITrainerOptions;
  }

  /** Every option checked before any work: counts are integers, rates finite, sizes multiples of 16. */
  static #validate(o: Readonly<typeof DEFAULTS>): void {
    checkOptimizerOptions(o);
    imageSide('height', o.height);
    imageSide('width', o.width);
    finiteOption('guidance', o.guidance);
    if (!['rkl', 'kl', 'js', 'mse'].includes(o.divergence)) throw invalidArg('divergence', "'rkl', 'kl', 'js' or 'mse'", o.divergence);
    finiteOption('temperature', o.temperature, { min: 0, minExclusive: true });
    if (typeof o.checkpoint !== 'boolean') throw invalidArg('checkpoint', 'a boolean', o.checkpoint);
    seedOption('seed', o.seed);
    if (o.trajectory !== null) {
      if (typeof o.trajectory !== 'object') throw invalidArg('trajectory', '{ steps } or null', o.trajectory);
      positiveInt('trajectory.steps', o.trajectory.steps, LIMITS.inferenceSteps);
    }
    positiveInt('keepLast', o.keepLast, 1000);
    if (typeof o.overwrite !== 'boolean') throw invalidArg('overwrite', 'a boolean', o.overwrite);
    checkRunConfig('config', o.config);
  }

  /** Folders this trainer wrote checkpoints into or resumed from: reused without `overwrite`. */
  #ownDirs = new Set<string>();
  /** Set once a step produced a non-finite loss, gradient norm or learning rate: save() then refuses. */
  #poisoned: string | null = null;

  /** Refuses a non-empty folder that is not this trainer's (without `overwrite`). */
  #checkOutputDir(dir: string, name = 'checkpointDir'): void {
    const key = path.resolve(dir);
    outputDir(name, dir, { refuseNonEmpty: !this.options.overwrite && !this.#ownDirs.has(key),
      hint: 'resume from it, or pass overwrite: true to replace its checkpoints' });
  }

  /** This process's part: 'single', 'data', or 'teacher' (rank 0) / 'student' (rank 1) in split mode. */
  get role(): X2IStepInfo['role'] {
    const par = this.options.parallel;
    if (!par) return 'single';
    return par.mode === 'data' ? 'data' : par.group.rank === 0 ? 'teacher' : 'student';
  }

  /** The micro-batch index that seeds the noise (and the trajectory step) of this rank's next micro-batch. */
  #sampleIndex(): number {
    const par = this.options.parallel;
    return par?.mode === 'data' ? this.microStep * par.group.worldSize + par.group.rank : this.microStep;
  }
  #synced = false;

  /** The learning rate of optimizer step `s` (0-based): linear warmup, then cosine to 0 at totalSteps. */
  learningRate(s = this.step): number {
    return scheduledLearningRate(this.options, s);
  }


  /** One micro-batch: teacher pass, student pass with the fused loss, gradient into AlignNet; every
   * `gradientAccumulation` micro-batches an optimizer step. In split mode, the teacher rank's call runs the
   * teacher half and sends it; the student rank's call receives it and runs the rest. */
  async trainStep(batch: X2IBatch): Promise<X2IStepInfo> {
    if (this.#poisoned) throw new X2IError(`X2ITrainer: training stopped earlier (${this.#poisoned})`, 'ERR_NON_FINITE');
    const t0 = performance.now();
    const o = this.options;
    const role = this.role;
    const owned: Tensor[] = [];
    const own = <T extends Tensor>(t: T) => (owned.push(t), t);
    // the student's prompt is encoded beside the teacher's half (the MLLM on its own CUDA stream); its tensors are
    // owned as soon as they exist, and the step waits for it before it disposes what it owns
    let studentEncoding: Promise<Tensor> | undefined;
    try {
      if (role !== 'teacher' && 'prompt' in batch.student && this.mllm) {
        studentEncoding = encodeStudentPrompt(this.mllm, batch.student.prompt, { maxLength: 512 })  // X2I's training length
          .then((r) => (own(r.attentionMask), own(r.hiddenStates)));
        studentEncoding.catch(() => {});  // awaited below; a failure of the teacher's half comes first
      }
      if (role === 'data' && !this.#synced) {  // every rank starts from rank 0's AlignNet
        await this.alignNet.broadcastWeights(o.parallel!.group, 0);
        this.#synced = true;
      }
      const device = this.transformer.device, dtype = this.transformer.dtype;
      const lh = 2 * Math.floor(o.height / 16), lw = 2 * Math.floor(o.width / 16), N = (lh / 2) * (lw / 2);
      const guidanceOf = (B: number) => own(Tensor.fromArray(new Float32Array(B).fill(o.guidance), [B], { device }));
      const imgIds = own(FluxPipeline.imageIds(lh, lw, device));
      const txt = (n: number) => own(Tensor.fromArray(new Float32Array(n * 3), [n, 3], { device }));
      const index = this.#sampleIndex();

      // ---- the teacher half: conditioning, latents (σ = 1, or along its own trajectory), and either its taps
      // sent to the student rank or its inputs for distillationStep
      let teacher: Parameters<FluxTransformer['distillationStep']>[0];
      let latents: Tensor, sigma = 1;
      if (role === 'student') {
        const got = await this.#receiveTeacher(own, N);
        if (!got) return this.#stoppedInfo();
        ({ teacher, latents, sigma } = got);
      } else {
        let tEhs: Tensor, tPooled: Tensor;
        if ('caption' in batch.teacher) {
          if (!this.t5 || !this.clip) throw new X2IError('X2ITrainer: captions need the t5 and clip encoders (or pass teacher features)', 'ERR_INVALID_ARG');
          const e = await encodeFluxPrompt(this.t5, this.clip, batch.teacher.caption);
          tEhs = own(e.promptEmbeds);
          tPooled = own(e.pooledPromptEmbeds);
        } else {
          ({ encoderHiddenStates: tEhs, pooledProjections: tPooled } = batch.teacher);
        }
        const B = tEhs.shape[0];
        const C = Number(this.transformer.config.in_channels ?? 64);
        latents = own(await randn([B, N, C], { seed: o.seed + index, device, dtype }));
        if (o.trajectory) {  // the teacher's latent after k of its own denoising steps, at σ_k
          const sched = new FlowMatchEulerScheduler();
          const { timesteps, sigmas } = sched.setTimesteps(o.trajectory.steps, { imageSeqLen: N });
          const k = Math.floor(mulberry32(o.seed * 7919 + index)() * o.trajectory.steps);
          if (k > 0) {
            const r = await this.transformer.denoise({ hiddenStates: latents, encoderHiddenStates: tEhs, pooledProjections: tPooled,
              guidance: guidanceOf(B), imgIds, txtIds: txt(tEhs.shape[1]) }, timesteps.slice(0, k), sigmas.slice(0, k + 1), { returnStepLatents: false });
            latents = own(r.latents);
          }
          sigma = timesteps[k] / 1000;
        }
        const inputs: FluxInputs = { hiddenStates: latents, timestep: own(Tensor.fromArray(new Float32Array(B).fill(sigma), [B], { device })),
          guidance: guidanceOf(B), imgIds, encoderHiddenStates: tEhs, pooledProjections: tPooled, txtIds: txt(tEhs.shape[1]) };
        teacher = inputs;
        if (role === 'teacher') {
          if (!(await this.#sendTeacher(inputs, latents, sigma, own))) return this.#stoppedInfo();
          return this.#advance(t0, B, NO_LOSS);
        }
      }

      // ---- the student half: MLLM hidden states → AlignNet → the student pass with the fused loss
      // (prompts were sent to the MLLM at the start of the step)
      if (!studentEncoding && 'prompt' in batch.student)
        throw new X2IError('X2ITrainer: prompts need the mllm (or pass hidden states)', 'ERR_INVALID_ARG');
      const hidden = studentEncoding ? await studentEncoding : (batch.student as { hiddenStates: Tensor }).hiddenStates;
      const student = await this.alignNet.forward(hidden);
      own(student.encoderHiddenStates);
      own(student.pooledProjections);
      const B = latents.shape[0];
      const r = await this.transformer.distillationStep(teacher,
        { hiddenStates: latents, timestep: own(Tensor.fromArray(new Float32Array(B).fill(sigma), [B], { device })), guidance: guidanceOf(B),
          imgIds, encoderHiddenStates: student.encoderHiddenStates, pooledProjections: student.pooledProjections,
          txtIds: txt(student.encoderHiddenStates.shape[1]) },
        { divergence: o.divergence, temperature: o.temperature, checkpoint: o.checkpoint });
      own(r.grad.encoderHiddenStates);
      own(r.grad.pooledProjections);
      const taps = r.terms.doubleImg.length + r.terms.doubleTxt.length + r.terms.single.length;
      if (!Number.isFinite(r.loss)) this.#poison(`the loss of micro-batch ${this.microStep} is ${r.loss}`);
      if (taps > 0 && r.skipped >= taps) this.#poison(`every tap of micro-batch ${this.microStep} was non-finite (loss ${r.loss})`);
      await this.alignNet.backward(hidden, r.grad);
      return await this.#advance(t0, B, r);
    } finally {
      await studentEncoding?.catch(() => {});
      for (const t of owned) t.dispose();
    }
  }

  /** Counts the micro-batch; every `gradientAccumulation` of them, the optimizer step (averaged over the ranks
   * in data mode; none on the split teacher, which only counts). */
  async #advance(t0: number, B: number, r: Pick<X2IStepInfo, 'loss' | 'terms' | 'skipped'>): Promise<X2IStepInfo> {
    const o = this.options;
    this.microStep++;
    let gradNorm: number | undefined;
    const lr = this.learningRate();
    if (this.microStep % o.gradientAccumulation === 0) {
      if (!Number.isFinite(lr) || lr < 0) this.#poison(`the learning rate of step ${this.step} is ${lr}`);
      if (this.role !== 'teacher') {
        gradNorm = await this.alignNet.optimizerStep({ lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay,
          maxGradNorm: o.maxGradNorm, group: this.role === 'data' ? o.parallel!.group : undefined });
        if (!Number.isFinite(gradNorm)) this.#poison(`the gradient norm of step ${this.step} is ${gradNorm}`);
      }
      this.step++;
    }
    return this.#info(r, lr, gradNorm, B / ((performance.now() - t0) / 1000));
  }

  /** Stops training for good: a non-finite loss, gradient norm or learning rate (the weights may be non-finite
   * now; save() refuses to write them, and the last good checkpoint stays). */
  #poison(why: string): never {
    this.#poisoned = why;
    throw new X2IError(`X2ITrainer: ${why}; training stopped (no checkpoint is written from this state; the last good ` +
      'checkpoint is kept)', 'ERR_NON_FINITE');
  }

  #info(r: Pick<X2IStepInfo, 'loss' | 'terms' | 'skipped'>, lr: number, gradNorm: number | undefined, samplesPerSecond: number,
    stopped?: true): X2IStepInfo {
    const mem = memory();
    return { role: this.role, step: this.step, microStep: this.microStep, loss: r.loss, terms: r.terms, skipped: r.skipped, lr, gradNorm,
      samplesPerSecond, memory: { tensors: mem.tensors, bytes: mem.bytes }, ...(stopped ? { stopped } : {}) };
  }

  /** The split teacher: a header (B, tokens, σ), the latents and the three stacked taps, to rank 1. */
  async #sendTeacher(inputs: FluxInputs, latents: Tensor, sigma: number,
    own: <T extends Tensor>(t: T) => T): Promise<boolean> {
    const g = this.options.parallel!.group, device = this.transformer.device;
    const out = await this.transformer.forward(inputs, { capture: true });
    const caps = out.captures as FluxCaptures;
    for (const t of [out.sample, caps.doubleImg, caps.doubleTxt, caps.single]) own(t);
    if (!(await this.#flag('recv', 1))) return false;  // the student stopped instead of asking for this one
    const [B, N] = latents.shape;
    const header = own(Tensor.fromArray(new Float64Array([B, N, caps.doubleTxt.shape[2], sigma]), [4], { device }));
    for (const t of [header, latents, caps.doubleImg, caps.doubleTxt, caps.single]) await g.send(t, 1);
    return true;
  }

  /** Split mode's handshake, once per micro-batch: the student asks for the next one (1) or stops (0). */
  async #flag(dir: 'send' | 'recv', value = 1): Promise<boolean> {
    const g = this.options.parallel!.group;
    const t = Tensor.fromArray(new Float64Array([value]), [1], { device: this.transformer.device });
    try {
      if (dir === 'send') await g.send(t, 0);
      else await g.recv(t, 1);
      return (await t.toArray() as Float64Array)[0] !== 0;
    } finally {
      t.dispose();
    }
  }

  #stoppedInfo(): X2IStepInfo {
    return this.#info(NO_LOSS, this.learningRate(), undefined, 0, true);
  }

  /** Whether to stop before the next micro-batch, the same answer on every rank: `aborted` of this rank, agreed
   * by an all-reduce in data mode; in split mode the stopping rank tells the other through the handshake. */
  async #shouldStop(aborted: boolean): Promise<boolean> {
    const par = this.options.parallel;
    if (!par) return aborted;
    if (par.mode === 'data') {
      const t = Tensor.fromArray(new Float64Array([aborted ? 1 : 0]), [1], { device: this.transformer.device });
      try {
        await par.group.allReduce(t);
        return (await t.toArray() as Float64Array)[0] > 0;
      } finally {
        t.dispose();
      }
    }
    if (!aborted) return false;
    if (this.role === 'student') await this.#flag('send', 0);
    else if (await this.#flag('recv')) {  // the student is waiting for a micro-batch: tell it to stop
      const stop = Tensor.fromArray(new Float64Array(4), [4], { device: this.transformer.device });  // B = 0
      try {
        await par.group.send(stop, 1);
      } finally {
        stop.dispose();
      }
    }
    return true;
  }

  /** The split student: what #sendTeacher sent, into tensors of the shapes the header and the transformer give. */
  async #receiveTeacher(own: <T extends Tensor>(t: T) => T, N: number):
    Promise<{ teacher: { captures: FluxCaptures }; latents: Tensor; sigma: number } | null> {
    const g = this.options.parallel!.group, device = this.transformer.device, dtype = this.transformer.dtype;
    const cfg = { ...FLUX_DEV_CONFIG, ...this.transformer.config };
    await this.#flag('send', 1);
    const header = own(Tensor.fromArray(new Float64Array(4), [4], { device }));
    await g.recv(header, 0);
    const [B, n, T, sigma] = Array.from(await header.toArray() as Float64Array);
    if (B === 0) return null;  // the teacher stopped
    if (n !== N) throw new X2IError(`X2ITrainer (split): the teacher sent ${n} image tokens, this rank expects ${N} (height/width differ)`, 'ERR_SHAPE_MISMATCH');
    const D = cfg.attention_head_dim * cfg.num_attention_heads;
    const empty = async (shape: number[]) => own(await zeros(shape, { device, dtype }));
    const latents = await empty([B, N, Number(cfg.in_channels)]);
    const captures = { doubleImg: await empty([B, cfg.num_layers, N, D]), doubleTxt: await empty([B, cfg.num_layers, T, D]),
      single: await empty([B, cfg.num_single_layers, T + N, D]) };
    for (const t of [latents, captures.doubleImg, captures.doubleTxt, captures.single]) await g.recv(t, 0);
    return { teacher: { captures }, latents, sigma };
  }

  /** Trains over `data` (cycled) for `steps` micro-batches; `onStep` after each; `signal` stops at a step
   * boundary; with `checkpointDir`, saves every `checkpointEvery` optimizer steps and when stopped. In parallel
   * modes a stop on any rank stops every rank at the same micro-batch (their checkpoints agree). `checkpointDir`
   * must be empty, new, or one this trainer saved into or resumed from (else `overwrite`); every option is checked
   * before the first step. A non-finite loss, gradient norm or learning rate stops it with an X2IError
   * (ERR_NON_FINITE) and no checkpoint of that state. `collect: false` returns no step infos (long runs). With
   * `checkpointDir`, each optimizer step is also a line of `checkpointDir/metrics.jsonl` (MetricsLog; the lines after
   * this trainer's step are dropped first, so a resumed run continues its log). */
  async fit(opts: { data: X2IBatch[]; steps: number; signal?: AbortSignal; onStep?: (i: X2IStepInfo) => void;
    checkpointDir?: string; checkpointEvery?: number; collect?: boolean }): Promise<X2IStepInfo[]> {
    if (!Array.isArray(opts?.data) || opts.data.length === 0) throw invalidArg('data', 'a non-empty array of batches', opts?.data);
    nonNegativeInt('steps', opts.steps, LIMITS.trainSteps);
    if (opts.checkpointEvery !== undefined) positiveInt('checkpointEvery', opts.checkpointEvery, LIMITS.trainSteps);
    if (opts.onStep !== undefined && typeof opts.onStep !== 'function') throw invalidArg('onStep', 'a function', opts.onStep);
    if (opts.checkpointDir !== undefined) this.#checkOutputDir(opts.checkpointDir);
    let log: MetricsLog | undefined;
    if (opts.checkpointDir !== undefined && this.#writer) {
      log = new MetricsLog(opts.checkpointDir, this.step);
      this.#ownDirs.add(path.resolve(opts.checkpointDir));
    }
    const out: X2IStepInfo[] = [];
    for (let i = 0; i < opts.steps; i++) {
      if (await this.#shouldStop(Boolean(opts.signal?.aborted))) break;
      const t0 = performance.now();
      const info = await this.trainStep(opts.data[this.microStep % opts.data.length]);
      if (info.stopped) break;
      log?.add(info, (performance.now() - t0) / 1000, info.gradNorm !== undefined);
      if (opts.collect !== false) out.push(info);
      opts.onStep?.(info);
      if (opts.checkpointDir && opts.checkpointEvery && info.gradNorm !== undefined && this.step % opts.checkpointEvery === 0)
        await this.save(opts.checkpointDir);
    }
    if (opts.checkpointDir) await this.save(opts.checkpointDir);
    return out;
  }

  /** Whether this process writes the checkpoints and metrics: rank 0 in data mode (all ranks hold the same state),
   * the student in split mode. */
  get #writer(): boolean {
    const par = this.options.parallel;
    return !par || (this.role !== 'teacher' && (this.role !== 'data' || par.group.rank === 0));
  }

  /**
   * Writes a checkpoint folder `dir/step-NNNNNN/` with `alignnet.safetensors` (official names: loadable by
   * AlignNet.fromPretrained and, after a key check, by the official code) and `optimizer.safetensors` (float32
   * masters and AdamW moments), then points `dir/trainer.json` at it (with the files' sha256) with one atomic
   * rename, then removes step folders beyond the `keepLast` newest. A save killed at any point leaves trainer.json
   * naming a complete, earlier checkpoint. Refuses (ERR_NON_FINITE) after a non-finite step or when the weights or
   * moments are non-finite: the last good checkpoint is never replaced by a bad one.
   */
  async save(dir: string): Promise<string> {
    const name = checkpointFolderName(this.step, this.microStep);
    const target = path.join(dir, name);
    if (!this.#writer) return target;
    if (this.#poisoned) throw new X2IError(`X2ITrainer.save: refusing to checkpoint after ${this.#poisoned}`, 'ERR_NON_FINITE');
    this.#checkOutputDir(dir, 'save dir');
    const st = this.alignNet.trainingState();
    const tensors: Record<string, Tensor> = {};
    for (const [part, rec] of [['master', st.master], ['exp_avg', st.expAvg], ['exp_avg_sq', st.expAvgSq]] as const)
      for (const [k, t] of Object.entries(rec)) tensors[`${part}.${k}`] = t;
    try {
      try {
        for (const [k, t] of Object.entries(tensors)) await checkFinite(t, `AlignNet training state ${k}`, k.startsWith('exp_avg_sq.'));
      } catch (e) {
        this.#poisoned = (e as Error).message;
        throw new X2IError(`X2ITrainer.save: refusing to checkpoint non-finite state (${(e as Error).message})`, 'ERR_NON_FINITE', { cause: e });
      }
      fs.mkdirSync(target, { recursive: true });
      this.#ownDirs.add(path.resolve(dir));
      await this.alignNet.save(path.join(target, 'alignnet.safetensors'), { 'x2i.step': String(this.step) });
      await saveSafetensors(path.join(target, 'optimizer.safetensors'), tensors, { step: String(st.step) });
    } finally {
      for (const t of Object.values(tensors)) t.dispose();
    }
    const { parallel, config, ...options } = this.options;
    commitCheckpoint(dir, name, CHECKPOINT_FILES, { step: this.step, microStep: this.microStep, options,
      parallel: parallel ? { mode: parallel.mode, worldSize: parallel.group.worldSize } : null, ...(config ? { config } : {}) },
      this.options.keepLast);
    return target;
  }

  /** The checkpoint folder trainer.json points at (holding alignnet.safetensors and optimizer.safetensors); a
   * malformed trainer.json or a pointer out of `dir` is an X2IError naming the file. */
  static latestCheckpoint(dir: string): string {
    return path.join(dir, readTrainerJson(dir).checkpoint);
  }

  /** Continues from a checkpoint written by save(): the AlignNet weights, the optimizer state and the counters.
   * The files' sha256 (where trainer.json records them) must match; the state must be finite, the second moments
   * non-negative. */
  async resume(dir: string): Promise<void> {
    const meta = readTrainerJson(dir);
    const ckpt = path.join(dir, meta.checkpoint);
    if (this.role === 'teacher') {  // the split teacher holds no AlignNet: only the counters
      this.step = meta.step;
      this.microStep = meta.microStep;
      this.#ownDirs.add(path.resolve(dir));
      return;
    }
    verifiedCheckpoint(dir, meta, ['optimizer.safetensors']);
    const optFile = path.join(ckpt, 'optimizer.safetensors');
    let opt: Record<string, Tensor>;
    try {
      opt = await loadSafetensors(optFile);
    } catch (e) {
      throw new X2IError(`${optFile}: ${(e as Error).message}`, (e as X2IError).code ?? 'ERR_BAD_CHECKPOINT', { cause: e });
    }
    try {
      for (const [k, t] of Object.entries(opt)) await checkFinite(t, `${optFile}: ${k}`, k.startsWith('exp_avg_sq.'));
      const pick = (prefix: string) => Object.fromEntries(Object.entries(opt).filter(([k]) => k.startsWith(prefix + '.'))
        .map(([k, t]) => [k.slice(prefix.length + 1), t]));
      const restored = this.alignNet.trainingState({ step: meta.step, master: pick('master'), expAvg: pick('exp_avg'),
        expAvgSq: pick('exp_avg_sq') });
      for (const rec of [restored.master, restored.expAvg, restored.expAvgSq]) for (const t of Object.values(rec)) t.dispose();
    } finally {
      for (const t of Object.values(opt)) t.dispose();
    }
    this.step = meta.step;
    this.microStep = meta.microStep;
    this.#ownDirs.add(path.resolve(dir));
  }
}
