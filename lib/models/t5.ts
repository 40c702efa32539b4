/** x2i.T5Encoder: the T5 v1.1 encoder, FLUX's text_encoder_2 (native/models/t5.cc). */
import { X2IError, invalidArg } from '../core/errors.js';
import { addon } from '../core/native.js';
import type { NativeT5Encoder, NativeT5Config, NativeTensor } from '../core/addon.js';
import { ConfigReader } from '../core/config.js';
import { folderOf, loadNative, loadOptions, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { Tensor } from '../core/tensor.js';
import { T5Tokenizer, type EncodeOptions, type PromptTokenizer } from './tokenizers.js';
import fs from 'node:fs';
import path from 'node:path';


/** The native loader's config from a transformers T5 config.json. */
function nativeConfig(config: Record<string, unknown>, configFile: string): NativeT5Config {
  if (config.model_type !== undefined && config.model_type !== 't5' && config.model_type !== 'umt5')
    throw new X2IError(`${configFile}: model_type '${config.model_type}' is not a T5 model`, 'ERR_CONFIG');
  const proj = String(config.feed_forward_proj ?? 'relu');
  const gated = proj.startsWith('gated-');
  const base = proj.replace(/^gated-/, '');
  // transformers maps 'gated-gelu' to gelu_new (tanh approximation), whatever dense_act_fn says
  const act = gated && base === 'gelu' ? 'gelu_new' : String(config.dense_act_fn ?? base);
  const r = new ConfigReader(config, configFile);
  const buckets = r.int('relative_attention_num_buckets', { fallback: 32, min: 4 });
  r.check(buckets % 2 === 0, `field 'relative_attention_num_buckets' must be even (half of the buckets per direction), found ${buckets}`);
  const maxDistance = r.int('relative_attention_max_distance', { fallback: 128 });
  r.check(maxDistance > buckets / 4, `field 'relative_attention_max_distance' must be more than relative_attention_num_buckets / 4 ` +
    `(${buckets / 4}), found ${maxDistance}`);
  return {
    vocabSize: r.int('vocab_size'), dModel: r.int('d_model'), dKv: r.int('d_kv'), dFf: r.int('d_ff'),
    numLayers: r.layers('num_layers'), numHeads: r.int('num_heads'),
    relativeAttentionNumBuckets: buckets, relativeAttentionMaxDistance: maxDistance,
    layerNormEpsilon: r.eps('layer_norm_epsilon', 1e-6), gated, act,
  };
}

export class T5Encoder extends NativeModel<NativeT5Encoder> {
  readonly config: Readonly<Record<string, unknown>>;

  #folder: string;
  #tokenizer?: PromptTokenizer;

  private constructor(h: NativeT5Encoder, config: Record<string, unknown>, folder: string) {
    super(h, 'T5Encoder');
    this.config = Object.freeze(config);
    this.#folder = folderOf(folder);
  }

  /**
   * Tokenizes (`</s>`, padding with 0 to 512 as FLUX does) and encodes. The tokenizer: `opts.tokenizer`, else the
   * model folder's tokenizer.json, else FLUX's sibling `tokenizer_2/`.
   */
  async encodePrompt(text: string | string[], opts: EncodeOptions & { tokenizer?: PromptTokenizer } = {}): Promise<{ lastHiddenState: Tensor; hiddenStates: Tensor }> {
    if (Array.isArray(text) ? text.length === 0 || !text.every((t) => typeof t === 'string') : typeof text !== 'string')
      throw invalidArg('text', 'a string or a non-empty array of strings', text);
    const tok = opts.tokenizer ?? (this.#tokenizer ??= T5Tokenizer.fromPretrained(
      [path.join(this.#folder, 'tokenizer.json'), path.join(this.#folder, '..', 'tokenizer_2')].find((p) => fs.existsSync(p)) ??
      path.join(this.#folder, 'tokenizer.json')));
    const { inputIds, attentionMask } = tok.encode(text, { maxLength: opts.maxLength ?? 512, padding: opts.padding });
    try {
      return await this.forward({ inputIds });  // FLUX passes no mask
    } finally {
      inputIds.dispose();
      attentionMask.dispose();
    }
  }

  /** A transformers T5 folder (`config.json` + `model.safetensors`, sharded or not), e.g. FLUX's `text_encoder_2/`. */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<T5Encoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const { config, configFile, weights } = readModelFolder(p, opts.config, opts);
    const native = nativeConfig(config, configFile);
    const Native = addon().NativeT5Encoder;
    const h = await loadNative(weights, loadOptions(opts), (w) => Native.load(native, w, weights));
    return new T5Encoder(h, config, weights);
  }

  /**
   * A model of the given config (a transformers T5 `config.json` object, e.g. T5-XXL's) with random weights drawn
   * on the device: benchmarks and tests at real sizes without a checkpoint. No tokenizer comes with it
   * (`encodePrompt` needs `opts.tokenizer`; `forward` takes ids).
   */
  static async fromConfig(config: Record<string, unknown>, opts: RandomOptions = {}): Promise<T5Encoder> {
    if (!config || typeof config !== 'object') throw invalidArg('config', 'a T5 config object', config);
    return new T5Encoder(await randomNative(addon().NativeT5Encoder, nativeConfig(config, 'config'), opts), config, '.');
  }

  /** inputIds [B, S] (int64; FLUX pads with 0 to 512 and passes no mask) → lastHiddenState [B, S, d] (after the final
   * norm) and hiddenStates [B, L+1, S, d] (embeddings, every layer; the last after the final norm). */
  async forward(inputs: { inputIds: Tensor; attentionMask?: Tensor }): Promise<{ lastHiddenState: Tensor; hiddenStates: Tensor }> {
    if (!inputs || !(inputs.inputIds instanceof Tensor)) throw invalidArg('inputs.inputIds', 'a Tensor', inputs?.inputIds);
    requireNonEmpty('inputs.inputIds', inputs.inputIds, 'batch or sequence');
    if (inputs.attentionMask !== undefined && inputs.attentionMask !== null) {
      if (!(inputs.attentionMask instanceof Tensor)) throw invalidArg('inputs.attentionMask', 'a Tensor', inputs.attentionMask);
      requireNonEmpty('inputs.attentionMask', inputs.attentionMask, 'batch or sequence');
    }
    this.native();  // a DisposedError before any work
    const ins = { inputIds: inputs.inputIds.handle, ...(inputs.attentionMask ? { attentionMask: inputs.attentionMask.handle } : {}) };
    const r = await this.call((h) => h.forward(ins));
    return { lastHiddenState: new Tensor(r.lastHiddenState), hiddenStates: new Tensor(r.hiddenStates) };
  }

}
