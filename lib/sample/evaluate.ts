/** Teacher–student agreement (x2i eval): image similarity from the same noise, and the distillation loss. */
import { invalidArg, nativeCall } from '../core/errors.js';
import type { AlignNet } from '../models/alignnet.js';
import { distillationLoss } from '../train/distill.js';
import { addon } from '../core/native.js';
import { FluxPipeline } from './pipeline.js';
import { Tensor, randn } from '../core/tensor.js';

/** SSIM (11×11 Gaussian window, σ 1.5) and PSNR (peak 1) per image of two [B, C, H, W] batches in [0, 1]. */
export async function imageAgreement(a: Tensor, b: Tensor): Promise<{ ssim: number[]; psnr: number[] }> {
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) throw invalidArg('images', 'two Tensors', a);
  const [ha, hb] = [a.handle, b.handle];
  return nativeCall(() => addon().imageAgreement(ha, hb));
}

export interface AgreementResult {
  ssim: number;
  psnr: number;
  /** The X2I distillation loss (teacher vs student taps at σ = 1). */
  loss: number;
  perSample: { ssim: number; psnr: number; loss: number }[];
}

/**
 * For each held-out sample: teacher images (its T5/CLIP conditioning) and student images (AlignNet of the MLLM
 * states) from the same noise, their SSIM/PSNR, and the distillation loss on the taps at σ = 1.
 */
export async function evaluateAgreement(opts: { pipeline: FluxPipeline; alignNet: AlignNet;
  samples: { teacher: { encoderHiddenStates: Tensor; pooledProjections: Tensor }; student: { hiddenStates: Tensor } }[];
  height?: number; width?: number; numInferenceSteps?: number; guidanceScale?: number; seed?: number }): Promise<AgreementResult> {
  const per: AgreementResult['perSample'] = [];
  const { pipeline, alignNet } = opts;
  const gen = { height: opts.height ?? 1024, width: opts.width ?? 1024, numInferenceSteps: opts.numInferenceSteps ?? 28,
    guidanceScale: opts.guidanceScale ?? 3.5 };
  if (!pipeline || typeof pipeline.checkOptions !== 'function') throw invalidArg('pipeline', 'a FluxPipeline', pipeline);
  pipeline.checkOptions({ ...gen, seed: opts.seed });
  if (!Array.isArray(opts.samples) || opts.samples.length === 0) throw invalidArg('samples', 'a non-empty array of samples', opts.samples);
  for (const [i, s] of opts.samples.entries()) {
    const st = await alignNet.forward(s.student.hiddenStates);
    const seed = (opts.seed ?? 0) + i;
    const t = await pipeline.generate({ ...gen, seed, promptEmbeds: s.teacher.encoderHiddenStates, pooledPromptEmbeds: s.teacher.pooledProjections });
    const u = await pipeline.generate({ ...gen, seed, promptEmbeds: st.encoderHiddenStates, pooledPromptEmbeds: st.pooledProjections });
    const agree = await imageAgreement(t.images, u.images);
    // the loss at σ = 1 on the same latents
    const f = pipeline.transformer;
    const B = s.teacher.encoderHiddenStates.shape[0];
    const lh = 2 * Math.floor(gen.height / 16), lw = 2 * Math.floor(gen.width / 16);
    const latents = await randn([B, (lh / 2) * (lw / 2), Number(f.config.in_channels ?? 64)], { seed, device: f.device, dtype: f.dtype });
    const ones = Tensor.fromArray(new Float32Array(B).fill(1), [B], { device: f.device });
    const guidance = Tensor.fromArray(new Float32Array(B).fill(gen.guidanceScale), [B], { device: f.device });
    const imgIds = FluxPipeline.imageIds(lh, lw, f.device);
    const txt = (n: number) => Tensor.fromArray(new Float32Array(n * 3), [n, 3], { device: f.device });
    const [tt, ts] = [txt(s.teacher.encoderHiddenStates.shape[1]), txt(st.encoderHiddenStates.shape[1])];
    const common = { hiddenStates: latents, timestep: ones, guidance, imgIds };
    const a = await f.forward({ ...common, encoderHiddenStates: s.teacher.encoderHiddenStates, pooledProjections: s.teacher.pooledProjections, txtIds: tt }, { capture: true });
    const b = await f.forward({ ...common, encoderHiddenStates: st.encoderHiddenStates, pooledProjections: st.pooledProjections, txtIds: ts }, { capture: true });
    const loss = (await distillationLoss(a.captures!, b.captures!)).loss;
    for (const x of [st.encoderHiddenStates, st.pooledProjections, t.images, u.images, latents, ones, guidance, imgIds, tt, ts,
      a.sample, b.sample, ...Object.values(a.captures!), ...Object.values(b.captures!)]) x.dispose();
    agree.ssim.forEach((v, k) => per.push({ ssim: v, psnr: agree.psnr[k], loss }));
  }
  const mean = (k: 'ssim' | 'psnr' | 'loss') => per.reduce((acc, p) => acc + p[k], 0) / per.length;
  return { ssim: mean('ssim'), psnr: mean('psnr'), loss: mean('loss'), perSample: per };
}
