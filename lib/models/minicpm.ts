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
import { defaultDtype, loadNative, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { nativeConfig as qwenConfig } from './qwen.js';

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

  private constructor(h: NativeMiniCPMOEncoder, config: Record<string, unknown>) {
    super(h, 'MiniCPMOEncoder');
    this.config = Object.freeze(config);
  }

  /** A MiniCPM-o 2.6 folder in the released layout: config.json (`MiniCPMOConfig`: flat Qwen2 fields,
   * `vision_config`, `audio_config`, `query_num`, ...) and (sharded) safetensors (`llm.`, `vpm.`, `resampler.`,
   * `apm.`, `audio_projection_layer.`; `tts.` is not read). */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<MiniCPMOEncoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const { config: top, configFile: file, weights } = readModelFolder(p, opts.config);
    const native = nativeConfig(top, file);
    const Native = addon().NativeMiniCPMOEncoder;
    const h = await loadNative(weights, defaultDtype(opts), (w) => Native.load(native, w, weights));
    return new MiniCPMOEncoder(h, top);
  }

  /** A model of a MiniCPM-o config.json object with random weights (the loaders' RandomInit, from `seed`). */
  static async fromConfig(config: Record<string, unknown>, opts: RandomOptions = {}): Promise<MiniCPMOEncoder> {
    if (!config || typeof config !== 'object') throw invalidArg('config', 'a MiniCPM-o config object', config);
    return new MiniCPMOEncoder(await randomNative(addon().NativeMiniCPMOEncoder, nativeConfig(config, 'config'), opts), config);
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
