/** Teacher–student evaluation (x2i eval): image agreement (SSIM/PSNR) from the same noise, the distillation loss, and
 * CLIP score of each against its prompt (ClipScorer). */
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { ClipTextEncoder } from '../models/clip.js';
import { ClipVisionEncoder } from '../models/clip_vision.js';
import type { PretrainedOptions } from '../models/pretrained.js';
import type { RgbImage } from '../models/qwen_vision.js';
import type { X2IGenerateOptions, X2IGenerator } from './generator.js';
import type { AlignNet } from '../models/alignnet.js';
import { distillationLoss } from '../train/distill.js';
import { addon } from '../core/native.js';
import { FluxPipeline, imagesToRgb } from './pipeline.js';
import { Tensor, randn } from '../core/tensor.js';

/** SSIM (11×11 Gaussian window, σ 1.5) and PSNR (peak 1) per image of two [B, C, H, W] batches in [0, 1]. */
export async function imageAgreement(a: Tensor, b: Tensor): Promise<{ ssim: number[]; psnr: number[] }> {
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) throw invalidArg('images', 'two Tensors', a);
  const [ha, hb] = [a.handle, b.handle];
  return nativeCall(() => addon().imageAgreement(ha, hb));
}

export interface AgreementResult {
  ssim: number;
  psnr: number;
  /** The X2I distillation loss (teacher vs student taps at σ = 1). */
  loss: number;
  perSample: { ssim: number; psnr: number; loss: number }[];
}

/**
 * For each held-out sample: teacher images (its T5/CLIP conditioning) and student images (AlignNet of the MLLM
 * states) from the same noise, their SSIM/PSNR, and the distillation loss on the taps at σ = 1.
 */
export async function evaluateAgreement(opts: { pipeline: FluxPipeline; alignNet: AlignNet;
  samples: { teacher: { encoderHiddenStates: Tensor; pooledProjections: Tensor }; student: { hiddenStates: Tensor } }[];
  height?: number; width?: number; numInferenceSteps?: number; guidanceScale?: number; seed?: number }): Promise<AgreementResult> {
  const per: AgreementResult['perSample'] = [];
  const { pipeline, alignNet } = opts;
  const gen = { height: opts.height ?? 1024, width: opts.width ?? 1024, numInferenceSteps: opts.numInferenceSteps ?? 28,
    guidanceScale: opts.guidanceScale ?? 3.5 };
  if (!pipeline || typeof pipeline.checkOptions !== 'function') throw invalidArg('pipeline', 'a FluxPipeline', pipeline);
  pipeline.checkOptions({ ...gen, seed: opts.seed });
  if (!Array.isArray(opts.samples) || opts.samples.length === 0) throw invalidArg('samples', 'a non-empty array of samples', opts.samples);
  for (const [i, s] of opts.samples.entries()) {
    const st = await alignNet.forward(s.student.hiddenStates);
    const seed = (opts.seed ?? 0) + i;
    const t = await pipeline.generate({ ...gen, seed, promptEmbeds: s.teacher.encoderHiddenStates, pooledPromptEmbeds: s.teacher.pooledProjections });
    const u = await pipeline.generate({ ...gen, seed, promptEmbeds: st.encoderHiddenStates, pooledPromptEmbeds: st.pooledProjections });
    const agree = await imageAgreement(t.images, u.images);
    // the loss at σ = 1 on the same latents
    const f = pipeline.transformer;
    const B = s.teacher.encoderHiddenStates.shape[0];
    const lh = 2 * Math.floor(gen.height / 16), lw = 2 * Math.floor(gen.width / 16);
    const latents = await randn([B, (lh / 2) * (lw / 2), Number(f.config.in_channels ?? 64)], { seed, device: f.device, dtype: f.dtype });
    const ones = Tensor.fromArray(new Float32Array(B).fill(1), [B], { device: f.device });
    const guidance = Tensor.fromArray(new Float32Array(B).fill(gen.guidanceScale), [B], { device: f.device });
    const imgIds = FluxPipeline.imageIds(lh, lw, f.device);
    const txt = (n: number) => Tensor.fromArray(new Float32Array(n * 3), [n, 3], { device: f.device });
    const [tt, ts] = [txt(s.teacher.encoderHiddenStates.shape[1]), txt(st.encoderHiddenStates.shape[1])];
    const common = { hiddenStates: latents, timestep: ones, guidance, imgIds };
    const a = await f.forward({ ...common, encoderHiddenStates: s.teacher.encoderHiddenStates, pooledProjections: s.teacher.pooledProjections, txtIds: tt }, { capture: true });
    const b = await f.forward({ ...common, encoderHiddenStates: st.encoderHiddenStates, pooledProjections: st.pooledProjections, txtIds: ts }, { capture: true });
    const loss = (await distillationLoss(a.captures!, b.captures!)).loss;
    for (const x of [st.encoderHiddenStates, st.pooledProjections, t.images, u.images, latents, ones, guidance, imgIds, tt, ts,
      a.sample, b.sample, ...Object.values(a.captures!), ...Object.values(b.captures!)]) x.dispose();
    agree.ssim.forEach((v, k) => per.push({ ssim: v, psnr: agree.psnr[k], loss }));
  }
  const mean = (k: 'ssim' | 'psnr' | 'loss') => per.reduce((acc, p) => acc + p[k], 0) / per.length;
  return { ssim: mean('ssim'), psnr: mean('psnr'), loss: mean('loss'), perSample: per };
}

// ---------------------------------------------------------------- CLIP score
/**
 * CLIP score (Hessel et al. 2021, as torchmetrics' CLIPScore): 100 · max(cos(image embedding, text embedding), 0),
 * with a whole CLIP checkpoint (e.g. openai/clip-vit-large-patch14: both towers, their projections, the tokenizer
 * and preprocessor_config.json in one folder).
 */
export class ClipScorer {
  readonly text: ClipTextEncoder;
  readonly vision: ClipVisionEncoder;

  constructor(parts: { text: ClipTextEncoder; vision: ClipVisionEncoder }) {
    if (!(parts?.text instanceof ClipTextEncoder) || !(parts?.vision instanceof ClipVisionEncoder))
      throw invalidArg('ClipScorer parts', '{ text: ClipTextEncoder, vision: ClipVisionEncoder }', parts);
    this.text = parts.text;
    this.vision = parts.vision;
  }

  /** Both towers of a CLIPModel folder (or Hugging Face repo id in the local cache). */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<ClipScorer> {
    const vision = await ClipVisionEncoder.fromPretrained(p, opts);
    try {
      return new ClipScorer({ text: await ClipTextEncoder.fromPretrained(p, opts), vision });
    } catch (e) {
      vision.dispose();
      throw e;
    }
  }

  /** Image embeddings [N, D], L2-normalised: decoded images, or a [B, 3, H, W] tensor in [0, 1] (FluxImages.images). */
  async embedImages(images: RgbImage[] | Tensor): Promise<Float32Array[]> {
    const rgb = images instanceof Tensor ? await imagesToRgb(images) : images;
    using px = await this.vision.preprocess(rgb);
    using onDevice = await px.to({ device: this.vision.device });
    const out = await this.vision.forward({ pixelValues: onDevice });
    return takeEmbeds(out.imageEmbeds, [out.lastHiddenState, out.poolerOutput], 'the vision checkpoint has no visual_projection');
  }

  /** Text embeddings [N, D], L2-normalised: prompts (the folder's tokenizer, 77 tokens) or token ids [N, S]. */
  async embedTexts(prompts: string[] | Tensor): Promise<Float32Array[]> {
    const out = prompts instanceof Tensor ? await this.text.forward({ inputIds: prompts }) : await this.text.encodePrompt(prompts);
    return takeEmbeds(out.textEmbeds, [out.lastHiddenState, out.pooledOutput, out.hiddenStates], 'the text checkpoint has no text_projection');
  }

  /** 100 · max(cos, 0) of image i with prompt i (prompts as text, or token ids [N, S]). */
  async score(images: RgbImage[] | Tensor, prompts: string[] | Tensor): Promise<number[]> {
    const [a, b] = [await this.embedImages(images), await this.embedTexts(prompts)];
    if (a.length !== b.length) throw new X2IError(`CLIP score: ${a.length} images for ${b.length} prompts`, 'ERR_INVALID_ARG');
    return a.map((v, i) => 100 * Math.max(dot(v, b[i]), 0));
  }

  dispose(): void {
    this.text.dispose();
    this.vision.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i], 0);

async function takeEmbeds(e: Tensor | undefined, rest: Tensor[], missing: string): Promise<Float32Array[]> {
  for (const t of rest) t.dispose();
  if (!e) throw new X2IError(`CLIP score: ${missing} (a whole CLIPModel checkpoint is needed)`, 'ERR_CONFIG');
  const [N, D] = e.shape;
  const all = await (await e.to({ device: 'cpu', dtype: 'float32' })).toArray() as Float32Array;
  e.dispose();
  return Array.from({ length: N }, (_, i) => {
    const v = all.slice(i * D, (i + 1) * D), n = Math.hypot(...v) || 1;
    return v.map((x) => x / n);
  });
}

// ---------------------------------------------------------------- teacher vs student on prompts (x2i eval --prompts)
export interface PromptEvaluation {
  prompts: { prompt: string; seed: number; clipTeacher: number; clipStudent: number; ssim: number; psnr: number }[];
  /** Means over the prompts; ratio = clipStudent / clipTeacher (null where the teacher's mean score is 0: no ratio). */
  summary: { clipTeacher: number; clipStudent: number; ratio: number | null; ssim: number; psnr: number; n: number };
}

/**
 * The X2I student against its teacher on prompts: for each prompt the teacher's image (FLUX on T5 + CLIP: `teacher`
 * a FluxPipeline with its text encoders) and the student's (`student` an X2IGenerator over the same transformer)
 * from the same noise, each scored against the prompt by CLIP score, and their SSIM/PSNR agreement. Images are kept
 * only as PNG through `onImages` (optional). `studentOptions`: how the student encodes a prompt (its tokenizer, default
 * the one in its MLLM's folder; maxLength; template), as for `X2IGenerator.generate`.
 */
export async function evaluatePrompts(opts: { teacher: FluxPipeline; student: X2IGenerator; clip: ClipScorer; prompts: string[];
  studentOptions?: Pick<X2IGenerateOptions, 'tokenizer' | 'maxLength' | 'template'>;
  height?: number; width?: number; numInferenceSteps?: number; guidanceScale?: number; seed?: number; signal?: AbortSignal;
  onPrompt?: (i: number, total: number) => void; onImages?: (i: number, teacherPng: Buffer, studentPng: Buffer) => Promise<void> | void }): Promise<PromptEvaluation> {
  if (!Array.isArray(opts.prompts) || opts.prompts.length === 0 || !opts.prompts.every((p) => typeof p === 'string' && p.trim()))
    throw invalidArg('prompts', 'a non-empty array of non-empty strings', opts.prompts);
  const gen = { height: opts.height ?? 1024, width: opts.width ?? 1024, numInferenceSteps: opts.numInferenceSteps ?? 28,
    guidanceScale: opts.guidanceScale ?? 3.5, signal: opts.signal };
  opts.teacher.checkOptions({ ...gen, seed: opts.seed });
  const rows: PromptEvaluation['prompts'] = [];
  for (const [i, prompt] of opts.prompts.entries()) {
    opts.signal?.throwIfAborted();
    opts.onPrompt?.(i, opts.prompts.length);
    const seed = (opts.seed ?? 0) + i;
    const t = await opts.teacher.generate({ ...gen, seed, prompt });
    try {
      const s = await opts.student.generate({ ...opts.studentOptions, ...gen, seed, prompt });
      try {
        const agree = await imageAgreement(t.images, s.images);
        const [ct] = await opts.clip.score(t.images, [prompt]), [cs] = await opts.clip.score(s.images, [prompt]);
        rows.push({ prompt, seed, clipTeacher: ct, clipStudent: cs, ssim: agree.ssim[0], psnr: agree.psnr[0] });
        if (opts.onImages) await opts.onImages(i, await t.toPng(0), await s.toPng(0));
      } finally {
        s.images.dispose();
      }
    } finally {
      t.images.dispose();
    }
  }
  const mean = (k: 'clipTeacher' | 'clipStudent' | 'ssim' | 'psnr') => rows.reduce((a, r) => a + r[k], 0) / rows.length;
  const summary = { clipTeacher: mean('clipTeacher'), clipStudent: mean('clipStudent'), ratio: null as number | null, ssim: mean('ssim'), psnr: mean('psnr'), n: rows.length };
  summary.ratio = summary.clipTeacher > 0 ? summary.clipStudent / summary.clipTeacher : null;
  return { prompts: rows, summary };
}
