/** x2i.ClipTextEncoder: CLIP's text tower, FLUX's text_encoder, with text_projection when the checkpoint is a whole
 * CLIPModel (native/models/clip.cc). */
import { X2IError, invalidArg } from '../core/errors.js';
import { addon } from '../core/native.js';
import type { NativeClipTextEncoder, NativeClipConfig, NativeTensor } from '../core/addon.js';
import { ConfigReader, requireMultiple } from '../core/config.js';
import { folderOf, loadNative, loadOptions, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { Tensor } from '../core/tensor.js';
import { ClipTokenizer, type EncodeOptions, type PromptTokenizer } from './tokenizers.js';
import fs from 'node:fs';
import path from 'node:path';


/** A full CLIP config's `text_config`, or the config itself (a CLIP text config). */
function textConfig(config: Record<string, unknown>, file: string): Record<string, unknown> {
  return new ConfigReader(config, file).nested('text_config')?.config ?? config;
}

/** What both CLIP towers' configs share: the activation, the reader, the width and the heads (checked to divide). */
export function clipTower(config: Record<string, unknown>, file: string): { act: 'quick_gelu' | 'gelu'; r: ConfigReader; hidden: number; heads: number } {
  const act = String(config.hidden_act ?? 'quick_gelu');
  if (act !== 'quick_gelu' && act !== 'gelu')
    throw new X2IError(`${file}: hidden_act '${act}' is not supported (quick_gelu, gelu)`, 'ERR_CONFIG');
  const r = new ConfigReader(config, file);
  const hidden = r.int('hidden_size'), heads = r.int('num_attention_heads');
  requireMultiple(r, { key: 'hidden_size', value: hidden }, { key: 'num_attention_heads', value: heads });
  return { act, r, hidden, heads };
}

/** The native loader's config from a CLIP text config. */
function nativeConfig(config: Record<string, unknown>, file: string): NativeClipConfig {
  const { act, r, hidden, heads } = clipTower(config, file);
  return {
    vocabSize: r.int('vocab_size'), hiddenSize: hidden, intermediateSize: r.int('intermediate_size'), numAttentionHeads: heads,
    numHiddenLayers: r.layers('num_hidden_layers'), maxPositionEmbeddings: r.int('max_position_embeddings', { fallback: 77 }),
    eosTokenId: r.int('eos_token_id', { fallback: 2, min: 0 }), layerNormEps: r.eps('layer_norm_eps', 1e-5), hiddenAct: act,
  };
}

export interface ClipTextOutput {
  lastHiddenState: Tensor;
  pooledOutput: Tensor;
  hiddenStates: Tensor;
  /** [B, D]: pooledOutput through text_projection (a whole CLIPModel checkpoint; CLIP score's text side). */
  textEmbeds?: Tensor;
}

export class ClipTextEncoder extends NativeModel<NativeClipTextEncoder> {
  readonly config: Readonly<Record<string, unknown>>;

  #folder: string;
  #tokenizer?: PromptTokenizer;

  private constructor(h: NativeClipTextEncoder, config: Record<string, unknown>, folder: string) {
    super(h, 'ClipTextEncoder');
    this.config = Object.freeze(config);
    this.#folder = folderOf(folder);
  }

  /** Tokenizes (BOS, EOS, padding with EOS to 77) and encodes. The tokenizer: `opts.tokenizer`, else the model
   * folder's, else FLUX's sibling `tokenizer/` (vocab.json + merges.txt is enough). */
  async encodePrompt(text: string | string[], opts: EncodeOptions & { tokenizer?: PromptTokenizer } = {}): Promise<ClipTextOutput> {
    if (Array.isArray(text) ? text.length === 0 || !text.every((t) => typeof t === 'string') : typeof text !== 'string')
      throw invalidArg('text', 'a string or a non-empty array of strings', text);
    const own = ['tokenizer.json', 'vocab.json'].some((f) => fs.existsSync(path.join(this.#folder, f)));
    const tok = opts.tokenizer ?? (this.#tokenizer ??= ClipTokenizer.fromPretrained(own ? this.#folder : path.join(this.#folder, '..', 'tokenizer')));
    const { inputIds, attentionMask } = tok.encode(text, { maxLength: opts.maxLength ?? 77, padding: opts.padding });
    try {
      return await this.forward({ inputIds });
    } finally {
      inputIds.dispose();
      attentionMask.dispose();
    }
  }

  /** A transformers CLIP text folder (`config.json` + weights, with or without the `text_model.` prefix; a full
   * CLIP config's `text_config` is used), e.g. FLUX's `text_encoder/`. */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<ClipTextEncoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const read = readModelFolder(p, opts.config, opts);
    const config = textConfig(read.config, read.configFile);
    const native = nativeConfig(config, read.configFile);
    const Native = addon().NativeClipTextEncoder;
    const h = await loadNative(read.weights, loadOptions(opts), (w) =>  // a whole CLIPModel's text_projection, its width from the tensor
      Native.load({ ...native, projectionDim: w['text_projection.weight']?.info().shape[0] }, w, read.weights));
    return new ClipTextEncoder(h, config, read.weights);
  }

  /** A model of the given config (a CLIP text `config.json` object, or a full CLIP config with `text_config`)
   * with random weights drawn on the device; no tokenizer comes with it (`forward` takes ids). */
  static async fromConfig(config: Record<string, unknown>, opts: RandomOptions = {}): Promise<ClipTextEncoder> {
    if (!config || typeof config !== 'object') throw invalidArg('config', 'a CLIP text config object', config);
    const c = textConfig(config, 'config');
    return new ClipTextEncoder(await randomNative(addon().NativeClipTextEncoder, nativeConfig(c, 'config'), opts), c, '.');
  }

  /** inputIds [B, S ≤ 77] → lastHiddenState (after the final LayerNorm), pooledOutput (at the first EOS) and
   * hiddenStates [B, L+1, S, H] (embeddings, every layer; the last before the final LayerNorm, as transformers). */
  async forward(inputs: { inputIds: Tensor }): Promise<ClipTextOutput> {
    if (!inputs || !(inputs.inputIds instanceof Tensor)) throw invalidArg('inputs.inputIds', 'a Tensor', inputs?.inputIds);
    requireNonEmpty('inputs.inputIds', inputs.inputIds, 'batch or sequence');
    this.native();  // a DisposedError before any work
    const ids = inputs.inputIds.handle;
    const r = await this.call((h) => h.forward({ inputIds: ids }));
    return { lastHiddenState: new Tensor(r.lastHiddenState), pooledOutput: new Tensor(r.pooledOutput), hiddenStates: new Tensor(r.hiddenStates),
      ...(r.textEmbeds ? { textEmbeds: new Tensor(r.textEmbeds) } : {}) };
  }

}
