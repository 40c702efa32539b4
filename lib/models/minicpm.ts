/**
 * x2i.MiniCPMOEncoder: MiniCPM-o 2.6 as an X2I student (native/models/minicpm.cc): images (SigLIP NaViT +
 * resampler), audio (Whisper encoder + projection + pooling) and text into the Qwen2.5 language model, one pass with
 * every layer's state kept — the student that hears.
 */
import { X2IError, invalidArg } from '../core/errors.js';
import { addon } from '../core/native.js';
import type { NativeMiniCPMOConfig, NativeMiniCPMOEncoder, NativeMiniCPMOInputs } from '../core/addon.js';
import { ConfigReader } from '../core/config.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { Tensor } from '../core/tensor.js';
import { loadNative, loadOptions, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { nativeConfig as qwenConfig } from './qwen.js';
import { resizeRgb, rgbPixels, roundHalfEven, type RgbImage } from './qwen_vision.js';
import { MiniCPMOTokenizer } from './tokenizers.js';
import { logMel, type DecodedAudio } from './audio.js';
import fs from 'node:fs';
import path from 'node:path';

/** What `encodePrompt` takes: text in any language, images, video frames (each one image, as MiniCPM-o reads video)
 * and 16 kHz mono audio (`x2i.audio.load`), in any mix. */
export interface MiniCPMOPrompt {
  text?: string;
  images?: RgbImage[];
  video?: RgbImage[];
  audios?: (Float32Array | DecodedAudio)[];
}

export interface MiniCPMOProcessOptions {
  /** Pad on the right with `<|endoftext|>` to this many tokens (official X2I training: 512; inference: none, the
   * default). Pads take position 1 and attend to the prompt, as the reference's generate runs them. */
  maxLength?: number;
  /** Slices per image (default 1, X2I's setting: the whole image only, up- or down-sampled to about
   * scale_resolution²; more: MiniCPM-V's grid slicing). */
  maxSliceNums?: number;
  tokenizer?: MiniCPMOTokenizer;
}

/** The processor's outputs for one prompt (public-api: MiniCPMOEncoder.forward). */
export interface MiniCPMOInputs {
  inputIds: Tensor;
  attentionMask?: Tensor;
  /** One [3, 14, n·14] patch strip per image slice, as the processor gives. */
  pixelValues?: Tensor[];
  /** [n, 2] patch grid (h, w) per slice. */
  tgtSizes?: Tensor;
  /** [n, 2] token spans the slices' queries fill. */
  imageBound?: Tensor;
  /** [n, 80, T] log-mel (x2i.audio.logMel), padded to the longest. */
  audioFeatures?: Tensor;
  /** [n] mel frames per audio. */
  audioFeatureLens?: Tensor;
  /** [m, 2] token spans the audio embeddings fill, in order. */
  audioBounds?: Tensor;
  capture?: boolean;
}

export class MiniCPMOEncoder extends NativeModel<NativeMiniCPMOEncoder> {
  readonly config: Readonly<Record<string, unknown>>;

  #folder: string | null;
  #tokenizer?: MiniCPMOTokenizer;

  private constructor(h: NativeMiniCPMOEncoder, config: Record<string, unknown>, folder: string | null) {
    super(h, 'MiniCPMOEncoder');
    this.config = Object.freeze(config);
    this.#folder = folder;
  }

  /** The processor's settings: the folder's preprocessor_config.json, else config.json's slice_config and query_num. */
  get processorConfig(): { scaleResolution: number; patchSize: number; imageFeatureSize: number; mean: number[]; std: number[] } {
    return (this.#processor ??= this.#readProcessorConfig());
  }

  #processor?: MiniCPMOEncoder['processorConfig'];
  #readProcessorConfig(): MiniCPMOEncoder['processorConfig'] {
    let pre: Record<string, unknown> = {};
    const f = this.#folder ? path.join(this.#folder, 'preprocessor_config.json') : '';
    if (f && fs.existsSync(f)) {
      try {
        pre = JSON.parse(fs.readFileSync(f, 'utf8'));
      } catch (e) {
        throw new X2IError(`${f}: not valid JSON (${(e as Error).message})`, 'ERR_CONFIG');
      }
    }
    const slice = (this.config.slice_config ?? {}) as Record<string, unknown>;
    const num = (v: unknown, d: number) => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : d);
    return { scaleResolution: num(pre.scale_resolution ?? slice.scale_resolution, 448), patchSize: num(pre.patch_size ?? slice.patch_size, 14),
      imageFeatureSize: num(pre.image_feature_size ?? this.config.query_num, 64),
      mean: (pre.norm_mean as number[] | undefined) ?? [0.5, 0.5, 0.5], std: (pre.norm_std as number[] | undefined) ?? [0.5, 0.5, 0.5] };
  }

  /**
   * MiniCPM-o's processor as X2I calls it: the user turn is `(<image>./</image>)\n` per image (and per video frame),
   * then `(<audio>./</audio>)\n` per audio, then the text, in the chat template; each image becomes `<image>` +
   * `<unk>` × query_num + `</image>` (plus MiniCPM-V's slices when maxSliceNums > 1), each audio one
   * `<|audio_start|>` + `<unk>` × k + `<|audio_end|>` group per second; no padding. Returns the model's inputs.
   */
  async processPrompt(prompt: string | MiniCPMOPrompt, opts: MiniCPMOProcessOptions = {}): Promise<MiniCPMOInputs> {
    const p: MiniCPMOPrompt = typeof prompt === 'string' ? { text: prompt } : prompt;
    if (!p || (p.text === undefined && !p.images?.length && !p.video?.length && !p.audios?.length))
      throw invalidArg('prompt', 'a string or { text?, images?, video?, audios? }', prompt);
    if (!opts.tokenizer && !this.#folder)
      throw new X2IError('MiniCPMOEncoder: a model from fromConfig has no tokenizer; pass opts.tokenizer', 'ERR_INVALID_ARG');
    const tok = opts.tokenizer ?? (this.#tokenizer ??= MiniCPMOTokenizer.fromPretrained(this.#folder!));
    const maxSlices = opts.maxSliceNums ?? 1;
    if (!Number.isSafeInteger(maxSlices) || maxSlices < 1) throw invalidArg('maxSliceNums', 'a positive integer', maxSlices);
    const pc = this.processorConfig;
    const images = [...(p.images ?? []), ...(p.video ?? [])];
    const strips: Tensor[] = [], sizes: number[] = [], imagePh: string[] = [];
    for (const img of images) {
      const r = await sliceImage(img, maxSlices, pc);
      for (const s of r.slices) strips.push(s.strip), sizes.push(s.h, s.w);
      imagePh.push(r.placeholder(pc.imageFeatureSize));
    }
    const audioPh: string[] = [], feats: Float32Array[] = [], lens: number[] = [];
    for (const a of p.audios ?? []) {
      const wave = a instanceof Float32Array ? a : a?.waveform;
      if (!(wave instanceof Float32Array) || wave.length === 0) throw invalidArg('audio', 'a Float32Array at 16 kHz or x2i.audio.load()\'s result', a);
      if (!(a instanceof Float32Array) && a.samplingRate !== 16000)
        throw new X2IError(`audio: ${a.samplingRate} Hz, expected 16000 (x2i.audio.load resamples by default)`, 'ERR_INVALID_ARG');
      let tokens = 0;
      for (let s = 0; s < wave.length; s += 30 * 16000) {  // MiniCPM-o's 30 s pieces, each its own features
        using f = await logMel(wave.subarray(s, Math.min(wave.length, s + 30 * 16000)));
        feats.push(await f.toArray() as Float32Array), lens.push(f.shape[1]);
        tokens += pooledTokens(f.shape[1], this.#poolStep);
      }
      audioPh.push(audioPlaceholder(tokens, this.#poolStep, this.#chunkLength));
    }
    let content = '(<image>./</image>)\n'.repeat(images.length) + '(<audio>./</audio>)\n'.repeat(p.audios?.length ?? 0) + (p.text ?? '');
    let text = tok.chat(content);
    for (const ph of imagePh) text = text.replace('(<image>./</image>)', ph);
    for (const ph of audioPh) text = text.replace('(<audio>./</audio>)', ph);
    const ids = tok.tokenize(text);
    const spans = (open: number[], close: number[]) => {
      const out: number[] = [];
      let start = -1;
      ids.forEach((id, i) => {
        if (open.includes(id)) start = i + 1;
        else if (close.includes(id) && start >= 0) out.push(start, i), start = -1;
      });
      return out;
    };
    const img = spans([tok.ids.imStart, tok.ids.sliceStart], [tok.ids.imEnd, tok.ids.sliceEnd]);
    const aud = spans([tok.ids.audioStart], [tok.ids.audioEnd]);
    const padTo = opts.maxLength;
    if (padTo !== undefined && !(Number.isSafeInteger(padTo) && padTo > 0)) throw invalidArg('maxLength', 'a positive integer', padTo);
    const real = ids.length;
    if (padTo !== undefined && ids.length < padTo) ids.push(...new Array(padTo - ids.length).fill(tok.padId));
    const T = Math.max(0, ...lens);
    const padded = new Float32Array(feats.length * 80 * T);
    feats.forEach((f, i) => { for (let m = 0; m < 80; m++) padded.set(f.subarray(m * lens[i], (m + 1) * lens[i]), (i * 80 + m) * T); });
    const L = ids.length;
    return {
      inputIds: Tensor.fromArray(BigInt64Array.from(ids, BigInt), [1, L]),
      attentionMask: Tensor.fromArray(BigInt64Array.from({ length: L }, (_, i) => (i < real ? 1n : 0n)), [1, L]),
      ...(strips.length ? { pixelValues: strips, tgtSizes: Tensor.fromArray(BigInt64Array.from(sizes, BigInt), [strips.length, 2]),
        imageBound: Tensor.fromArray(BigInt64Array.from(img, BigInt), [img.length / 2, 2]) } : {}),
      ...(feats.length ? { audioFeatures: Tensor.fromArray(padded, [feats.length, 80, T]),
        audioFeatureLens: Tensor.fromArray(BigInt64Array.from(lens, BigInt), [lens.length]),
        audioBounds: Tensor.fromArray(BigInt64Array.from(aud, BigInt), [aud.length / 2, 2]) } : {}),
    };
  }

  /** Prompt in (text, images, video frames, audio), AlignNet input out: `processPrompt`, then `forward`. */
  async encodePrompt(prompt: string | MiniCPMOPrompt, opts: MiniCPMOProcessOptions = {}): Promise<{ hiddenStates: Tensor; attentionMask: Tensor }> {
    const ins = await this.processPrompt(prompt, opts);
    try {
      const { hiddenStates } = await this.forward(ins);
      return { hiddenStates, attentionMask: ins.attentionMask! };
    } finally {
      for (const t of [ins.inputIds, ins.tgtSizes, ins.imageBound, ins.audioFeatures, ins.audioFeatureLens, ins.audioBounds, ...(ins.pixelValues ?? [])])
        t?.dispose();
    }
  }

  get #poolStep(): number {
    return (this.config.audio_pool_step as number | undefined) ?? 2;
  }
  get #chunkLength(): number {
    return (this.config.audio_chunk_length as number | undefined) ?? 1;
  }

  /** A MiniCPM-o 2.6 folder in the released layout: config.json (`MiniCPMOConfig`: flat Qwen2 fields,
   * `vision_config`, `audio_config`, `query_num`, ...) and (sharded) safetensors (`llm.`, `vpm.`, `resampler.`,
   * `apm.`, `audio_projection_layer.`; `tts.` is not read). */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<MiniCPMOEncoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const { config: top, configFile: file, weights } = readModelFolder(p, opts.config, opts);
    const native = nativeConfig(top, file);
    const Native = addon().NativeMiniCPMOEncoder;
    const h = await loadNative(weights, loadOptions(opts), (w) => Native.load(native, w, weights));
    return new MiniCPMOEncoder(h, top, fs.statSync(weights).isDirectory() ? weights : path.dirname(weights));
  }

  /** A model of a MiniCPM-o config.json object with random weights (the loaders' RandomInit, from `seed`). */
  static async fromConfig(config: Record<string, unknown>, opts: RandomOptions = {}): Promise<MiniCPMOEncoder> {
    if (!config || typeof config !== 'object') throw invalidArg('config', 'a MiniCPM-o config object', config);
    return new MiniCPMOEncoder(await randomNative(addon().NativeMiniCPMOEncoder, nativeConfig(config, 'config'), opts), config, null);
  }

  /** The merged embeddings (images into imageBound, audio into audioBounds), one pass of the language model:
   * hiddenStates [1, L+1, S, H] (embeddings, each layer, the last after the final RMSNorm). Positions 0..S−1. */
  async forward(inputs: MiniCPMOInputs): Promise<{ hiddenStates: Tensor }> {
    if (!inputs || !(inputs.inputIds instanceof Tensor)) throw invalidArg('inputs.inputIds', 'a Tensor', inputs?.inputIds);
    requireNonEmpty('inputs.inputIds', inputs.inputIds, 'batch or sequence');
    const r = await this.call((h) => h.forward(nativeInputs(inputs, { inputIds: inputs.inputIds.handle, capture: inputs.capture ?? true })));
    return { hiddenStates: new Tensor(r.hiddenStates) };
  }

  /** The image slices' features [n, query_num, H] (vpm + resampler). */
  async encodeImages(pixelValues: Tensor[], tgtSizes: Tensor): Promise<Tensor> {
    const r = await this.call((h) => h.forward(nativeInputs({ pixelValues, tgtSizes }, { only: 'image' })));
    return new Tensor(r.hiddenStates);
  }

  /** The audios' features, concatenated [Σ N_i, H] (Whisper encoder, projection, pooling). */
  async encodeAudio(audioFeatures: Tensor, audioFeatureLens?: Tensor): Promise<Tensor> {
    const r = await this.call((h) => h.forward(nativeInputs({ audioFeatures, audioFeatureLens }, { only: 'audio' })));
    return new Tensor(r.hiddenStates);
  }
}

function nativeInputs(inputs: Partial<MiniCPMOInputs>, base: NativeMiniCPMOInputs): NativeMiniCPMOInputs {
  const ins = { ...base };
  for (const k of ['attentionMask', 'tgtSizes', 'imageBound', 'audioFeatures', 'audioFeatureLens', 'audioBounds'] as const) {
    const t = inputs[k];
    if (t === undefined || t === null) continue;
    if (!(t instanceof Tensor)) throw invalidArg(`inputs.${k}`, 'a Tensor', t);
    requireNonEmpty(`inputs.${k}`, t);
    ins[k] = t.handle;
  }
  if (inputs.pixelValues !== undefined) {
    if (!Array.isArray(inputs.pixelValues) || !inputs.pixelValues.every((t) => t instanceof Tensor))
      throw invalidArg('inputs.pixelValues', 'an array of Tensors (one [3, 14, n·14] strip per slice)', inputs.pixelValues);
    ins.pixelValues = inputs.pixelValues.map((t) => t.handle);
  }
  return ins;
}

/** The native config of a MiniCPM-o config.json object; what this implementation does not compute is an error. */
function nativeConfig(top: Record<string, unknown>, file: string): NativeMiniCPMOConfig {
  const r = new ConfigReader(top, file);
  r.check(String(top.model_type ?? 'minicpmo') === 'minicpmo', `field 'model_type' must be 'minicpmo', found ${JSON.stringify(top.model_type)}`);
  const native: NativeMiniCPMOConfig = { llm: qwenConfig(top, file, { rope1d: true }) };
  r.check(top.scale_emb === undefined, "field 'scale_emb': embedding scaling (MiniCPM's own LLM) is not supported; MiniCPM-o 2.6 uses Qwen2");
  if (top.init_vision !== false) {
    const v = r.nested('vision_config');
    if (!v) throw new X2IError(`${file}: field 'vision_config' is missing (or set init_vision false)`, 'ERR_CONFIG');
    const act = String(v.raw('hidden_act') ?? 'gelu_pytorch_tanh');
    r.check(act === 'gelu_pytorch_tanh', `${v.name('hidden_act')} must be 'gelu_pytorch_tanh' (SigLIP), found ${JSON.stringify(act)}`);
    const layers = v.layers('num_hidden_layers') - (r.bool('drop_vision_last_layer', false) ? 1 : 0);
    r.check(layers >= 1, "drop_vision_last_layer leaves no vision layer");
    const hidden = v.int('hidden_size'), heads = v.int('num_attention_heads');
    r.check(hidden % heads === 0, `${v.name('hidden_size')} (${hidden}) must be a multiple of ${v.name('num_attention_heads')} (${heads})`);
    const patch = v.int('patch_size', { fallback: 14, max: 1024 });
    native.vision = { hiddenSize: hidden, numHiddenLayers: layers, numAttentionHeads: heads, intermediateSize: v.int('intermediate_size'),
      imageSize: v.int('image_size'), patchSize: patch, numChannels: v.int('num_channels', { fallback: 3, max: 64 }),
      layerNormEps: v.eps('layer_norm_eps', 1e-6) };
    native.queryNum = r.int('query_num', { fallback: 64 });
  }
  if (top.init_audio !== false) {
    const a = r.nested('audio_config');
    if (!a) throw new X2IError(`${file}: field 'audio_config' is missing (or set init_audio false)`, 'ERR_CONFIG');
    const act = String(a.raw('activation_function') ?? 'gelu');
    r.check(act === 'gelu', `${a.name('activation_function')} must be 'gelu' (Whisper), found ${JSON.stringify(act)}`);
    r.check(a.raw('scale_embedding') !== true, `${a.name('scale_embedding')}: Whisper's embedding scaling is not supported`);
    const d = a.int('d_model'), heads = a.int('encoder_attention_heads'), ffn = a.int('encoder_ffn_dim');
    r.check(d % heads === 0, `${a.name('d_model')} (${d}) must be a multiple of ${a.name('encoder_attention_heads')} (${heads})`);
    r.check(ffn % 4 === 0 && ffn / 4 === d, `${a.name('encoder_ffn_dim')} / 4 (${ffn / 4}) must equal ${a.name('d_model')} (${d}): the audio projection reads that width`);
    native.audio = { dModel: d, encoderLayers: a.layers('encoder_layers'), encoderAttentionHeads: heads, encoderFfnDim: ffn,
      numMelBins: a.int('num_mel_bins', { fallback: 80, max: 1024 }), maxSourcePositions: a.int('max_source_positions', { fallback: 1500 }) };
    native.audioPoolStep = r.int('audio_pool_step', { fallback: 2, max: 64 });
    native.audioChunkLength = r.num('audio_chunk_length', { fallback: 1.0 });
  }
  return native;
}

// ---------------------------------------------------------------- the processor's pieces
/** Audio tokens of F mel frames: after the stride-2 conv, then pooling. */
function pooledTokens(frames: number, pool: number): number {
  const cnn = Math.floor((frames - 1) / 2) + 1;
  return Math.floor((cnn - pool) / pool) + 1;
}

/** `<|audio_start|>` + `<unk>` × k + `<|audio_end|>` per chunk (chunk_length seconds → 25 tokens per second). */
function audioPlaceholder(tokens: number, pool: number, chunkLength: number): string {
  const perChunk = pooledTokens(Math.trunc(chunkLength * 100), pool);
  let out = '';
  for (let done = 0; done < tokens; done += perChunk) out += `<|audio_start|>${'<unk>'.repeat(Math.min(perChunk, tokens - done))}<|audio_end|>`;
  return out;
}

const ensureDivide = (length: number, patch: number) => Math.max(roundHalfEven(length / patch) * patch, patch);

/** MiniCPM-V's find_best_resize: about scale² pixels at the image's aspect (always, when upscaling is allowed), sides
 * multiples of the patch (Python's int() and round()). */
function bestResize(w: number, h: number, scale: number, patch: number, upscale: boolean): [number, number] {
  if (w * h > scale * scale || upscale) {
    const r = w / h;
    h = Math.trunc(scale / Math.sqrt(r));
    w = Math.trunc(h * r);
  }
  return [ensureDivide(w, patch), ensureDivide(h, patch)];
}

/** MiniCPM-V's get_sliced_grid: none when the image is small enough or maxSlices is 1, else the grid nearest the
 * aspect among the divisors of multiple − 1, multiple, multiple + 1. */
function slicedGrid(w: number, h: number, maxSlices: number, scale: number): [number, number] | null {
  const logRatio = Math.log(w / h), multiple = Math.min(Math.ceil((w * h) / (scale * scale)), maxSlices);
  if (multiple <= 1) return null;
  let best: [number, number] = [1, 1], minErr = Infinity;
  for (const n of [multiple - 1, multiple, multiple + 1]) {
    if (n === 1 || n > maxSlices) continue;
    for (let m = 1; m <= n; m++) {
      if (n % m) continue;
      const err = Math.abs(logRatio - Math.log(m / (n / m)));
      if (err < minErr) best = [m, n / m], minErr = err;
    }
  }
  return best;
}

/** One normalised slice as the processor's patch strip [3, patch, n·patch] (reshape_by_patch: patches row-major). */
function strip(rgb: Uint8Array, W: number, x0: number, y0: number, w: number, h: number, patch: number, mean: number[], std: number[]) {
  const gh = h / patch, gw = w / patch, n = gh * gw;
  const out = new Float32Array(3 * patch * n * patch);
  for (let c = 0; c < 3; c++)
    for (let py = 0; py < gh; py++)
      for (let px = 0; px < gw; px++)
        for (let y = 0; y < patch; y++)
          for (let x = 0; x < patch; x++) {
            const v = rgb[((y0 + py * patch + y) * W + x0 + px * patch + x) * 3 + c] / 255;
            out[(c * patch + y) * n * patch + (py * gw + px) * patch + x] = (v - mean[c]) / std[c];
          }
  return { strip: Tensor.fromArray(out, [3, patch, n * patch]), h: gh, w: gw };
}

async function sliceImage(img: RgbImage, maxSlices: number, pc: MiniCPMOEncoder['processorConfig']) {
  const rgb = rgbPixels(img);
  const { scaleResolution: S, patchSize: P, mean, std } = pc;
  const W0 = img.width, H0 = img.height;
  const grid = slicedGrid(W0, H0, maxSlices, S);
  const [sw, sh] = bestResize(W0, H0, S, P, grid === null);
  const slices = [strip(await resizeRgb(rgb, W0, H0, sw, sh, 'pil'), sw, 0, 0, sw, sh, P, mean, std)];
  if (grid) {  // get_refine_size, then the grid's cells row by row
    const [gx, gy] = grid;
    const [cw, ch] = bestResize(ensureDivide(W0, gx) / gx, ensureDivide(H0, gy) / gy, S, P, true);
    const refined = await resizeRgb(rgb, W0, H0, cw * gx, ch * gy, 'pil');
    for (let i = 0; i < gy; i++) for (let j = 0; j < gx; j++) slices.push(strip(refined, cw * gx, j * cw, i * ch, cw, ch, P, mean, std));
  }
  return {
    slices,
    placeholder: (q: number) => {
      const one = (open: string, close: string) => `${open}${'<unk>'.repeat(q)}${close}`;
      let ph = one('<image>', '</image>');
      if (grid) ph += Array.from({ length: grid[1] }, () => one('<slice>', '</slice>').repeat(grid[0])).join('\n');
      return ph;
    },
  };
}
