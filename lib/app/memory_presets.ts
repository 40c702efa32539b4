/** X2I on smaller cards: named combinations of FP8 block weights, activation checkpointing, precomputed features and
 * freeing the MLLM after encoding (what `x2i train --memory` and `x2i generate --memory` apply). `bench/memory.mjs`
 * runs each under its cap (cuda.setMemoryLimit) at real sizes; bench/RESULTS.md has the peaks and times. */

import { invalidArg } from '../core/errors.js';

export type MemoryPresetName = 'full' | '48gb' | '24gb';

export interface MemoryPreset {
  /** The cap the preset is measured under (GiB of the caching allocator; null: none). */
  trainCapGiB: number | null;
  generateCapGiB: number | null;
  /** FluxTransformer's `quantize`. */
  quantize: 'none' | 'fp8';
  /** X2ITrainer's `checkpoint` (activation checkpointing of the student's blocks). */
  checkpoint: boolean;
  /** Training reads precomputed features (T5 + CLIP for the teacher, the MLLM's hidden states for the student:
   * `x2i train --features`), so no encoder is on the GPU. */
  precomputedFeatures: boolean;
  /** Generation with the student: the MLLM encodes the prompt and is freed before the transformer loads. */
  freeEncoderBeforeDenoising: boolean;
}

export const MEMORY_PRESETS: Readonly<Record<MemoryPresetName, Readonly<MemoryPreset>>> = Object.freeze({
  /** Every model on the GPU: the X2I step at 1024² takes about 70 GiB (an 80 GB card). */
  full: Object.freeze({ trainCapGiB: null, generateCapGiB: null, quantize: 'none', checkpoint: false, precomputedFeatures: false,
    freeEncoderBeforeDenoising: false }),
  /** A 48 GB card: bf16 weights, precomputed features, checkpointing; generation frees the MLLM before denoising. */
  '48gb': Object.freeze({ trainCapGiB: 40, generateCapGiB: 40, quantize: 'none', checkpoint: true, precomputedFeatures: true,
    freeEncoderBeforeDenoising: true }),
  /** A 24 GB card: FP8 block weights as well. */
  '24gb': Object.freeze({ trainCapGiB: 22, generateCapGiB: 24, quantize: 'fp8', checkpoint: true, precomputedFeatures: true,
    freeEncoderBeforeDenoising: true }),
});

/** Whether `name` names a preset (own keys only: not `toString` or `__proto__`). */
export function isMemoryPresetName(name: unknown): name is MemoryPresetName {
  return typeof name === 'string' && Object.prototype.hasOwnProperty.call(MEMORY_PRESETS, name);
}

/** The preset of a name (ERR_INVALID_ARG naming the known ones otherwise). */
export function memoryPreset(name: unknown): Readonly<MemoryPreset> {
  if (!isMemoryPresetName(name)) throw invalidArg('memory preset', Object.keys(MEMORY_PRESETS).map((k) => `'${k}'`).join(', '), name);
  return MEMORY_PRESETS[name];
}
