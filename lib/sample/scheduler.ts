/**
 * x2i.FlowMatchEulerScheduler: FLUX's flow-matching Euler sampler schedule (diffusers
 * FlowMatchEulerDiscreteScheduler as FluxPipeline drives it), computed with the reference's float32 rounding.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ConfigReader } from '../core/config.js';
import { X2IError, invalidArg } from '../core/errors.js';

/** diffusers scheduler_config.json keys. */
export interface FlowMatchEulerConfig {
  num_train_timesteps?: number;
  shift?: number;
  use_dynamic_shifting?: boolean;
  base_shift?: number;
  max_shift?: number;
  base_image_seq_len?: number;
  max_image_seq_len?: number;
  time_shift_type?: 'exponential' | 'linear';
  invert_sigmas?: boolean;
  shift_terminal?: number | null;
  use_karras_sigmas?: boolean;
  use_exponential_sigmas?: boolean;
  use_beta_sigmas?: boolean;
  stochastic_sampling?: boolean;
}

/** FLUX.1-dev's scheduler config. */
export const FLUX_DEV_SCHEDULER: Required<Omit<FlowMatchEulerConfig, 'shift_terminal'>> & { shift_terminal: null } = {
  num_train_timesteps: 1000, shift: 3.0, use_dynamic_shifting: true, base_shift: 0.5, max_shift: 1.15,
  base_image_seq_len: 256, max_image_seq_len: 4096, time_shift_type: 'exponential', invert_sigmas: false,
  shift_terminal: null, use_karras_sigmas: false, use_exponential_sigmas: false, use_beta_sigmas: false,
  stochastic_sampling: false,
};

const f32 = Math.fround;

export class FlowMatchEulerScheduler {
  readonly config: Readonly<typeof FLUX_DEV_SCHEDULER>;
  /** Set by setTimesteps: σ per step (the last one 0) and the timesteps (σ·1000) the transformer gets. */
  sigmas: number[] = [];
  timesteps: number[] = [];

  /** `source` names the config in errors (e.g. the path of scheduler_config.json). */
  constructor(config: FlowMatchEulerConfig = {}, source = 'scheduler config') {
    const c = { ...FLUX_DEV_SCHEDULER, ...Object.fromEntries(Object.entries(config ?? {}).filter(([k]) => !k.startsWith('_'))) };
    // every field of its type and range before any schedule is computed (lib/core/config.ts)
    const r = new ConfigReader(c, source);
    r.int('num_train_timesteps', { max: 1_000_000 });
    r.num('shift', { positive: true });
    r.bool('use_dynamic_shifting');
    r.num('base_shift');
    r.num('max_shift');
    const base = r.int('base_image_seq_len'), max = r.int('max_image_seq_len');
    r.check(max > base, `field 'max_image_seq_len' (${max}) must be greater than 'base_image_seq_len' (${base})`);
    r.oneOf('time_shift_type', ['exponential', 'linear'] as const);
    for (const k of ['use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas', 'invert_sigmas', 'stochastic_sampling'] as const) r.bool(k);
    for (const k of ['use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas', 'invert_sigmas', 'stochastic_sampling'] as const)
      if (c[k]) throw new X2IError(`FlowMatchEulerScheduler: ${k} is not supported (FLUX uses none of them)`, 'ERR_CONFIG');
    if (c.shift_terminal !== null && c.shift_terminal !== undefined)
      throw new X2IError('FlowMatchEulerScheduler: shift_terminal is not supported', 'ERR_CONFIG');
    this.config = Object.freeze(c as typeof FLUX_DEV_SCHEDULER);
  }

  /** A scheduler_config.json: the file, a `scheduler/` folder or a pipeline folder holding one. Its values are
   * checked as the constructor does, errors naming the file. */
  static fromPretrained(p: string): FlowMatchEulerScheduler {
    const file = [p, path.join(p, 'scheduler_config.json'), path.join(p, 'scheduler', 'scheduler_config.json')]
      .find((f) => fs.existsSync(f) && fs.statSync(f).isFile());
    if (!file) throw new X2IError(`${p}: no scheduler_config.json (looked for the file, ${p}/scheduler_config.json and ` +
      `${p}/scheduler/scheduler_config.json)`, 'ERR_FILE_NOT_FOUND');
    let config: unknown;
    try {
      config = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new X2IError(`${file}: not valid JSON (${(e as Error).message})`, 'ERR_CONFIG');
    }
    if (!config || typeof config !== 'object' || Array.isArray(config))
      throw new X2IError(`${file}: expected a JSON object of scheduler settings`, 'ERR_CONFIG');
    return new FlowMatchEulerScheduler(config as FlowMatchEulerConfig, file);
  }

  /** FluxPipeline's μ: linear in the image token count from (base_image_seq_len, base_shift) to
   * (max_image_seq_len, max_shift). */
  calculateShift(imageSeqLen: number): number {
    const c = this.config;
    const m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len);
    const b = c.base_shift - m * c.base_image_seq_len;
    return imageSeqLen * m + b;
  }

  /** σ = linspace(1, 1/n, n), shifted (dynamically with μ from imageSeqLen, or statically by `shift`), σ·1000 as
   * timesteps, a terminal σ = 0 appended. */
  setTimesteps(numInferenceSteps: number, opts: { imageSeqLen?: number; mu?: number; sigmas?: number[] } = {}): { timesteps: number[]; sigmas: number[] } {
    if (!Number.isSafeInteger(numInferenceSteps) || numInferenceSteps < 1) throw invalidArg('numInferenceSteps', 'a positive integer', numInferenceSteps);
    const c = this.config;
    const n = numInferenceSteps;
    const base = opts.sigmas ?? Array.from({ length: n }, (_, i) => (n === 1 ? 1 : 1 + (i * (1 / n - 1)) / (n - 1)));
    let sigmas = base.map(f32);
    if (c.use_dynamic_shifting) {
      const mu = opts.mu ?? (opts.imageSeqLen !== undefined ? this.calculateShift(opts.imageSeqLen) : undefined);
      if (mu === undefined) throw new X2IError('FlowMatchEulerScheduler: dynamic shifting needs imageSeqLen (or mu)', 'ERR_INVALID_ARG');
      const e = f32(Math.exp(mu));
      sigmas = sigmas.map((s) => (c.time_shift_type === 'linear'
        ? f32(f32(mu) / f32(f32(mu) + f32(f32(1 / s) - 1)))
        : f32(e / f32(e + f32(f32(1 / s) - 1)))));
    } else {
      const sh = f32(c.shift);
      sigmas = sigmas.map((s) => f32(f32(sh * s) / f32(1 + f32(f32(sh - 1) * s))));
    }
    this.timesteps = sigmas.map((s) => f32(s * c.num_train_timesteps));
    this.sigmas = [...sigmas, 0];
    return { timesteps: [...this.timesteps], sigmas: [...this.sigmas] };
  }

  /** The Euler step's factor for step i: x ← x + (σ_{i+1} − σ_i)·v (float32, as the reference). */
  dt(i: number): number {
    if (!(i >= 0 && i < this.timesteps.length)) throw invalidArg('step index', `0..${this.timesteps.length - 1}`, i);
    return f32(this.sigmas[i + 1] - this.sigmas[i]);
  }
}
