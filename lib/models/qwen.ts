/** x2i.QwenVLEncoder: Qwen2.5-VL's language model as X2I's multimodal encoder (native/models/qwen.cc). */
import { X2IError, invalidArg, nativeSync } from '../core/errors.js';
import { addon } from '../core/native.js';
import type { NativeQwenConfig, NativeQwenInputs, NativeQwenVLEncoder } from '../core/addon.js';
import { ConfigReader, requireMultiple } from '../core/config.js';
import { field, folderOf, loadNative, loadOptions, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { Tensor } from '../core/tensor.js';
import { QwenTokenizer, type ChatMessage, type EncodeOptions } from './tokenizers.js';
import { preprocessImages, preprocessVideo, type QwenVisionOptions, type RgbImage } from './qwen_vision.js';
import fs from 'node:fs';
import path from 'node:path';

/** What `encodePrompt` takes: text in any language, images, a video (decoded frames), or a mix. */
export interface QwenPrompt {
  text?: string;
  images?: RgbImage[];
  /** Decoded, already sampled frames of one video. */
  video?: RgbImage[];
}

export interface QwenVLInputs {
  /** [B, S] int64 (left-padded with <|endoftext|> as X2I's training does). */
  inputIds: Tensor;
  /** [B, S], 1 for tokens, 0 for padding. */
  attentionMask?: Tensor;
  /** Image patches [Σ t·h·w, C·T·14·14] in the processor's order, with imageGridThw [n, 3] (t, h, w per image);
   * their merged features replace the `<|image_pad|>` tokens (t·h·w/4 per image), in order. */
  pixelValues?: Tensor;
  imageGridThw?: Tensor;
  /** The same for videos (`<|video_pad|>`). */
  pixelValuesVideos?: Tensor;
  videoGridThw?: Tensor;
  /** Videos: seconds per temporal patch (temporal_patch_size / fps; default 1). */
  secondPerGridT?: number;
  /** 'mrope' (default): image/video tokens take (t, h, w) position ids as Qwen2.5-VL was trained (get_rope_index);
   * 'sequential': every token its index, as transformers 5 does when it is not given `mm_token_type_ids`. */
  positions?: 'mrope' | 'sequential';
  /** 'x2i' (default): pad rows attend to every key, as in the official X2I training (transformers 4.49, SDPA
   * on CUDA), which is what official AlignNet checkpoints saw; 'mask': a pad row that sees no key gets a zero
   * attention output (transformers 5 with PyTorch's SDPA). Real-token rows are the same in both. */
  padRule?: 'x2i' | 'mask';
  /** true (default): every layer's hidden state ([B, L+1, S, H], AlignNet's input); false: only the last
   * one after the final norm, [B, 1, S, H]. */
  capture?: boolean;
}


export class QwenVLEncoder extends NativeModel<NativeQwenVLEncoder> {
  readonly config: Readonly<Record<string, unknown>>;

  #folder: string;
  #tokenizer?: QwenTokenizer;

  private constructor(h: NativeQwenVLEncoder, config: Record<string, unknown>, folder: string) {
    super(h, 'QwenVLEncoder');
    this.config = Object.freeze(config);
    this.#folder = folderOf(folder);
  }

  /**
   * Prompt in, AlignNet input out: builds the messages (text-only prompts in X2I's training template
   * `{'Text input': …}` unless `template: 'chat'`; images and video go first, then the text, as X2I's
   * inference does), preprocesses the pixels, tokenizes with the image/video placeholders expanded, left-pads
   * to `maxLength` (512) and runs the prefill. The tokenizer: `opts.tokenizer`, else the model folder's.
   */
  async encodePrompt(prompt: string | QwenPrompt, opts: EncodeOptions & QwenVisionOptions & { tokenizer?: QwenTokenizer;
    template?: 'x2i' | 'chat' } = {}): Promise<{ hiddenStates: Tensor; attentionMask: Tensor }> {
    const p: QwenPrompt = typeof prompt === 'string' ? { text: prompt } : prompt;
    if (!p || (p.text === undefined && !p.images?.length && !p.video?.length))
      throw invalidArg('prompt', 'a string or { text?, images?, video? }', prompt);
    const tok = opts.tokenizer ?? (this.#tokenizer ??= QwenTokenizer.fromPretrained(
      fs.existsSync(path.join(this.#folder, 'tokenizer.json')) ? this.#folder : path.join(this.#folder, 'tokenizer.json')));
    const vision = !!(p.images?.length || p.video?.length);
    let text: string;
    if (!vision && (opts.template ?? 'x2i') === 'x2i') {
      text = tok.x2iPrompt(p.text ?? '');
    } else {
      const content: Exclude<ChatMessage['content'], string> = [];
      for (let i = 0; i < (p.images?.length ?? 0); i++) content.push({ type: 'image' });
      if (p.video?.length) content.push({ type: 'video' });
      if (p.text !== undefined) content.push({ type: 'text', text: p.text });
      text = tok.applyChatTemplate([{ role: 'user', content }]);
    }
    const img = p.images?.length ? await preprocessImages(p.images, opts) : undefined;
    const vid = p.video?.length ? await preprocessVideo(p.video, opts) : undefined;
    const { inputIds, attentionMask } = tok.encode(text, { maxLength: opts.maxLength ?? 512, padding: opts.padding,
      imageTokens: img ? [img.imageTokens] : undefined, videoTokens: vid ? [vid.videoTokens] : undefined });
    try {
      const r = await this.forward({ inputIds, attentionMask, pixelValues: img?.pixelValues, imageGridThw: img?.imageGridThw,
        pixelValuesVideos: vid?.pixelValues, videoGridThw: vid?.videoGridThw });
      return { hiddenStates: r.hiddenStates, attentionMask };
    } finally {
      inputIds.dispose();
      for (const t of [img?.pixelValues, img?.imageGridThw, vid?.pixelValues, vid?.videoGridThw]) t?.dispose();
    }
  }

  /** A Qwen2.5-VL folder: the released flat config.json (`rope_scaling.mrope_section`) or the transformers-5
   * nested one (`text_config`, `rope_parameters`); sharded safetensors; `model.layers.*` or
   * `model.language_model.*` names. */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<QwenVLEncoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const { config: top, configFile: file, weights } = readModelFolder(p, opts.config, opts);
    const native = nativeConfig(top, file);
    const Native = addon().NativeQwenVLEncoder;
    const h = await loadNative(weights, loadOptions(opts), (w) => Native.load(native, w, weights));
    return new QwenVLEncoder(h, top, weights);
  }

  /**
   * A model of the given config (a Qwen2.5-VL `config.json` object, flat or nested) with random weights
   * (the loaders' RandomInit: PyTorch's default Linear init, norms 1, biases 0, drawn on the device from `seed`): benchmarks and tests at real sizes
   * without a checkpoint. No tokenizer comes with it (`encodePrompt` needs `opts.tokenizer`).
   */
  static async fromConfig(config: Record<string, unknown>, opts: RandomOptions = {}): Promise<QwenVLEncoder> {
    if (!config || typeof config !== 'object') throw invalidArg('config', 'a Qwen2.5-VL config object', config);
    return new QwenVLEncoder(await randomNative(addon().NativeQwenVLEncoder, nativeConfig(config, 'config'), opts), config, '.');
  }

  /** One prefill: hiddenStates [B, L+1, S, H] = the embeddings, then every layer's output (the last after the
   * final RMSNorm), each written into its slot of one buffer as it is made: AlignNet's input. No lm_head.
   * `capture: false`: only the last state, [B, 1, S, H]. */
  async forward(inputs: QwenVLInputs): Promise<{ hiddenStates: Tensor }> {
    const r = await this.#run(inputs, {});
    return { hiddenStates: new Tensor(r.hiddenStates) };
  }

  async #run(inputs: QwenVLInputs, extra: Pick<NativeQwenInputs, 'maxNewTokens' | 'eosTokenIds'>) {
    if (!inputs || !(inputs.inputIds instanceof Tensor)) throw invalidArg('inputs.inputIds', 'a Tensor', inputs?.inputIds);
    requireNonEmpty('inputs.inputIds', inputs.inputIds, 'batch or sequence');
    this.native();  // a DisposedError before any work
    const ins: NativeQwenInputs = { inputIds: inputs.inputIds.handle, padRule: inputs.padRule ?? 'x2i',
      secondPerGridT: inputs.secondPerGridT, positions: inputs.positions ?? 'mrope', capture: inputs.capture ?? true, ...extra };
    for (const k of ['attentionMask', 'pixelValues', 'imageGridThw', 'pixelValuesVideos', 'videoGridThw'] as const) {
      const t = inputs[k];
      if (t === undefined || t === null) continue;
      if (!(t instanceof Tensor)) throw invalidArg(`inputs.${k}`, 'a Tensor', t);
      requireNonEmpty(`inputs.${k}`, t);
      ins[k] = t.handle;
    }
    return this.call((h) => h.forward(ins));
  }

  /**
   * X2I's answer mode (its `--use_answer` inference): the prefill, then greedy decoding of up to
   * `maxNewTokens` (default 128) tokens with the keys and values cached, stopping after an id in `eosTokenIds`
   * (default `<|im_end|>` 151645 and `<|endoftext|>` 151643). `answerStates` [1, L+1, n, H] are the states of
   * the generated tokens as they are fed back (all but the last: transformers' `hidden_states[1:]` of
   * `generate(output_hidden_states=True)`), laid out as AlignNet's input; `hiddenStates` the prompt's. Uses
   * the checkpoint's `lm_head` (or the tied embeddings). One prompt at a time.
   */
  async generate(inputs: QwenVLInputs, opts: { maxNewTokens?: number; eosTokenIds?: number[] } = {}): Promise<{
    tokens: number[]; answerStates: Tensor; hiddenStates: Tensor }> {
    const maxNewTokens = opts.maxNewTokens ?? 128;
    if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1) throw invalidArg('maxNewTokens', 'a positive integer', maxNewTokens);
    const eos = opts.eosTokenIds ?? [151645, 151643];
    if (!Array.isArray(eos) || !eos.every(Number.isSafeInteger)) throw invalidArg('eosTokenIds', 'an array of token ids', eos);
    const r = await this.#run(inputs, { maxNewTokens, eosTokenIds: eos });
    return { tokens: r.tokens ?? [], answerStates: new Tensor(r.answerStates!), hiddenStates: new Tensor(r.hiddenStates) };
  }

  /** The [3, B, S] M-RoPE position ids (temporal, height, width) of a prompt with image/video blocks, as
   * get_rope_index computes them; pads get 1. */
  ropeIndex(inputs: Pick<QwenVLInputs, 'inputIds' | 'attentionMask' | 'imageGridThw' | 'videoGridThw' | 'secondPerGridT'>): Tensor {
    if (!inputs || !(inputs.inputIds instanceof Tensor)) throw invalidArg('inputs.inputIds', 'a Tensor', inputs?.inputIds);
    requireNonEmpty('inputs.inputIds', inputs.inputIds, 'batch or sequence');
    const vc = (this.config.vision_config ?? {}) as Record<string, unknown>;
    const h = (t?: Tensor) => t?.handle;
    const native = addon();
    return new Tensor(nativeSync(() => native.qwenRopeIndex(inputs.inputIds.handle, h(inputs.attentionMask), h(inputs.imageGridThw), h(inputs.videoGridThw), {
      imageTokenId: field(this.config, 'image_token_id', 'config', 151655), videoTokenId: field(this.config, 'video_token_id', 'config', 151656),
      merge: field(vc, 'spatial_merge_size', 'vision_config', 2), tokensPerSecond: field(vc, 'tokens_per_second', 'vision_config', 2),
      secondPerGridT: inputs.secondPerGridT ?? 1 })));
  }

}

/** The native config of a Qwen2.5-VL config.json object (flat, or transformers 5's nested `text_config`); with
 * `rope1d`, of a plain Qwen2 / Qwen2.5 language model (1-D RoPE: every rotary channel on the token index, as
 * mrope_section [hd/2, 0, 0] computes it; the other students' language models). */
export function nativeConfig(top: Record<string, unknown>, file: string, opts: { rope1d?: boolean } = {}): NativeQwenConfig {
  if (!opts.rope1d && top.model_type !== undefined && !String(top.model_type).startsWith('qwen2'))
    throw new X2IError(`${file}: model_type '${top.model_type}' is not a Qwen2/2.5-VL model`, 'ERR_CONFIG');
  const text = { ...top, ...(top.text_config as Record<string, unknown> | undefined ?? {}) };
  // what this implementation computes: SwiGLU (silu) in both towers, full attention in every layer
  const act = String(text.hidden_act ?? 'silu');
  const vact = opts.rope1d ? 'silu' : String((top.vision_config as Record<string, unknown> | undefined)?.hidden_act ?? 'silu');
  if (act !== 'silu') throw new X2IError(`${file}: hidden_act '${act}' is not supported (Qwen2.5-VL: silu)`, 'ERR_CONFIG');
  if (vact !== 'silu') throw new X2IError(`${file}: vision_config.hidden_act '${vact}' is not supported (Qwen2.5-VL: silu)`, 'ERR_CONFIG');
  if (text.use_sliding_window === true)
    throw new X2IError(`${file}: use_sliding_window is not supported (Qwen2.5-VL uses full attention)`, 'ERR_CONFIG');
  const r = new ConfigReader(top, file);
  const tc = r.nested('text_config');
  // a text field lives in text_config (transformers 5) or at the top level (the released flat config)
  const tr = (k: string) => (tc?.has(k) ? tc : r);
  const ropeOwner = [[tc, 'rope_parameters'], [r, 'rope_parameters'], [tc, 'rope_scaling'], [r, 'rope_scaling']]
    .find(([h, k]) => (h as ConfigReader | undefined)?.has(k as string) && (h as ConfigReader).raw(k as string) !== null);
  const ropeHome = ropeOwner ? (ropeOwner[0] as ConfigReader).nested(ropeOwner[1] as string) : undefined;
  if (!opts.rope1d) {
    const s = ropeHome?.raw('mrope_section');
    if (!Array.isArray(s) || s.length !== 3)
      throw new X2IError(`${file}: field 'rope_scaling.mrope_section' (or text_config.rope_parameters.mrope_section) is missing`, 'ERR_CONFIG');
    ropeHome!.intList('mrope_section', { length: 3, min: 0 });
  } else if (ropeHome) {
    const kind = ropeHome.raw('rope_type') ?? ropeHome.raw('type');
    ropeHome.check(kind === undefined || kind === 'default', `${ropeHome.name('rope_type')}: only plain RoPE is supported, found ${JSON.stringify(kind)}`);
  }
  const hidden = tr('hidden_size').int('hidden_size'), heads = tr('num_attention_heads').int('num_attention_heads');
  const section: number[] = opts.rope1d ? [Math.floor(hidden / heads / 2), 0, 0] : ropeHome!.raw('mrope_section') as number[];
  const kvHeads = tr('num_key_value_heads').int('num_key_value_heads');
  requireMultiple(r, { key: tr('hidden_size').name('hidden_size'), value: hidden },
    { key: tr('num_attention_heads').name('num_attention_heads'), value: heads });
  requireMultiple(r, { key: tr('num_attention_heads').name('num_attention_heads'), value: heads },
    { key: tr('num_key_value_heads').name('num_key_value_heads'), value: kvHeads });
  const headDim = hidden / heads, sum = section.reduce((x: number, y: number) => x + y, 0);
  r.check(2 * sum === headDim, `${opts.rope1d ? 'the head dim' : ropeHome!.name('mrope_section')} [${section.join(', ')}] sums to ${sum}, expected half the ` +
    `head dim (hidden_size / num_attention_heads = ${headDim}): ${headDim / 2}`);
  const thetaHome = ropeHome?.has('rope_theta') ? ropeHome : tr('rope_theta');
  const native: NativeQwenConfig = {
    vocabSize: tr('vocab_size').int('vocab_size'), hiddenSize: hidden,
    intermediateSize: tr('intermediate_size').int('intermediate_size'), numHiddenLayers: tr('num_hidden_layers').layers('num_hidden_layers'),
    numAttentionHeads: heads, numKeyValueHeads: kvHeads,
    rmsNormEps: tr('rms_norm_eps').eps('rms_norm_eps'), ropeTheta: thetaHome.num('rope_theta', { positive: true }),
    mropeSection: section,
  };
  const vr = opts.rope1d ? undefined : r.nested('vision_config');  // (another student's vision config is its own)
  if (vr) {
    const vhidden = vr.int('hidden_size'), vheads = vr.int('num_heads');
    requireMultiple(vr, { key: vr.name('hidden_size'), value: vhidden }, { key: vr.name('num_heads'), value: vheads });
    vr.check((vhidden / vheads) % 4 === 0, `vision_config: the head dim (hidden_size / num_heads = ${vhidden / vheads}) must be a ` +
      'multiple of 4 (2-D rotary embedding)');
    const depth = vr.layers('depth');
    const patch = vr.int('patch_size', { fallback: 14, max: 1024 }), merge = vr.int('spatial_merge_size', { fallback: 2, max: 64 });
    const window = vr.int('window_size', { fallback: 112 });
    vr.check(window % (patch * merge) === 0, `field 'vision_config.window_size' (${window}) must be a multiple of ` +
      `patch_size × spatial_merge_size (${patch * merge})`);
    const outHidden = vr.int('out_hidden_size');
    vr.check(outHidden === hidden, `field 'vision_config.out_hidden_size' (${outHidden}) must equal the language model's ` +
      `hidden_size (${hidden})`);
    const inKey = vr.has('in_channels') ? 'in_channels' : 'in_chans';
    const full = vr.raw('fullatt_block_indexes');
    native.vision = {
      depth, hiddenSize: vhidden, numHeads: vheads, intermediateSize: vr.int('intermediate_size'),
      outHiddenSize: outHidden, patchSize: patch, spatialMergeSize: merge,
      temporalPatchSize: vr.int('temporal_patch_size', { fallback: 2, max: 1024 }), windowSize: window,
      inChannels: vr.int(inKey, { fallback: 3, max: 64 }),
      tokensPerSecond: vr.num('tokens_per_second', { fallback: 2, positive: true }),
      fullAttBlockIndexes: full === undefined || full === null ? [] : Array.isArray(full) && full.length === 0 ? []
        : vr.intList('fullatt_block_indexes', { min: 0, max: depth - 1 }),
      imageTokenId: r.int('image_token_id', { fallback: 151655, min: 0 }), videoTokenId: r.int('video_token_id', { fallback: 151656, min: 0 }),
      visionStartTokenId: r.int('vision_start_token_id', { fallback: 151652, min: 0 }),
    };
  }
  return native;
}
