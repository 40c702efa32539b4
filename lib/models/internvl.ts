/**
 * x2i.InternVLEncoder: InternVL2.5 (1B / 4B) as an X2I student (native/models/internvl.cc): InternViT, pixel
 * shuffle, the MLP projector and the Qwen2.5 language model, one pass with every layer's state kept.
 */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg } from '../core/errors.js';
import { addon } from '../core/native.js';
import type { NativeInternVLConfig, NativeInternVLEncoder, NativeInternVLInputs } from '../core/addon.js';
import { ConfigReader } from '../core/config.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { Tensor } from '../core/tensor.js';
import { loadNative, loadOptions, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { nativeConfig as qwenConfig } from './qwen.js';
import { InternVLTokenizer, type EncodeOptions } from './tokenizers.js';
import { preprocessInternVL, type InternVLVisionOptions } from './internvl_vision.js';
import type { RgbImage } from './qwen_vision.js';

/** What `encodePrompt` takes: text in any language and/or images. */
export interface InternVLPrompt {
  text?: string;
  images?: RgbImage[];
  /** X2I's 'Instruction editing description' (default 'no'). */
  instruction?: string;
}

export interface InternVLInputs {
  /** [B, S] int64, the prompt with `<IMG_CONTEXT>` × tokens-per-tile × tiles per image. */
  inputIds: Tensor;
  /** [B, S], 1 for tokens, 0 for padding (X2I pads on the right to 512; pads take positions S.., as X2I runs it). */
  attentionMask?: Tensor;
  /** [tiles, 3, s, s], normalised (ImageNet mean/std), every image's tiles (thumbnail last) one after another. */
  pixelValues?: Tensor;
  /** true (default): every layer's state [B, L+1, S, H]; false: only the last, [B, 1, S, H]. */
  capture?: boolean;
}

/** InternVL's `<IMG_CONTEXT>` id in the released tokenizers (X2I hard-codes it). */
export const INTERNVL_IMG_CONTEXT_ID = 151667;

export class InternVLEncoder extends NativeModel<NativeInternVLEncoder> {
  readonly config: Readonly<Record<string, unknown>>;

  #folder: string | null;
  #tokenizer?: InternVLTokenizer;

  private constructor(h: NativeInternVLEncoder, config: Record<string, unknown>, folder: string | null) {
    super(h, 'InternVLEncoder');
    this.config = Object.freeze(config);
    this.#folder = folder;
  }

  /** The tile size s (force_image_size, else vision_config.image_size) and the tokens one tile becomes. */
  get tileSize(): number {
    const v = this.config.vision_config as Record<string, number>;
    return (this.config.force_image_size as number | null | undefined) ?? v.image_size;
  }
  get tokensPerTile(): number {
    const v = this.config.vision_config as Record<string, number>;
    const r = (this.config.downsample_ratio as number | undefined) ?? 0.5;
    return Math.round((this.tileSize / (v.patch_size ?? 14) * r) ** 2);
  }

  /**
   * Prompt in, AlignNet input out, as X2I runs InternVL: images resized to X2I's 128×128 (scaled to the tile size;
   * `preResize: null` keeps them) and tiled (`preprocessInternVL`), X2I's prompt (`InternVLTokenizer.prompt`),
   * right-padded to `maxLength` (512), one forward. The tokenizer: `opts.tokenizer`, else the model folder's.
   */
  async encodePrompt(prompt: string | InternVLPrompt, opts: EncodeOptions & Omit<InternVLVisionOptions, 'preResize' | 'imageSize'> & {
    preResize?: [number, number] | null; tokenizer?: InternVLTokenizer } = {}): Promise<{ hiddenStates: Tensor; attentionMask: Tensor }> {
    const p: InternVLPrompt = typeof prompt === 'string' ? { text: prompt } : prompt;
    if (!p || (p.text === undefined && !p.images?.length)) throw invalidArg('prompt', 'a string or { text?, images?, instruction? }', prompt);
    if (!opts.tokenizer && !this.#folder)
      throw new X2IError('InternVLEncoder.encodePrompt: a model from fromConfig has no tokenizer; pass opts.tokenizer', 'ERR_INVALID_ARG');
    const tok = opts.tokenizer ?? (this.#tokenizer ??= InternVLTokenizer.fromPretrained(this.#folder!));
    const s = this.tileSize, x2iSide = Math.round(128 * s / 448);
    const img = p.images?.length ? await preprocessInternVL(p.images, { ...opts, imageSize: s,
      preResize: opts.preResize === null ? undefined : opts.preResize ?? [x2iSide, x2iSide] }) : undefined;
    const text = tok.prompt(p.text ?? '', { instruction: p.instruction, imageTiles: img?.tiles, tokensPerTile: this.tokensPerTile });
    const { inputIds, attentionMask } = tok.encode(text, { maxLength: opts.maxLength ?? 512, padding: opts.padding });
    try {
      const r = await this.forward({ inputIds, attentionMask, pixelValues: img?.pixelValues });
      return { hiddenStates: r.hiddenStates, attentionMask };
    } finally {
      inputIds.dispose();
      img?.pixelValues.dispose();
    }
  }

  /**
   * An InternVL2.5 folder in the released layout: config.json (`InternVLChatConfig`: `vision_config`
   * (InternViT, layer norm, qkv bias, no qk-norm), `llm_config` (Qwen2), `downsample_ratio`, `ps_version` v2,
   * `select_layer` −1) and safetensors (`vision_model.*`, `mlp1.*`, `language_model.*`). The `<IMG_CONTEXT>` id
   * comes from the folder's tokenizer (tokenizer.json, also under tokenizer/), else 151667.
   */
  static async fromPretrained(p: string, opts: PretrainedOptions & { imgContextTokenId?: number } = {}): Promise<InternVLEncoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const { config: top, configFile: file, weights } = readModelFolder(p, opts.config, opts);
    const dir = fs.statSync(weights).isDirectory() ? weights : path.dirname(weights);
    const native = nativeConfig(top, file, opts.imgContextTokenId ?? imgContextId(dir));
    const Native = addon().NativeInternVLEncoder;
    const h = await loadNative(weights, loadOptions(opts), (w) => Native.load(native, w, weights));
    return new InternVLEncoder(h, top, dir);
  }

  /** A model of an InternVL2.5 config.json object with random weights (the loaders' RandomInit, from `seed`). */
  static async fromConfig(config: Record<string, unknown>, opts: RandomOptions & { imgContextTokenId?: number } = {}): Promise<InternVLEncoder> {
    if (!config || typeof config !== 'object') throw invalidArg('config', 'an InternVL2.5 config object', config);
    const native = nativeConfig(config, 'config', opts.imgContextTokenId ?? INTERNVL_IMG_CONTEXT_ID);
    return new InternVLEncoder(await randomNative(addon().NativeInternVLEncoder, native, opts), config, null);
  }

  /** X2I's InternVL forward: the image features replace the `<IMG_CONTEXT>` rows, then one pass of the language
   * model: hiddenStates [B, L+1, S, H] (the embeddings, each layer, the last after the final RMSNorm). */
  async forward(inputs: InternVLInputs): Promise<{ hiddenStates: Tensor }> {
    if (!inputs || !(inputs.inputIds instanceof Tensor)) throw invalidArg('inputs.inputIds', 'a Tensor', inputs?.inputIds);
    requireNonEmpty('inputs.inputIds', inputs.inputIds, 'batch or sequence');
    const ins: NativeInternVLInputs = { inputIds: inputs.inputIds.handle, capture: inputs.capture ?? true };
    for (const k of ['attentionMask', 'pixelValues'] as const) {
      const t = inputs[k];
      if (t === undefined || t === null) continue;
      if (!(t instanceof Tensor)) throw invalidArg(`inputs.${k}`, 'a Tensor', t);
      requireNonEmpty(`inputs.${k}`, t);
      ins[k] = t.handle;
    }
    const r = await this.call((h) => h.forward(ins));
    return { hiddenStates: new Tensor(r.hiddenStates) };
  }

  /** The image features of tiles [tiles, 3, s, s]: [tiles, (s/14 · ratio)², H] (InternViT, pixel shuffle, mlp1). */
  async encodeImages(pixelValues: Tensor): Promise<Tensor> {
    if (!(pixelValues instanceof Tensor)) throw invalidArg('pixelValues', 'a Tensor [tiles, 3, s, s]', pixelValues);
    requireNonEmpty('pixelValues', pixelValues);
    const r = await this.call((h) => h.forward({ pixelValues: pixelValues.handle, embedsOnly: true }));
    return new Tensor(r.hiddenStates);
  }
}

/** `<IMG_CONTEXT>`'s id in the folder's tokenizer.json (or tokenizer/tokenizer.json), else the released id. */
function imgContextId(dir: string): number {
  for (const f of [path.join(dir, 'tokenizer.json'), path.join(dir, 'tokenizer', 'tokenizer.json')]) {
    if (!fs.existsSync(f)) continue;
    let t: { added_tokens?: { id?: unknown; content?: unknown }[] };
    try {
      t = JSON.parse(fs.readFileSync(f, 'utf8'));
    } catch (e) {
      throw new X2IError(`${f}: not valid JSON (${(e as Error).message})`, 'ERR_CONFIG');
    }
    const hit = Array.isArray(t?.added_tokens) ? t.added_tokens.find((a) => a?.content === '<IMG_CONTEXT>') : undefined;
    if (hit && Number.isSafeInteger(hit.id) && (hit.id as number) >= 0) return hit.id as number;
  }
  return INTERNVL_IMG_CONTEXT_ID;
}

/** The native config of an InternVL2.5 config.json object; what this implementation does not compute is an error. */
function nativeConfig(top: Record<string, unknown>, file: string, imgContextTokenId: number): NativeInternVLConfig {
  const r = new ConfigReader(top, file);
  const vr = r.nested('vision_config'), lr = r.nested('llm_config');
  if (!vr || !lr) throw new X2IError(`${file}: an InternVL config needs 'vision_config' and 'llm_config'`, 'ERR_CONFIG');
  const arch = lr.raw('architectures');
  r.check(!Array.isArray(arch) || arch.some((a) => /^Qwen2/.test(String(a))),
    `${lr.name('architectures')}: ${JSON.stringify(arch)} — only Qwen2 / Qwen2.5 language models (InternVL2.5 1B, 4B) are supported`);
  const str = (h: ConfigReader, k: string, fallback: string) => String(h.raw(k) ?? fallback);
  r.check(str(r, 'ps_version', 'v2') === 'v2', `field 'ps_version' must be 'v2' (InternVL2.5), found ${JSON.stringify(r.raw('ps_version'))}`);
  r.check(r.int('select_layer', { fallback: -1, min: -1000 }) === -1, "field 'select_layer' must be -1 (the ViT's last layer)");
  r.check(str(vr, 'norm_type', 'layer_norm') === 'layer_norm', `${vr.name('norm_type')} must be 'layer_norm' (InternViT-300M), found ${JSON.stringify(vr.raw('norm_type'))}`);
  r.check(vr.raw('qk_normalization') !== true, `${vr.name('qk_normalization')}: qk normalisation (InternViT-6B) is not supported`);
  r.check(vr.raw('qkv_bias') !== false, `${vr.name('qkv_bias')} must be true (InternViT-300M)`);
  r.check(str(vr, 'hidden_act', 'gelu') === 'gelu', `${vr.name('hidden_act')} must be 'gelu', found ${JSON.stringify(vr.raw('hidden_act'))}`);
  const ratio = r.num('downsample_ratio', { fallback: 0.5, positive: true });
  const inv = 1 / ratio;
  r.check(Math.abs(inv - Math.round(inv)) < 1e-9, `field 'downsample_ratio' must be 1/k for an integer k, found ${ratio}`);
  const patch = vr.int('patch_size', { fallback: 14, max: 1024 });
  const imageSize = vr.int('image_size');  // the position table's (tiles of another size are interpolated onto it)
  const tile = r.has('force_image_size') && r.raw('force_image_size') !== null ? r.int('force_image_size') : imageSize;
  for (const [k, v] of [['force_image_size', tile], ['vision_config.image_size', imageSize]] as const)
    r.check(v % patch === 0 && (v / patch) % Math.round(inv) === 0,
      `field '${k}' (${v}) must be a multiple of patch_size × 1/downsample_ratio (${patch * Math.round(inv)})`);
  const hidden = vr.int('hidden_size'), heads = vr.int('num_attention_heads');
  r.check(hidden % heads === 0, `${vr.name('hidden_size')} (${hidden}) must be a multiple of ${vr.name('num_attention_heads')} (${heads})`);
  return {
    vision: { hiddenSize: hidden, numHiddenLayers: vr.layers('num_hidden_layers'), numAttentionHeads: heads,
      intermediateSize: vr.int('intermediate_size'), imageSize, patchSize: patch, numChannels: vr.int('num_channels', { fallback: 3, max: 64 }),
      layerNormEps: vr.eps('layer_norm_eps', 1e-6) },
    llm: qwenConfig(top.llm_config as Record<string, unknown>, `${file} (llm_config)`, { rope1d: true }),
    downsampleRatio: ratio,
    imgContextTokenId,
  };
}
