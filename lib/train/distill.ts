/** The X2I attention-distillation loss (native/train/distill.cc; binding native/napi/distill.cc). */
import { invalidArg, nativeCall } from '../core/errors.js';
import type { FluxCaptures } from '../models/flux.js';
import { addon } from '../core/native.js';
import type { NativeCaptures } from '../core/addon.js';
import { Tensor } from '../core/tensor.js';

export type Divergence = 'rkl' | 'kl' | 'js' | 'mse';

export interface DistillationOptions {
  /** 'rkl' = KL(student ‖ teacher), the X2I default; 'kl' = KL(teacher ‖ student); 'js'; 'mse' on raw features. */
  divergence?: Divergence;
  /** Softmax temperature τ (default 3). */
  temperature?: number;
  /** Also return d loss / d student captures (stacked like the captures). */
  returnGrad?: boolean;
  /** 'fused' (default): one pass per row (a CUDA kernel on the GPU, the same formulas as LibTorch ops on the
   * CPU), float32 accumulation. 'autograd': the loss composed from LibTorch ops and differentiated by
   * autograd (the reference; float64 inputs give a float64 reference). */
  method?: 'fused' | 'autograd';
}

export interface DistillationResult {
  /** Sum of the finite per-layer terms. */
  loss: number;
  /** Each layer's term (NaN where skipped). */
  terms: { doubleImg: number[]; doubleTxt: number[]; single: number[] };
  /** Terms that were NaN/Inf: skipped, not propagated. */
  skipped: number;
  grads?: FluxCaptures;
}

const kinds = ['doubleImg', 'doubleTxt', 'single'] as const;

function handles(c: FluxCaptures, what: string): NativeCaptures {
  if (!c || typeof c !== 'object') throw invalidArg(what, 'captures { doubleImg, doubleTxt, single }', c);
  for (const k of kinds) if (!(c[k] instanceof Tensor)) throw invalidArg(`${what}.${k}`, 'a Tensor', c[k]);
  const out: NativeCaptures = { doubleImg: c.doubleImg.handle, doubleTxt: c.doubleTxt.handle, single: c.single.handle };
  return out;
}

/**
 * Per token, z-normalise the D channels (unbiased std, eps 1e-7), softmax at temperature τ, and sum the
 * divergence over tokens and channels, divided by the batch size; the loss is the sum over all layers.
 */
export async function distillationLoss(teacherCaptures: FluxCaptures, studentCaptures: FluxCaptures,
  opts: DistillationOptions = {}): Promise<DistillationResult> {
  const t = handles(teacherCaptures, 'teacherCaptures');
  const s = handles(studentCaptures, 'studentCaptures');
  const r = await nativeCall(() => addon().distillationLoss(t, s, opts.temperature ?? 3, opts.divergence ?? 'rkl', Boolean(opts.returnGrad), opts.method ?? 'fused'));
  const out: DistillationResult = { loss: r.loss, terms: r.terms, skipped: r.skipped };
  if (r.grads) out.grads = { doubleImg: new Tensor(r.grads.doubleImg), doubleTxt: new Tensor(r.grads.doubleTxt),
    single: new Tensor(r.grads.single) };
  return out;
}
