/** x2i.QwenVLEncoder: Qwen2.5-VL's language model as X2I's multimodal encoder (native/qwen.cc). */
import { DisposedError, X2IError, invalidArg, nativeCall } from './errors.js';
import { addon, type NativeTensor } from './native.js';
import { defaultDtype, field, loadNative, readModelFolder, type PretrainedOptions } from './pretrained.js';
import { SerialQueue } from './queue.js';
import { Tensor } from './tensor.js';

interface NativeQwen {
  forward(inputs: { inputIds: NativeTensor; attentionMask?: NativeTensor; padRule?: string }): Promise<{ hiddenStates: NativeTensor }>;
  dispose(): void;
}

export interface QwenVLInputs {
  /** [B, S] int64 (left-padded with <|endoftext|> as X2I's training does). */
  inputIds: Tensor;
  /** [B, S], 1 for tokens, 0 for padding. */
  attentionMask?: Tensor;
  /** Images and videos: the vision tower is not implemented yet; passing them is an error. */
  pixelValues?: Tensor;
  imageGridThw?: Tensor;
  pixelValuesVideos?: Tensor;
  videoGridThw?: Tensor;
  /** 'x2i' (default): pad rows attend to every key, as in the official X2I training (transformers 4.49, SDPA
   * on CUDA), which is what official AlignNet checkpoints saw; 'mask': a pad row that sees no key gets a zero
   * attention output (transformers 5 with PyTorch's SDPA). Real-token rows are the same in both. */
  padRule?: 'x2i' | 'mask';
}

const disposeSymbol: typeof Symbol.dispose = Symbol.dispose ?? Symbol.for('nodejs.dispose');

export class QwenVLEncoder {
  #h: NativeQwen | null;
  #queue = new SerialQueue();
  readonly config: Readonly<Record<string, unknown>>;

  private constructor(h: NativeQwen, config: Record<string, unknown>) {
    this.#h = h;
    this.config = Object.freeze(config);
  }

  /** A Qwen2.5-VL folder: the released flat config.json (`rope_scaling.mrope_section`) or the transformers-5
   * nested one (`text_config`, `rope_parameters`); sharded safetensors; `model.layers.*` or
   * `model.language_model.*` names. */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<QwenVLEncoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const { config: top, configFile: file, weights } = readModelFolder(p, opts.config);
    if (top.model_type !== undefined && !String(top.model_type).startsWith('qwen2'))
      throw new X2IError(`${file}: model_type '${top.model_type}' is not a Qwen2/2.5-VL model`, 'ERR_CONFIG');
    const text = { ...top, ...(top.text_config as Record<string, unknown> | undefined ?? {}) };
    const rope = (text.rope_parameters ?? text.rope_scaling ?? top.rope_scaling ?? {}) as Record<string, unknown>;
    const section = rope.mrope_section;
    if (!Array.isArray(section) || section.length !== 3)
      throw new X2IError(`${file}: field 'rope_scaling.mrope_section' (or text_config.rope_parameters.mrope_section) is missing`, 'ERR_CONFIG');
    const native = {
      vocabSize: field(text, 'vocab_size', file), hiddenSize: field(text, 'hidden_size', file),
      intermediateSize: field(text, 'intermediate_size', file), numHiddenLayers: field(text, 'num_hidden_layers', file),
      numAttentionHeads: field(text, 'num_attention_heads', file), numKeyValueHeads: field(text, 'num_key_value_heads', file),
      rmsNormEps: field(text, 'rms_norm_eps', file), ropeTheta: field({ ...text, ...rope }, 'rope_theta', file),
      mropeSection: section,
    };
    const Native = (addon() as unknown as { NativeQwenVLEncoder: { load(c: object, w: Record<string, NativeTensor>, s: string): Promise<NativeQwen> } }).NativeQwenVLEncoder;
    const h = await loadNative(weights, defaultDtype(opts), (w) => Native.load(native, w, weights));
    return new QwenVLEncoder(h, top);
  }

  /** One prefill: hiddenStates [B, L+1, S, H] = the embeddings, then every layer's output (the last after the
   * final RMSNorm), written into one buffer: AlignNet's input. No lm_head. */
  async forward(inputs: QwenVLInputs): Promise<{ hiddenStates: Tensor }> {
    if (!inputs || !(inputs.inputIds instanceof Tensor)) throw invalidArg('inputs.inputIds', 'a Tensor', inputs?.inputIds);
    if (inputs.pixelValues || inputs.pixelValuesVideos)
      throw new X2IError('QwenVLEncoder: image and video inputs need the vision tower, which this version does not have yet',
        'ERR_NOT_SUPPORTED');
    if (!this.#h) throw new DisposedError('QwenVLEncoder');
    const h = this.#h;
    const ins = { inputIds: inputs.inputIds.handle, padRule: inputs.padRule ?? 'x2i',
      ...(inputs.attentionMask ? { attentionMask: inputs.attentionMask.handle } : {}) };
    const r = await this.#queue.run(() => nativeCall(() => h.forward(ins)));
    return { hiddenStates: new Tensor(r.hiddenStates) };
  }

  dispose(): void {
    const h = this.#h;
    this.#h = null;
    if (h) void this.#queue.run(async () => h.dispose());
  }

  [disposeSymbol](): void {
    this.dispose();
  }
}
