/** Shared loading steps of the pretrained models: folder layout, config.json, weights, the native handle. */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, nativeCall } from '../core/errors.js';
import { resolveModelPath, type HubOptions } from '../core/hub.js';
import { loadSafetensors, type LoadProgress } from '../core/io.js';
import type { NativeModelClass, NativeTensor } from '../core/addon.js';
import type { DType } from '../core/tensor.js';

export type { LoadProgress } from '../core/io.js';

/** What every `fromPretrained` takes besides device and dtype: where the model comes from, and following its loading. */
export interface LoadingOptions extends HubOptions {
  /** A Hugging Face repo id's revision: a commit (40 hex digits), or a branch or tag read from the cache's
   * `refs/<name>`. Default: `main` (or the id's `@revision`). Ignored for local paths. */
  revision?: string;
  /** The Hugging Face cache folder to resolve repo ids in. Default: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`,
   * `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub` (see hubCacheDirs). Nothing is
   * ever downloaded. */
  cacheDir?: string;
  /** Stops the loading between two reads of the weights (and drops a model whose native load finished after the
   * abort): everything loaded so far is freed, and the Promise rejects with `signal.reason` (an AbortError). */
  signal?: AbortSignal;
  /** Called before the first read and after each read of the weights (every file or shard at least once, reads of
   * about 128 MiB: a larger tensor is one read), with the bytes and tensors of the whole model read so far. */
  onProgress?: (p: LoadProgress) => void;
}

export interface PretrainedOptions extends LoadingOptions {
  /** 'cpu' (default) or 'cuda[:N]'. */
  device?: string;
  /** Default: 'bfloat16' on CUDA, 'float32' on the CPU. */
  dtype?: DType;
  /** Overrides config.json fields (snake_case, as in config.json), each where it lives (top level, `text_config`,
   * `vision_config`, `llm_config`); a key that is no field of the config is an error. */
  config?: Record<string, unknown>;
}

export function defaultDtype(opts: { device?: string; dtype?: DType }): { device: string; dtype: DType } {
  const device = opts.device ?? 'cpu';
  return { device, dtype: opts.dtype ?? (device.startsWith('cuda') ? 'bfloat16' : 'float32') };
}

/** The device, dtype (defaultDtype), signal and onProgress of `opts`, for loadNative. */
export function loadOptions(opts: PretrainedOptions): { device: string; dtype: DType } & Pick<LoadingOptions, 'signal' | 'onProgress'> {
  return { ...defaultDtype(opts), signal: opts.signal, onProgress: opts.onProgress };
}

/** A model folder (a local path, or a Hugging Face repo id resolved in the local cache: resolveModelPath): its
 * config.json (merged with overrides) and its weights (single or sharded safetensors). */
export function readModelFolder(p: string, overrides: Record<string, unknown> = {}, hub: HubOptions = {}): {
  config: Record<string, unknown>; configFile: string; weights: string } {
  p = resolveModelPath(p, hub);
  const dir = fs.statSync(p).isDirectory() ? p : path.dirname(p);
  const configFile = path.join(dir, 'config.json');
  if (!fs.existsSync(configFile)) throw new X2IError(`${dir}: no config.json`, 'ERR_FILE_NOT_FOUND');
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  } catch (e) {
    throw new X2IError(`${configFile}: not valid JSON (${(e as Error).message})`, 'ERR_CONFIG');
  }
  return { config: applyOverrides(config, overrides, configFile), configFile, weights: fs.statSync(p).isDirectory() ? dir : p };
}

/** `overrides` set on a copy of `config`, each where the field lives: the top level and/or the nested
 * `text_config` / `vision_config` (transformers 5's layout). A key that is no field of the config is an error
 * (a typo would otherwise be ignored). */
function applyOverrides(config: Record<string, unknown>, overrides: Record<string, unknown>, file: string): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config };
  const nested = ['text_config', 'vision_config', 'llm_config'].filter((k) => out[k] && typeof out[k] === 'object');
  for (const k of nested) out[k] = { ...(out[k] as Record<string, unknown>) };
  for (const [k, v] of Object.entries(overrides)) {
    const homes = [out, ...nested.map((n) => out[n] as Record<string, unknown>)].filter((h) => k in h);
    if (!homes.length) throw new X2IError(`${file}: config override '${k}' is not a field of this config`, 'ERR_CONFIG');
    for (const h of homes) h[k] = v;
  }
  return out;
}

/** A number field of a config, or a clear error naming the file and the field. */
export function field(config: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = config[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new X2IError(`${file}: field '${key}' is ${v === undefined ? 'missing' : `not a number (${JSON.stringify(v)})`}`, 'ERR_CONFIG');
  return v;
}

/** Loads the weights and hands them to a native loader; the JS handles are released afterwards. `signal` and
 * `onProgress` follow the reads (io.ts readFiles); a model whose native load ends after an abort is freed. */
export async function loadNative<H extends { dispose(): void }>(weightsPath: string,
  opts: { device: string; dtype: DType } & Pick<LoadingOptions, 'signal' | 'onProgress'>,
  load: (weights: Record<string, NativeTensor>) => Promise<H>): Promise<H> {
  const tensors = await loadSafetensors(weightsPath, { device: opts.device, dtype: opts.dtype, signal: opts.signal,
    onProgress: opts.onProgress });
  try {
    const handles = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, t.handle]));
    return afterAbortCheck(await nativeCall(() => load(handles)), opts.signal);
  } finally {
    for (const t of Object.values(tensors)) t.dispose();
  }
}

/** `h`, or — if `signal` was aborted meanwhile — `h` freed and the abort's reason thrown. */
export function afterAbortCheck<H extends { dispose(): void }>(h: H, signal?: AbortSignal): H {
  if (signal?.aborted) {
    h.dispose();
    signal.throwIfAborted();
  }
  return h;
}

/** Options of the models' `fromConfig`: random weights drawn on `device` from `seed` (native RandomInit: PyTorch's
 * default Linear init, norms 1, biases 0, embeddings N(0, 1)). */
export interface RandomOptions {
  /** 'cpu' (default) or 'cuda[:N]'. */
  device?: string;
  /** Default: 'bfloat16' on CUDA, 'float32' on the CPU. */
  dtype?: DType;
  /** Default 0: the same seed gives the same weights. */
  seed?: number;
}

/** A native model of `nativeConfig` with random weights (the `random` of a native class built on ModelWrap). */
export async function randomNative<C, H>(Native: NativeModelClass<C, H>, nativeConfig: C, opts: RandomOptions): Promise<H> {
  const { device, dtype } = defaultDtype(opts);
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new X2IError(`fromConfig: seed must be a non-negative integer, got ${seed}`, 'ERR_INVALID_ARG');
  return nativeCall(() => Native.random(nativeConfig, device, dtype, seed));
}

/** The folder of a model path (the path itself, or a weights file's folder). */
export function folderOf(p: string): string {
  return fs.existsSync(p) && fs.statSync(p).isDirectory() ? p : path.dirname(p);
}
