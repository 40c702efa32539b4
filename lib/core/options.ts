/**
 * Shared option validators: every count, rate, size and output path of the API and the CLI is checked before any
 * work starts (before a model loads, before a step runs). Each failure is an X2IError (ERR_INVALID_ARG, or
 * ERR_OUTPUT_EXISTS / ERR_OUTPUT_PATH for output paths) naming the option, the value and what was expected.
 */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError } from './errors.js';

/** Upper bounds that keep a typo (`--steps 1e9`) from allocating without end. */
export const LIMITS = Object.freeze({
  /** Training micro-batches of one run. */
  trainSteps: 10_000_000,
  /** Denoising steps of one image. */
  inferenceSteps: 10_000,
  /** Image side in pixels. */
  imageSide: 8192,
  /** Micro-batches per optimizer step, checkpoints kept, warmup steps, ... */
  count: 10_000_000,
});

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint' || v === undefined || v === null) return String(v);
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? `${(v as object).constructor?.name ?? 'an object'}` : typeof v;
}

function fail(name: string, value: unknown, expected: string): X2IError {
  return new X2IError(`${name}: expected ${expected}, got ${show(value)}`, 'ERR_INVALID_ARG');
}

/** A CLI number: the whole string must be a number (`Number('')` is 0 and `Number('abc')` NaN: both refused). */
export function parseNumberArg(name: string, text: string | undefined): number {
  if (typeof text !== 'string' || text.trim() === '') throw fail(name, text, 'a number');
  const n = Number(text.trim());
  if (Number.isNaN(n)) throw fail(name, text, 'a number');
  return n;
}

/** An integer in [min, max] (default: a positive integer up to LIMITS.count). */
export function integerOption(name: string, value: unknown, opts: { min?: number; max?: number } = {}): number {
  const min = opts.min ?? 1, max = opts.max ?? LIMITS.count;
  const what = min === 1 ? 'a positive integer' : min === 0 ? 'a non-negative integer' : `an integer ≥ ${min}`;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) throw fail(name, value, `${what} (at most ${max})`);
  if (value > max) throw fail(name, value, `${what} of at most ${max}`);
  return value;
}

export const positiveInt = (name: string, value: unknown, max?: number) => integerOption(name, value, { min: 1, max });
export const nonNegativeInt = (name: string, value: unknown, max?: number) => integerOption(name, value, { min: 0, max });

/** A finite number, optionally within [min, max] (or (min, max) with `exclusive`). */
export function finiteOption(name: string, value: unknown, opts: { min?: number; max?: number; minExclusive?: boolean;
  maxExclusive?: boolean } = {}): number {
  const { min, max, minExclusive, maxExclusive } = opts;
  const range = min !== undefined && max !== undefined ? ` in ${minExclusive ? '(' : '['}${min}, ${max}${maxExclusive ? ')' : ']'}`
    : min !== undefined ? (minExclusive ? ` > ${min}` : ` ≥ ${min}`) : max !== undefined ? (maxExclusive ? ` < ${max}` : ` ≤ ${max}`) : '';
  const expected = `a finite number${range}`;
  if (typeof value !== 'number' || !Number.isFinite(value)) throw fail(name, value, expected);
  if (min !== undefined && (minExclusive ? value <= min : value < min)) throw fail(name, value, expected);
  if (max !== undefined && (maxExclusive ? value >= max : value > max)) throw fail(name, value, expected);
  return value;
}

/** An image side: a positive integer multiple of `multiple` (FLUX: 16), at most LIMITS.imageSide. */
export function imageSide(name: string, value: unknown, multiple = 16): number {
  const expected = `a positive multiple of ${multiple} of at most ${LIMITS.imageSide}`;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < multiple || value > LIMITS.imageSide || value % multiple !== 0)
    throw fail(name, value, expected);
  return value;
}

/** A seed: a non-negative safe integer. */
export const seedOption = (name: string, value: unknown) => integerOption(name, value, { min: 0, max: Number.MAX_SAFE_INTEGER });

export type ImageFormat = 'png' | 'jpeg' | 'webp';
const IMAGE_EXT: Record<string, ImageFormat> = { '.png': 'png', '.jpg': 'jpeg', '.jpeg': 'jpeg', '.webp': 'webp' };

/** The folder a file will be written into must exist and be writable. */
function writableParent(name: string, file: string): void {
  const dir = path.dirname(path.resolve(file));
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new X2IError(`${name}: cannot write ${show(file)}: the folder ${dir} does not exist`, 'ERR_OUTPUT_PATH');
  }
  if (!st.isDirectory()) throw new X2IError(`${name}: cannot write ${show(file)}: ${dir} is not a folder`, 'ERR_OUTPUT_PATH');
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    throw new X2IError(`${name}: cannot write ${show(file)}: the folder ${dir} is not writable`, 'ERR_OUTPUT_PATH');
  }
}

/** An output file that can be written: its folder exists and is writable; it is not a folder. */
export function outputFile(name: string, file: unknown): string {
  if (typeof file !== 'string' || file === '' || file.includes('\0')) throw fail(name, file, 'a file path');
  writableParent(name, file);
  if (fs.existsSync(file) && fs.statSync(file).isDirectory())
    throw new X2IError(`${name}: cannot write ${show(file)}: it is a folder`, 'ERR_OUTPUT_PATH');
  return file;
}

/** An image output path: writable (outputFile) with a known extension (.png, .jpg/.jpeg, .webp); its format. */
export function imageOutput(name: string, file: unknown): ImageFormat {
  if (typeof file !== 'string' || file === '') throw fail(name, file, 'an image file path (.png, .jpg, .jpeg or .webp)');
  const format = IMAGE_EXT[path.extname(file).toLowerCase()];
  if (!format) throw fail(name, file, 'an image file path ending in .png, .jpg, .jpeg or .webp');
  outputFile(name, file);
  return format;
}

/**
 * An output folder (checkpoints, demo outputs): not a file; if it exists it must be writable, else its parent must
 * exist and be writable. With `refuseNonEmpty`, an existing non-empty folder is an error (ERR_OUTPUT_EXISTS) unless
 * `allow` says why it may be reused (e.g. resume or overwrite).
 */
export function outputDir(name: string, dir: unknown, opts: { refuseNonEmpty?: boolean; hint?: string } = {}): string {
  if (typeof dir !== 'string' || dir === '' || dir.includes('\0')) throw fail(name, dir, 'a folder path');
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(dir);
  } catch {
    st = undefined;
  }
  if (!st) {
    writableParent(name, dir);
    return dir;
  }
  if (!st.isDirectory()) throw new X2IError(`${name}: ${show(dir)} is a file, expected a folder`, 'ERR_OUTPUT_PATH');
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    throw new X2IError(`${name}: the folder ${show(dir)} is not writable`, 'ERR_OUTPUT_PATH');
  }
  if (opts.refuseNonEmpty && fs.readdirSync(dir).length > 0)
    throw new X2IError(`${name}: the folder ${show(dir)} is not empty${opts.hint ? ` (${opts.hint})` : ''}`, 'ERR_OUTPUT_EXISTS');
  return dir;
}

/** Whether a folder exists and holds anything. */
export function isNonEmptyDir(dir: string): boolean {
  try {
    return fs.statSync(dir).isDirectory() && fs.readdirSync(dir).length > 0;
  } catch {
    return false;
  }
}

/** A device name: 'cpu', 'cuda' or 'cuda:N'. */
export function deviceOption(name: string, value: unknown): string {
  if (typeof value !== 'string' || !/^(cpu|cuda(:\d{1,4})?)$/.test(value)) throw fail(name, value, "'cpu', 'cuda' or 'cuda:N'");
  return value;
}

/** A floating dtype for weights and compute. */
export function floatDtypeOption(name: string, value: unknown): 'float32' | 'bfloat16' | 'float16' | 'float64' {
  if (value !== 'float32' && value !== 'bfloat16' && value !== 'float16' && value !== 'float64')
    throw fail(name, value, 'float32, bfloat16, float16 or float64');
  return value;
}
