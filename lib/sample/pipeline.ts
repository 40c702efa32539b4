/** x2i.FluxPipeline: FLUX.1 text-to-image sampling (the teacher; diffusers FluxPipeline's steps). */
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import type { FluxTransformer } from '../models/flux.js';
import { addon } from '../core/native.js';
import { FlowMatchEulerScheduler } from './scheduler.js';
import { LIMITS, finiteOption, imageSide, positiveInt, seedOption } from '../core/options.js';
import { Tensor, randn } from '../core/tensor.js';
import type { AutoencoderKL } from '../models/vae.js';
import type { ClipTextEncoder } from '../models/clip.js';
import type { T5Encoder } from '../models/t5.js';
import type { PromptTokenizer } from '../models/tokenizers.js';
import type { LightControl } from '../models/lightcontrol.js';
import type { RgbImage } from '../models/qwen_vision.js';
import { type GenerateImageInput, imageForVae, imageInputSize, packedMask } from './image_input.js';


export interface FluxGenerateOptions {
  /** A prompt (or a batch) for the pipeline's text encoders (T5 → sequence, CLIP → pooled); or give the embeddings. */
  prompt?: string | string[];
  /** T5 sequence embeddings [B, T, 4096] (or an X2I student's AlignNet output). */
  promptEmbeds?: Tensor;
  /** CLIP pooled embeddings [B, 768]. */
  pooledPromptEmbeds?: Tensor;
  /** Packed initial latents [B, (h/2)(w/2), 64]; default: seeded noise. With `image`, this is the noise that
   * image-to-image mixes with the image's latents. */
  latents?: Tensor;
  /** Default 1024; with `image`, the image's height rounded down to a multiple of 16 (2 × the VAE's factor). */
  height?: number;
  /** Default 1024; with `image`, the image's width rounded down to a multiple of 16. */
  width?: number;
  /**
   * Image-to-image (diffusers' FluxImg2ImgPipeline): the init image — a Tensor [B, 3, H, W] or [3, H, W] of floats in
   * [0, 1], an `RgbImage`, an encoded PNG / JPEG / WebP Buffer, or a file path. Decoded with EXIF orientation, alpha
   * flattened on white, resized to height × width (sharp, Lanczos 3, fit 'fill'), encoded by the VAE (the posterior
   * mean); sampling starts at σ = sigmas[t_start] from σ·noise + (1 − σ)·latents. A single image serves a batch.
   */
  image?: GenerateImageInput;
  /**
   * How much of the image is repainted, in (0, 1]: default 0.6 (diffusers). Only the last
   * ⌊numInferenceSteps·strength⌋ steps run (diffusers' get_timesteps); 1 starts from pure noise (the same images as
   * text-to-image from the same noise). Needs `image`.
   */
  strength?: number;
  /**
   * Inpainting (diffusers' FluxInpaintPipeline): white / 1 = repaint, black / 0 = keep. The same inputs as `image`
   * (a Tensor may also be [B, 1, H, W] or [H, W]); converted to grayscale, resized to height × width, binarised at
   * 0.5, then taken at the latent size (nearest). After every step the kept latents are reset to the image's,
   * noised to the next σ (the last step: exactly the image's). Needs `image`; `outpaintCanvas` makes both for
   * outpainting.
   */
  mask?: GenerateImageInput;
  /**
   * LightControl (X2I's ControlNeXt branches, the pipeline's `lightControl`): the control image (the same inputs as
   * `image`; resized to height × width, scaled to [−1, 1]) and the scale of the residuals (default: the branches'
   * own, 1.0). At every step the branches run on the hint and that step's timestep; their residuals are added to the
   * image stream after the double blocks.
   */
  control?: { image: GenerateImageInput; scale?: number };
  /** Adapter scales for this generation only (0 disables an adapter); the others keep `transformer.setLoraScales`'. */
  loraScales?: Record<string, number>;
  /** Default 28. */
  numInferenceSteps?: number;
  /** Default 3.5 (dev); ignored by checkpoints without a guidance embedder. */
  guidanceScale?: number;
  /** Noise seed (CPU generator, the same noise on every device). Default 0. */
  seed?: number;
  signal?: AbortSignal;
  onProgress?: (p: { step: number; total: number; phase: 'denoise' | 'decode' }) => void;
  /** Also return the latents after every step [steps, B, N, C]. */
  returnStepLatents?: boolean;
}

/** [B, 3, H, W] in [0, 1] → each image as interleaved 8-bit RGB (one conversion for the batch, on its device). */
export async function imagesToRgb(images: Tensor): Promise<RgbImage[]> {
  if (!(images instanceof Tensor) || images.shape.length !== 4 || images.shape[1] !== 3)
    throw invalidArg('images', 'a [B, 3, H, W] Tensor', images);
  const [B, , H, W] = images.shape;
  const native = addon(), h = images.handle;
  using u8 = new Tensor(await nativeCall(() => native.imageToUint8(h)));
  const all = await u8.toArray() as Uint8Array;
  return Array.from({ length: B }, (_, i) => ({ data: all.subarray(i * H * W * 3, (i + 1) * H * W * 3), width: W, height: H, channels: 3 }));
}

/** Interleaved 8-bit RGB as PNG, JPEG (quality 95) or WebP (quality 95), through sharp. */
export async function encodeRgb(image: RgbImage, format: 'png' | 'jpeg' | 'webp' = 'png'): Promise<Buffer> {
  const { default: sharp } = await import('sharp');
  const { data, width, height } = image;
  const img = sharp(Buffer.from(data.buffer, data.byteOffset, data.byteLength), { raw: { width, height, channels: 3 } });
  return format === 'png' ? img.png().toBuffer() : format === 'jpeg' ? img.jpeg({ quality: 95 }).toBuffer() : img.webp({ quality: 95 }).toBuffer();
}

/** Encodes image i of a [B, 3, H, W] tensor in [0, 1] as PNG, JPEG or WebP (through sharp). */
export async function encodeImage(images: Tensor, i = 0, format: 'png' | 'jpeg' | 'webp' = 'png'): Promise<Buffer> {
  if (!(images instanceof Tensor) || images.shape.length !== 4 || images.shape[1] !== 3)
    throw invalidArg('images', 'a [B, 3, H, W] Tensor', images);
  const B = images.shape[0];
  if (!(Number.isSafeInteger(i) && i >= 0 && i < B)) throw invalidArg('image index', `0..${B - 1}`, i);
  return encodeRgb((await imagesToRgb(images))[i], format);
}

export interface FluxImages {
  /** [B, 3, H, W] in [0, 1], float32. */
  images: Tensor;
  stepLatents?: Tensor;
  /** Image i as PNG (`encodeImage` gives JPEG and WebP too). */
  toPng(i?: number): Promise<Buffer>;
}

/** FLUX's text conditioning: T5 (padded to `maxSequenceLength`, default 512, no mask) → sequence, CLIP (77) → pooled.
 * The two encoders run side by side (on a GPU each on a CUDA stream of its own); if one fails, the other's outputs are
 * disposed and its error is thrown (T5's when both fail). */
export async function encodeFluxPrompt(t5: T5Encoder, clip: ClipTextEncoder, prompt: string | string[],
  opts: { tokenizer?: PromptTokenizer; tokenizer2?: PromptTokenizer; maxSequenceLength?: number } = {}): Promise<{
    promptEmbeds: Tensor; pooledPromptEmbeds: Tensor }> {
  const [a, b] = await Promise.allSettled([t5.encodePrompt(prompt, { tokenizer: opts.tokenizer2, maxLength: opts.maxSequenceLength ?? 512 }),
    clip.encodePrompt(prompt, { tokenizer: opts.tokenizer })]);
  const rest = [...(a.status === 'fulfilled' ? [a.value.hiddenStates] : []),
    ...(b.status === 'fulfilled' ? [b.value.lastHiddenState, b.value.hiddenStates, ...(b.value.textEmbeds ? [b.value.textEmbeds] : [])] : [])];
  for (const t of rest) t.dispose();
  if (a.status === 'rejected' || b.status === 'rejected') {
    if (a.status === 'fulfilled') a.value.lastHiddenState.dispose();
    if (b.status === 'fulfilled') b.value.pooledOutput.dispose();
    throw a.status === 'rejected' ? a.reason : (b as PromiseRejectedResult).reason;
  }
  return { promptEmbeds: a.value.lastHiddenState, pooledPromptEmbeds: b.value.pooledOutput };
}

export class FluxPipeline {
  readonly transformer: FluxTransformer;
  readonly vae: AutoencoderKL;
  readonly scheduler: FlowMatchEulerScheduler;
  /** CLIP (pooled) and T5 (sequence), as diffusers names them; with their tokenizers (else found beside them). */
  readonly textEncoder?: ClipTextEncoder;
  readonly textEncoder2?: T5Encoder;
  readonly tokenizer?: PromptTokenizer;
  readonly tokenizer2?: PromptTokenizer;
  /** X2I's LightControl branches, used by `generate({ control })`. */
  readonly lightControl?: LightControl;

  constructor(parts: { transformer: FluxTransformer; vae: AutoencoderKL; scheduler?: FlowMatchEulerScheduler;
    textEncoder?: ClipTextEncoder; textEncoder2?: T5Encoder; tokenizer?: PromptTokenizer; tokenizer2?: PromptTokenizer;
    lightControl?: LightControl }) {
    if (!parts?.transformer || !parts?.vae) throw invalidArg('FluxPipeline parts', '{ transformer, vae, scheduler?, textEncoder?, textEncoder2? }', parts);
    this.transformer = parts.transformer;
    this.vae = parts.vae;
    this.scheduler = parts.scheduler ?? new FlowMatchEulerScheduler();
    Object.assign(this, { textEncoder: parts.textEncoder, textEncoder2: parts.textEncoder2, tokenizer: parts.tokenizer,
      tokenizer2: parts.tokenizer2, lightControl: parts.lightControl });
  }

  /** FLUX's text conditioning: T5 (padded to 512, no mask) → sequence, CLIP (77) → pooled. */
  async encodePrompt(prompt: string | string[], opts: { maxSequenceLength?: number } = {}): Promise<{ promptEmbeds: Tensor;
    pooledPromptEmbeds: Tensor }> {
    if (!this.textEncoder || !this.textEncoder2)
      throw new X2IError('FluxPipeline: a prompt needs textEncoder (CLIP) and textEncoder2 (T5); or pass promptEmbeds', 'ERR_INVALID_ARG');
    return encodeFluxPrompt(this.textEncoder2, this.textEncoder, prompt, { tokenizer: this.tokenizer, tokenizer2: this.tokenizer2,
      maxSequenceLength: opts.maxSequenceLength });
  }

  /** The VAE's spatial factor (2^(blocks − 1); FLUX: 8). */
  get vaeScaleFactor(): number {
    return 2 ** ((this.vae.config.block_out_channels as number[]).length - 1);
  }

  /** (0, row, col) of each packed latent token. */
  static imageIds(latentHeight: number, latentWidth: number, device = 'cpu'): Tensor {
    const h = latentHeight / 2, w = latentWidth / 2;
    const ids = new Float32Array(h * w * 3);
    for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) { ids[(i * w + j) * 3 + 1] = i; ids[(i * w + j) * 3 + 2] = j; }
    return Tensor.fromArray(ids, [h * w, 3], { device });
  }

  /** Denoises and decodes: `images` [B, 3, H, W] in [0, 1] (float32). */
  /** Checks the sampling options (sizes, step count, guidance, seed) before any work; throws an X2IError naming
   * the option. Sizes must be multiples of 2 × the VAE's factor (FLUX: 16). */
  checkOptions(opts: Pick<FluxGenerateOptions, 'height' | 'width' | 'numInferenceSteps' | 'guidanceScale' | 'seed' | 'image' |
    'strength' | 'mask' | 'control' | 'loraScales'>): void {
    if (opts === null || typeof opts !== 'object') throw invalidArg('generate options', 'an object', opts);
    const m = 2 * this.vaeScaleFactor;
    if (opts.height !== undefined) imageSide('height', opts.height, m);
    if (opts.width !== undefined) imageSide('width', opts.width, m);
    if (opts.numInferenceSteps !== undefined) positiveInt('numInferenceSteps', opts.numInferenceSteps, LIMITS.inferenceSteps);
    if (opts.guidanceScale !== undefined) finiteOption('guidanceScale', opts.guidanceScale);
    if (opts.seed !== undefined) seedOption('seed', opts.seed);
    if (opts.image === undefined || opts.image === null) {
      if (opts.strength !== undefined) throw new X2IError('strength: image-to-image needs an image (the option image)', 'ERR_INVALID_ARG');
      if (opts.mask !== undefined && opts.mask !== null)
        throw new X2IError('mask: inpainting needs the image to inpaint (the option image)', 'ERR_INVALID_ARG');
    } else {
      checkImageInput('image', opts.image);
      if (opts.mask !== undefined) checkImageInput('mask', opts.mask);
    }
    if (opts.control !== undefined) {
      if (opts.control === null || typeof opts.control !== 'object') throw invalidArg('control', '{ image, scale? }', opts.control);
      if (!this.lightControl)
        throw new X2IError('control: this pipeline has no LightControl (new FluxPipeline({ ..., lightControl }))', 'ERR_INVALID_ARG');
      checkImageInput('control.image', opts.control.image);
      if (opts.control.scale !== undefined) finiteOption('control.scale', opts.control.scale);
    }
    if (opts.loraScales !== undefined) {
      if (opts.loraScales === null || typeof opts.loraScales !== 'object') throw invalidArg('loraScales', 'a record of adapter name → number', opts.loraScales);
      const loaded = this.transformer.loraAdapters;
      for (const [k, v] of Object.entries(opts.loraScales)) {
        if (!(k in loaded)) throw new X2IError(`loraScales: no adapter '${k}' (loaded: ${Object.keys(loaded).join(', ') || 'none'})`, 'ERR_INVALID_ARG');
        finiteOption(`loraScales['${k}']`, v);
      }
    }
    if (opts.strength !== undefined) finiteOption('strength', opts.strength, { min: 0, max: 1, minExclusive: true });
    if (opts.strength !== undefined && opts.numInferenceSteps !== undefined && Math.floor(opts.numInferenceSteps * opts.strength) < 1)
      throw new X2IError(`strength: ${opts.strength} × numInferenceSteps ${opts.numInferenceSteps} leaves no step to run ` +
        '(⌊steps · strength⌋ must be at least 1)', 'ERR_INVALID_ARG');
  }

  async generate(opts: FluxGenerateOptions): Promise<FluxImages> {
    this.checkOptions(opts);
    opts.signal?.throwIfAborted();
    if (opts.prompt !== undefined && !opts.promptEmbeds) {
      const e = await this.encodePrompt(opts.prompt);
      try {
        return await this.generate({ ...opts, prompt: undefined, ...e });
      } finally {
        e.promptEmbeds.dispose();
        e.pooledPromptEmbeds.dispose();
      }
    }
    const { promptEmbeds, pooledPromptEmbeds } = opts;
    if (!(promptEmbeds instanceof Tensor) || !(pooledPromptEmbeds instanceof Tensor))
      throw invalidArg('promptEmbeds / pooledPromptEmbeds', 'Tensors (T5 and CLIP embeddings), or a prompt', promptEmbeds);
    const f = this.vaeScaleFactor;
    let height = opts.height ?? 1024, width = opts.width ?? 1024;
    if (opts.image !== undefined && (opts.height === undefined || opts.width === undefined)) {
      const size = await imageInputSize('image', opts.image);  // diffusers: the image's size, down to a multiple of 2f
      height = opts.height ?? Math.floor(size.height / (2 * f)) * 2 * f;
      width = opts.width ?? Math.floor(size.width / (2 * f)) * 2 * f;
    }
    const lh = 2 * Math.floor(height / (f * 2)), lw = 2 * Math.floor(width / (f * 2));
    if (lh < 2 || lw < 2) throw new X2IError(`height and width must be at least ${2 * f}`, 'ERR_INVALID_ARG');
    const B = promptEmbeds.shape[0];
    const device = this.transformer.device;
    const ops = addon();
    const owned: Tensor[] = [];
    const own = (t: Tensor) => (owned.push(t), t);
    try {
      const C = Number(this.transformer.config.in_channels ?? 64) / 4;
      let latents = opts.latents;
      if (!latents) {
        const noise = own(await randn([B, C, lh, lw], { seed: opts.seed ?? 0, device, dtype: this.transformer.dtype }));
        latents = own(new Tensor(await nativeCall(() => ops.packLatents(noise.handle))));
      }
      const steps = opts.numInferenceSteps ?? 28;
      const { timesteps, sigmas } = this.scheduler.setTimesteps(steps, { imageSeqLen: (lh / 2) * (lw / 2) });
      // image-to-image: diffusers' get_timesteps (init = ⌊steps·strength⌋, the last init steps run), then the
      // start latents σ·noise + (1 − σ)·x0 at σ = sigmas[tStart]
      let tStart = 0, x0: Tensor | undefined, mask: Tensor | undefined;
      const noise = latents;
      if (opts.image !== undefined) {
        const strength = opts.strength ?? 0.6;
        const init = Math.min(Math.floor(steps * strength), steps);
        tStart = Math.max(steps - init, 0);
        if (tStart >= steps) throw new X2IError(`strength: ${strength} × numInferenceSteps ${steps} leaves no step to run`, 'ERR_INVALID_ARG');
        if (latents.shape.length !== 3 || latents.shape[0] !== B || latents.shape[1] !== (lh / 2) * (lw / 2) || latents.shape[2] !== 4 * C)
          throw new X2IError(`latents: expected [${B}, ${(lh / 2) * (lw / 2)}, ${4 * C}] (the packed noise), found [${latents.shape.join(', ')}]`,
            'ERR_SHAPE_MISMATCH');
        const pixels = own(await imageForVae(opts.image, { batch: B, height: lh * f, width: lw * f }));
        opts.signal?.throwIfAborted();
        const z = own(await this.vae.encode(pixels));
        x0 = own(new Tensor(await nativeCall(() => ops.encodeLatents(z.handle, this.vae.scalingFactor, this.vae.shiftFactor))));
        if (opts.mask !== undefined)
          mask = own(await packedMask(opts.mask, { batch: B, height: lh * f, width: lw * f, latentHeight: lh, latentWidth: lw,
            channels: C, device }));
        const xa = x0;
        latents = own(new Tensor(await nativeCall(() => ops.noiseLatents(xa.handle, noise.handle, sigmas[tStart]))));
      }
      const run = steps - tStart;
      const guidance = own(Tensor.fromArray(new Float32Array(B).fill(opts.guidanceScale ?? 3.5), [B], { device }));
      const inputs = { hiddenStates: latents, encoderHiddenStates: promptEmbeds, pooledProjections: pooledPromptEmbeds,
        guidance, imgIds: own(FluxPipeline.imageIds(lh, lw, device)),
        txtIds: own(Tensor.fromArray(new Float32Array(promptEmbeds.shape[1] * 3), [promptEmbeds.shape[1], 3], { device })) };
      // one native call per step keeps AbortSignal and progress between steps
      const stepLatents: Tensor[] = [];
      let x = latents;
      const dropAll = () => { if (x !== latents) x.dispose(); for (const t of stepLatents) t.dispose(); };
      const inpaint = mask && x0 ? { mask, x0 } : undefined;
      const lc = opts.control ? this.lightControl : undefined;
      if (lc && 2 * f !== 16)
        throw new X2IError(`control: LightControl makes one token per 16 × 16 pixels, this VAE's packed latents one per ${2 * f} × ${2 * f}`,
          'ERR_INVALID_ARG');
      const hint = opts.control ? own(await imageForVae(opts.control.image, { batch: B, height: lh * f, width: lw * f, device,
        name: 'control.image' })) : undefined;
      for (let i = tStart; i < steps; i++) {
        if (opts.signal?.aborted) { dropAll(); opts.signal.throwIfAborted(); }
        let residuals: Tensor | undefined;
        if (lc && hint) {  // the branches at this step's timestep (FLUX's t / 1000)
          using t = Tensor.fromArray(new Float32Array(B).fill(timesteps[i] / 1000), [B], { device });
          residuals = (await lc.forward({ hint, timestep: t })).residuals;
        }
        const r = await this.transformer.denoise({ ...inputs, hiddenStates: x }, [timesteps[i]], [sigmas[i], sigmas[i + 1]],
          { returnStepLatents: false, loraScales: opts.loraScales, controlResiduals: residuals,
            controlScale: lc ? opts.control?.scale ?? lc.scale : undefined }).finally(() => residuals?.dispose());
        if (x !== latents) (opts.returnStepLatents ? stepLatents.push(x) : x.dispose());
        x = r.latents;
        if (inpaint) {  // inpainting: the kept latents are the image's, noised to the next σ (the last step: x0)
          const { mask: m, x0: k } = inpaint;
          const known = i === steps - 1 ? k : new Tensor(await nativeCall(() => ops.noiseLatents(k.handle, noise.handle, sigmas[i + 1])));
          const stepped = x;
          try {
            x = new Tensor(await nativeCall(() => ops.blendLatents(stepped.handle, known.handle, m.handle)));
          } catch (e) {
            dropAll();
            throw e;
          } finally {
            if (known !== k) known.dispose();
          }
          stepped.dispose();
        }
        opts.onProgress?.({ step: i - tStart + 1, total: run, phase: 'denoise' });
      }
      if (opts.signal?.aborted) { dropAll(); opts.signal.throwIfAborted(); }
      const z = own(new Tensor(await nativeCall(() => ops.unpackLatents(x.handle, lh, lw, this.vae.scalingFactor, this.vae.shiftFactor))));
      if (opts.returnStepLatents) stepLatents.push(x); else own(x);
      const decoded = own(await this.vae.decode(z));
      const images = new Tensor(await nativeCall(() => ops.toImage(decoded.handle)));
      opts.onProgress?.({ step: run, total: run, phase: 'decode' });
      const toPng = (i = 0) => encodeImage(images, i, 'png');
      if (!opts.returnStepLatents) return { images, toPng };
      const stacked = await stack(stepLatents);
      for (const t of stepLatents) t.dispose();
      return { images, stepLatents: stacked, toPng };
    } finally {
      for (const t of owned) if (t !== opts.latents) t.dispose();
    }
  }
}

/** The image options' type (the decoding waits for generate). */
function checkImageInput(name: string, v: unknown): void {
  if (!(v instanceof Tensor) && !Buffer.isBuffer(v) && !(typeof v === 'string' && v !== '') &&
    !(typeof v === 'object' && v !== null && 'data' in v && 'width' in v && 'height' in v))
    throw invalidArg(name, 'a Tensor [B, 3, H, W] in [0, 1], an RgbImage, an encoded image Buffer or a file path', v);
}

/** Stacks tensors of one shape on a new first dim (through the host: small, per-step latents). */
async function stack(ts: Tensor[]): Promise<Tensor> {
  const arrays = await Promise.all(ts.map((t) => t.toArray()));
  const n = arrays[0].length;
  const out = new (arrays[0].constructor as Float32ArrayConstructor)(n * arrays.length);
  arrays.forEach((a, i) => out.set(a as Float32Array, i * n));
  return Tensor.fromArray(out, [ts.length, ...ts[0].shape], { dtype: ts[0].dtype, device: ts[0].device });
}
