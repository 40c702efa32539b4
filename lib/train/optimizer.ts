/**
 * The optimizer settings every trainer shares (X2ITrainer, LoraTrainer, LightControlTrainer): AdamW with clipping by
 * the global gradient norm, gradient accumulation, and the learning-rate schedule (linear warmup, then cosine to 0).
 * The optimizer itself is native (native/train/adamw.cc, native/train/grad_norm.cc); this is its options and schedule.
 */
import { LIMITS, finiteOption, nonNegativeInt, positiveInt } from '../core/options.js';
import type { NativeAdamWOptions } from '../core/addon.js';

/** The native AdamW's settings (lr, beta1, beta2, weightDecay, eps, maxGradNorm: defaults below) with accumulation
 * and the schedule. */
export interface OptimizerOptions extends NativeAdamWOptions {
  /** Micro-batches per optimizer step (default 1). */
  gradientAccumulation?: number;
  /** Linear warmup steps, then cosine decay to 0 at totalSteps (default: no warmup, constant lr). */
  warmupSteps?: number;
  totalSteps?: number;
}

/** The defaults of OptimizerOptions: X2I's recipe (lr 1e-4, betas 0.9 / 0.999, weight decay 1e-2, eps 1e-8, clipping at 1). */
export const OPTIMIZER_DEFAULTS = { lr: 1e-4, beta1: 0.9, beta2: 0.999, weightDecay: 1e-2, eps: 1e-8, maxGradNorm: 1,
  gradientAccumulation: 1, warmupSteps: 0, totalSteps: 0 };

/** Every optimizer option checked (type, range, integrality); throws an X2IError naming the option. */
export function checkOptimizerOptions(o: Required<OptimizerOptions>): void {
  finiteOption('lr', o.lr, { min: 0 });
  finiteOption('beta1', o.beta1, { min: 0, max: 1, maxExclusive: true });
  finiteOption('beta2', o.beta2, { min: 0, max: 1, maxExclusive: true });
  finiteOption('weightDecay', o.weightDecay, { min: 0 });
  finiteOption('eps', o.eps, { min: 0, minExclusive: true });
  finiteOption('maxGradNorm', o.maxGradNorm, { min: 0 });
  positiveInt('gradientAccumulation', o.gradientAccumulation);
  nonNegativeInt('warmupSteps', o.warmupSteps, LIMITS.trainSteps);
  nonNegativeInt('totalSteps', o.totalSteps, LIMITS.trainSteps);
}

/** The learning rate of optimizer step `s` (0-based): linear warmup, then cosine to 0 at totalSteps (constant
 * without totalSteps). */
export function scheduledLearningRate(o: Required<Pick<OptimizerOptions, 'lr' | 'warmupSteps' | 'totalSteps'>>, s: number): number {
  if (o.warmupSteps > 0 && s < o.warmupSteps) return (o.lr * (s + 1)) / o.warmupSteps;
  if (!o.totalSteps) return o.lr;
  const p = Math.min(1, (s - o.warmupSteps) / Math.max(1, o.totalSteps - o.warmupSteps));
  return 0.5 * o.lr * (1 + Math.cos(Math.PI * p));
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1) (noise levels, trajectory steps, shuffles, the demo's data). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
