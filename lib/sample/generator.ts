/** x2i.X2IGenerator: the X2I student — an MLLM reads text, images or video; AlignNet turns all its hidden states
 * into FLUX's conditioning (in place of T5 + CLIP); the frozen FLUX transformer samples the image as FluxPipeline does. */
import { invalidArg } from '../core/errors.js';
import { positiveInt } from '../core/options.js';
import type { AlignNet } from '../models/alignnet.js';
import { FluxPipeline, type FluxGenerateOptions, type FluxImages } from './pipeline.js';
import { encodeStudentPrompt, type StudentEncoder, type StudentEncodeOptions, type StudentPrompt } from '../models/students.js';

export interface X2IGenerateOptions extends Omit<FluxGenerateOptions, 'prompt' | 'promptEmbeds' | 'pooledPromptEmbeds'> {
  /** The prompt: text in any language, images, a video (decoded frames; Qwen2.5-VL), or a mix. */
  prompt: string | StudentPrompt;
  /** Token length the MLLM prompt is padded to (X2I: 512). */
  maxLength?: number;
  /** 'x2i' (default): text-only prompts in X2I's training template; 'chat': the plain chat template. */
  template?: 'x2i' | 'chat';
  tokenizer?: StudentEncodeOptions['tokenizer'];
}

export class X2IGenerator {
  /** The student MLLM: QwenVLEncoder or InternVLEncoder (`x2i.studentFromPretrained` picks by config.json). */
  readonly mllm: StudentEncoder;
  readonly alignNet: AlignNet;
  readonly pipeline: FluxPipeline;

  constructor(parts: { mllm: StudentEncoder; alignNet: AlignNet; pipeline: FluxPipeline }) {
    if (!parts?.mllm || !parts?.alignNet || !parts?.pipeline) throw invalidArg('X2IGenerator parts', '{ mllm, alignNet, pipeline }', parts);
    this.mllm = parts.mllm;
    this.alignNet = parts.alignNet;
    this.pipeline = parts.pipeline;
  }

  /** The student's conditioning for a prompt: AlignNet(MLLM hidden states of every layer). */
  async encode(prompt: string | StudentPrompt, opts: StudentEncodeOptions = {}) {
    const { hiddenStates, attentionMask } = await encodeStudentPrompt(this.mllm, prompt, opts);
    attentionMask.dispose();
    try {
      return await this.alignNet.forward(hiddenStates);
    } finally {
      hiddenStates.dispose();
    }
  }

  /** Generates images from the prompt through the frozen FLUX (the same options as FluxPipeline.generate: also
   * image-to-image with `image` and `strength`, inpainting with `mask`, outpainting with `outpaintCanvas`). The
   * options are checked before the MLLM runs. */
  async generate(opts: X2IGenerateOptions): Promise<FluxImages> {
    const { prompt, maxLength, template, tokenizer, ...rest } = opts;
    this.pipeline.checkOptions(opts);  // before the MLLM runs
    if (maxLength !== undefined) positiveInt('maxLength', maxLength, 1 << 20);
    if (template !== undefined && template !== 'x2i' && template !== 'chat') throw invalidArg('template', "'x2i' or 'chat'", template);
    opts.signal?.throwIfAborted();
    const { encoderHiddenStates, pooledProjections } = await this.encode(prompt, { maxLength, template, tokenizer });
    try {
      return await this.pipeline.generate({ ...rest, promptEmbeds: encoderHiddenStates, pooledPromptEmbeds: pooledProjections });
    } finally {
      encoderHiddenStates.dispose();
      pooledProjections.dispose();
    }
  }
}
