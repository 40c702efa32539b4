/**
 * X2I's students: the MLLMs whose every layer AlignNet reads (Qwen2.5-VL, InternVL2.5). `studentFromPretrained`
 * picks the class from the folder's config.json; `encodeStudentPrompt` is the one call X2IGenerator and
 * X2ITrainer make on any of them.
 */
import { X2IError, invalidArg } from '../core/errors.js';
import { resolveModelPath } from '../core/hub.js';
import type { Tensor } from '../core/tensor.js';
import { InternVLEncoder } from './internvl.js';
import { MiniCPMOEncoder } from './minicpm.js';
import type { DecodedAudio } from './audio.js';
import { readModelFolder, type PretrainedOptions } from './pretrained.js';
import { QwenVLEncoder, type QwenPrompt } from './qwen.js';
import type { InternVLTokenizer, MiniCPMOTokenizer, QwenTokenizer } from './tokenizers.js';

export type StudentEncoder = QwenVLEncoder | InternVLEncoder | MiniCPMOEncoder;
/** Text in any language, images, a video (Qwen2.5-VL; MiniCPM-o: its frames as images), audio (MiniCPM-o: 16 kHz
 * mono, `x2i.audio.load`); InternVL also reads X2I's editing instruction. */
export type StudentPrompt = QwenPrompt & { instruction?: string; audios?: (Float32Array | DecodedAudio)[] };
export interface StudentEncodeOptions {
  /** Token length the prompt is padded to (X2I: 512). */
  maxLength?: number;
  /** Qwen2.5-VL: 'x2i' (default) or 'chat' for text-only prompts. */
  template?: 'x2i' | 'chat';
  tokenizer?: QwenTokenizer | InternVLTokenizer | MiniCPMOTokenizer;
}

/** The student in a folder (or a Hugging Face repo id in the local cache), by its config.json: model_type
 * `qwen2_5_vl` / `qwen2_vl` → QwenVLEncoder, `internvl_chat` → InternVLEncoder, `minicpmo` → MiniCPMOEncoder. */
export async function studentFromPretrained(p: string, opts: PretrainedOptions = {}): Promise<StudentEncoder> {
  if (typeof p !== 'string') throw invalidArg('path', 'a model folder', p);
  p = resolveModelPath(p, opts);
  const { config, configFile } = readModelFolder(p);
  const kind = String(config.model_type ?? '');
  if (kind === 'internvl_chat') return InternVLEncoder.fromPretrained(p, opts);
  if (/^qwen2(_5)?_vl$/.test(kind)) return QwenVLEncoder.fromPretrained(p, opts);
  if (kind === 'minicpmo') return MiniCPMOEncoder.fromPretrained(p, opts);
  throw new X2IError(`${configFile}: model_type '${kind}' is no X2I student this library runs (qwen2_5_vl, internvl_chat, minicpmo)`, 'ERR_CONFIG');
}

/** The student's hidden states of every layer for a prompt, and the attention mask. */
export async function encodeStudentPrompt(mllm: StudentEncoder, prompt: string | StudentPrompt,
  opts: StudentEncodeOptions = {}): Promise<{ hiddenStates: Tensor; attentionMask: Tensor }> {
  const audios = typeof prompt === 'object' && prompt?.audios?.length;
  if (mllm instanceof MiniCPMOEncoder) {
    const tok = opts.tokenizer;
    if (tok !== undefined && typeof (tok as MiniCPMOTokenizer).chat !== 'function')
      throw invalidArg('tokenizer', 'a MiniCPMOTokenizer for the MiniCPM-o student', tok);
    return mllm.encodePrompt(prompt, { tokenizer: tok as MiniCPMOTokenizer | undefined, maxLength: opts.maxLength });
  }
  if (audios) throw new X2IError('audio prompts need the MiniCPM-o student (the others do not hear)', 'ERR_NOT_SUPPORTED');
  if (mllm instanceof InternVLEncoder) {
    if (typeof prompt === 'object' && prompt?.video?.length)
      throw new X2IError('the InternVL student takes text and images; give video frames as images', 'ERR_NOT_SUPPORTED');
    const tok = opts.tokenizer;
    if (tok !== undefined && typeof (tok as InternVLTokenizer).prompt !== 'function')
      throw invalidArg('tokenizer', 'an InternVLTokenizer for the InternVL student', tok);
    return mllm.encodePrompt(prompt, { maxLength: opts.maxLength, tokenizer: tok as InternVLTokenizer | undefined });
  }
  const tok = opts.tokenizer;
  if (tok !== undefined && typeof (tok as QwenTokenizer).x2iPrompt !== 'function')
    throw invalidArg('tokenizer', 'a QwenTokenizer for the Qwen2.5-VL student', tok);
  return mllm.encodePrompt(prompt, { maxLength: opts.maxLength, template: opts.template, tokenizer: tok as QwenTokenizer | undefined });
}
