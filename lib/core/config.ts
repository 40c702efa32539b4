/**
 * The one validator of model configs (config.json, `fromConfig` objects, `options.config` overrides): every
 * field checked for type (a number is a JSON number, a boolean a JSON boolean), integrality, range and the
 * divisibility the model needs, before anything reaches native code. Each failure is an X2IError (ERR_CONFIG)
 * naming the source (`config.json`'s path, or "config"), the field, the value found and what was expected.
 */
import { X2IError } from './errors.js';

/** Upper bounds that keep every size product far inside int64 and every random init inside a real allocation. */
export const CONFIG_LIMITS = {
  /** Widths, vocabularies, channel counts. */
  size: 1 << 24,
  /** Layer / block counts. */
  layers: 4096,
} as const;

/** A config value as an error message shows it. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'missing';
  if (typeof v === 'number') return Number.isNaN(v) ? 'NaN' : String(v);
  if (typeof v === 'bigint') return `${v}n`;
  try {
    const s = JSON.stringify(v);
    if (s === undefined) return typeof v;
    return s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch {
    return typeof v;
  }
}

export interface IntOptions {
  /** Default 1 (a positive count or size). */
  min?: number;
  /** Default CONFIG_LIMITS.size. */
  max?: number;
  /** Used when the field is absent (undefined); null is not absent. */
  fallback?: number;
}

/** Reads the fields of one config object (or one nested part of it: `prefix` names where it lives). */
export class ConfigReader {
  constructor(readonly config: Record<string, unknown>, readonly source: string, readonly prefix = '') {
    if (!config || typeof config !== 'object' || Array.isArray(config))
      throw new X2IError(`${source}: ${prefix ? `field '${prefix.replace(/\.$/, '')}'` : 'the config'} must be an object, ` +
        `found ${describeValue(config)}`, 'ERR_CONFIG');
  }

  /** The name of a field as the user wrote it (with its nesting). */
  name(key: string): string {
    return `${this.prefix}${key}`;
  }

  /** An ERR_CONFIG naming the source, the field, its value and what was expected. */
  error(key: string, value: unknown, expected: string): X2IError {
    return value === undefined
      ? new X2IError(`${this.source}: field '${this.name(key)}' is missing (expected ${expected})`, 'ERR_CONFIG')
      : new X2IError(`${this.source}: field '${this.name(key)}' must be ${expected}, found ${describeValue(value)}`, 'ERR_CONFIG');
  }

  /** A failed cross-field rule (divisibility, sums). */
  check(ok: boolean, message: string): void {
    if (!ok) throw new X2IError(`${this.source}: ${message}`, 'ERR_CONFIG');
  }

  has(key: string): boolean {
    return this.config[key] !== undefined;
  }

  raw(key: string): unknown {
    return this.config[key];
  }

  /** An integer in [min, max] (default: a positive size). */
  int(key: string, o: IntOptions = {}): number {
    const min = o.min ?? 1, max = o.max ?? CONFIG_LIMITS.size;
    const v = this.config[key] ?? o.fallback;
    const expected = min === 1 ? `a positive integer (at most ${max})` : min === 0 ? `a non-negative integer (at most ${max})`
      : `an integer in [${min}, ${max}]`;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw this.error(key, v, expected);
    return v;
  }

  /** A layer / block count (default: at least 1). */
  layers(key: string, o: Omit<IntOptions, 'max'> = {}): number {
    return this.int(key, { ...o, max: CONFIG_LIMITS.layers });
  }

  /** A finite number; with `positive`, > 0. */
  num(key: string, o: { fallback?: number; positive?: boolean } = {}): number {
    const v = this.config[key] ?? o.fallback;
    const expected = o.positive ? 'a finite number > 0' : 'a finite number';
    if (typeof v !== 'number' || !Number.isFinite(v) || (o.positive && !(v > 0))) throw this.error(key, v, expected);
    return v;
  }

  /** A norm epsilon: finite and > 0. */
  eps(key: string, fallback?: number): number {
    return this.num(key, { fallback, positive: true });
  }

  /** A JSON boolean (`"false"` is not one). */
  bool(key: string, fallback?: boolean): boolean {
    const v = this.config[key] ?? fallback;
    if (typeof v !== 'boolean') throw this.error(key, v, 'true or false');
    return v;
  }

  /** A list of integers in [min, max]; `length` fixes the count, otherwise it must not be empty. */
  intList(key: string, o: { min?: number; max?: number; length?: number; fallback?: number[]; even?: boolean } = {}): number[] {
    const min = o.min ?? 1, max = o.max ?? CONFIG_LIMITS.size;
    const v = this.config[key] ?? o.fallback;
    const expected = `${o.length !== undefined ? `a list of ${o.length}` : 'a non-empty list of'} ${o.even ? 'even ' : ''}` +
      `integers in [${min}, ${max}]`;
    if (!Array.isArray(v) || (o.length !== undefined ? v.length !== o.length : v.length === 0) || v.length > CONFIG_LIMITS.layers ||
      !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= min && x <= max && (!o.even || x % 2 === 0)))
      throw this.error(key, v, expected);
    return v as number[];
  }

  /** One of the given strings. */
  oneOf<T extends string>(key: string, values: readonly T[], fallback?: T): T {
    const v = this.config[key] ?? fallback;
    if (typeof v !== 'string' || !values.includes(v as T)) throw this.error(key, v, `one of ${values.map((s) => `'${s}'`).join(', ')}`);
    return v as T;
  }

  /** A nested object (`text_config`, `vision_config`, `rope_scaling`), or undefined when absent/null. */
  nested(key: string): ConfigReader | undefined {
    const v = this.config[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) throw this.error(key, v, 'an object');
    return new ConfigReader(v as Record<string, unknown>, this.source, `${this.prefix}${key}.`);
  }
}

/** `a` is a multiple of `b` (both already validated), or an error naming both fields. */
export function requireMultiple(r: ConfigReader, a: { key: string; value: number }, b: { key: string; value: number }): void {
  r.check(a.value % b.value === 0, `field '${a.key}' (${a.value}) must be a multiple of '${b.key}' (${b.value})`);
}
