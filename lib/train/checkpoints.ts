/**
 * Run folders of the trainers (X2ITrainer, LoraTrainer, LightControlTrainer): each checkpoint is a folder
 * `dir/step-NNNNNN-M/`; `dir/trainer.json` points at the newest complete one with the sha256 of its files and lists
 * the `keepLast` kept, newest first. A save writes the folder, then replaces trainer.json with one atomic rename, then
 * removes older folders: killed at any point, the run folder names a complete checkpoint. Resuming checks the files
 * against their checksums.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { X2IError } from '../core/errors.js';
import type { Tensor } from '../core/tensor.js';

export function sha256File(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 22);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** What trainer.json holds (checked by readRunJson). */
export interface RunJson {
  step: number;
  microStep: number;
  checkpoint: string;
  /** sha256 of each file of `checkpoint` (absent in files written before checksums: not verified). */
  files?: Record<string, string>;
  /** The checkpoints kept, newest first, with their checksums. */
  checkpoints?: { name: string; files: Record<string, string> }[];
  [k: string]: unknown;
}

/** A checkpoint folder name: one path segment inside the run folder (no '..', no separators, not absolute). */
function checkpointName(file: string, v: unknown): string {
  if (typeof v !== 'string' || v === '' || v === '.' || v === '..' || /[\\/\0]/.test(v) || path.isAbsolute(v))
    throw new X2IError(`${file}: "checkpoint" must name a folder inside the run folder, got ${JSON.stringify(v)}`, 'ERR_BAD_CHECKPOINT');
  return v;
}

/** `dir/trainer.json`, validated: counters, the checkpoint name, checksums of the `fileNames` a checkpoint holds. */
export function readRunJson(dir: string, fileNames: readonly string[], kind = 'trainer'): RunJson {
  const file = path.join(dir, 'trainer.json');
  if (!fs.existsSync(file)) throw new X2IError(`${dir}: no trainer.json (not a ${kind} checkpoint)`, 'ERR_FILE_NOT_FOUND');
  let meta: unknown;
  try {
    meta = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new X2IError(`${file}: not valid JSON (${(e as Error).message})`, 'ERR_BAD_CHECKPOINT', { cause: e });
  }
  if (typeof meta !== 'object' || meta === null || Array.isArray(meta)) throw new X2IError(`${file}: expected a JSON object`, 'ERR_BAD_CHECKPOINT');
  const m = meta as RunJson;
  for (const k of ['step', 'microStep'] as const)
    if (!Number.isSafeInteger(m[k]) || m[k] < 0) throw new X2IError(`${file}: "${k}" must be a non-negative integer, got ${JSON.stringify(m[k])}`, 'ERR_BAD_CHECKPOINT');
  checkpointName(file, m.checkpoint);
  if (m.files !== undefined) {
    if (typeof m.files !== 'object' || m.files === null) throw new X2IError(`${file}: "files" must be an object of sha256 checksums`, 'ERR_BAD_CHECKPOINT');
    for (const [k, v] of Object.entries(m.files))
      if (!fileNames.includes(k) || typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v))
        throw new X2IError(`${file}: "files" entry ${JSON.stringify(k)} must be a checkpoint file's sha256`, 'ERR_BAD_CHECKPOINT');
  }
  return m;
}

/** The newest checkpoint folder of a run, its files checked against the checksums trainer.json records. */
export function verifiedCheckpoint(dir: string, meta: RunJson, required: readonly string[]): string {
  const ckpt = path.join(dir, meta.checkpoint);
  for (const f of required) {
    const file = path.join(ckpt, f);
    if (!fs.existsSync(file)) throw new X2IError(`${file}: no such file (trainer.json names checkpoint ${meta.checkpoint})`, 'ERR_FILE_NOT_FOUND');
  }
  for (const [f, want] of Object.entries(meta.files ?? {})) {
    const file = path.join(ckpt, f);
    if (!fs.existsSync(file)) throw new X2IError(`${file}: no such file (listed in ${path.join(dir, 'trainer.json')})`, 'ERR_FILE_NOT_FOUND');
    if (sha256File(file) !== want)
      throw new X2IError(`${file}: checksum mismatch (sha256 differs from the one in ${path.join(dir, 'trainer.json')}): the file changed after it was saved`,
        'ERR_CHECKSUM');
  }
  return ckpt;
}

/** The checkpoint folder name of a step. */
export function checkpointFolderName(step: number, microStep: number): string {
  return `step-${String(step).padStart(6, '0')}-${microStep}`;
}

/** Points `dir/trainer.json` at the checkpoint `name` just written (its `fileNames` checksummed), keeping the
 * `keepLast` newest (this one first), with one atomic rename; then removes the other step folders. */
export function commitCheckpoint(dir: string, name: string, fileNames: readonly string[], record: Record<string, unknown> &
  { step: number; microStep: number }, keepLast: number): void {
  const target = path.join(dir, name);
  const files = Object.fromEntries(fileNames.map((f) => [f, sha256File(path.join(target, f))]));
  let previous: { name: string; files: Record<string, string> }[] = [];
  try {
    const m = readRunJson(dir, fileNames);
    previous = Array.isArray(m.checkpoints) ? m.checkpoints.filter((c) => c && typeof c.name === 'string' && c.name !== name &&
      !/[\\/\0]/.test(c.name) && c.name !== '..' && c.name !== '.')
      : m.checkpoint !== name ? [{ name: m.checkpoint, files: m.files ?? {} }] : [];
  } catch {
    previous = [];
  }
  const kept = [{ name, files }, ...previous].slice(0, keepLast);
  const tmp = path.join(dir, `trainer.json.tmp-${process.pid}`);
  const fd = fs.openSync(tmp, 'w');
  const { step, microStep, ...rest } = record;
  fs.writeSync(fd, JSON.stringify({ step, microStep, checkpoint: name, files, checkpoints: kept, ...rest }, null, 2));
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(tmp, path.join(dir, 'trainer.json'));
  const keep = new Set(kept.map((c) => c.name));
  for (const d of fs.readdirSync(dir))
    if (d.startsWith('step-') && !keep.has(d)) fs.rmSync(path.join(dir, d), { recursive: true, force: true });
}

/** Throws where a float tensor holds a non-finite value (or a negative one with `nonNegative`). */
export async function checkFinite(t: Tensor, what: string, nonNegative = false): Promise<void> {
  const a = await t.toArray();
  for (let i = 0; i < a.length; i++) {
    const x = Number(a[i]);
    if (!Number.isFinite(x) || (nonNegative && x < 0))
      throw new X2IError(`${what}: ${nonNegative && Number.isFinite(x) ? 'negative' : 'non-finite'} value ${x} at element ${i}`, 'ERR_NON_FINITE');
  }
}

/** The options a run recorded in `dir/trainer.json` ("config": e.g. the CLI's effective flags), or undefined where it
 * recorded none (runs written before configs were recorded, or by the API without `config`). */
export function recordedConfig(dir: string): Record<string, unknown> | undefined {
  const file = path.join(dir, 'trainer.json');
  let meta: unknown;
  try {
    meta = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new X2IError(`${file}: cannot read the run's options (${(e as Error).message})`, 'ERR_BAD_CHECKPOINT', { cause: e });
  }
  const c = (meta as { config?: unknown })?.config;
  if (c === undefined || c === null) return undefined;
  if (typeof c !== 'object' || Array.isArray(c)) throw new X2IError(`${file}: "config" must be an object of options, got ${JSON.stringify(c)}`, 'ERR_BAD_CHECKPOINT');
  return c as Record<string, unknown>;
}

/** The `keys` whose values differ between a recorded config and a given one (compared as JSON; absent = undefined). */
export function configChanges(recorded: Record<string, unknown>, given: Record<string, unknown>, keys: readonly string[]):
  { key: string; recorded: unknown; given: unknown }[] {
  return keys.filter((k) => JSON.stringify(recorded[k]) !== JSON.stringify(given[k])).map((k) => ({ key: k, recorded: recorded[k], given: given[k] }));
}

/** A plain JSON object of options (a trainer's `config`), checked. */
export function checkRunConfig(name: string, c: unknown): Record<string, unknown> | undefined {
  if (c === undefined) return undefined;
  if (typeof c !== 'object' || c === null || Array.isArray(c) || Object.getPrototypeOf(c) !== Object.prototype)
    throw new X2IError(`${name}: expected a plain object of options (recorded in trainer.json), got ${Array.isArray(c) ? 'an array' : String(c)}`, 'ERR_INVALID_ARG');
  try {
    JSON.stringify(c);
  } catch (e) {
    throw new X2IError(`${name}: must be JSON-serialisable (${(e as Error).message})`, 'ERR_INVALID_ARG');
  }
  return c as Record<string, unknown>;
}

/** The metrics file of a run folder: one JSON line per optimizer step. */
export const METRICS_FILE = 'metrics.jsonl';

/**
 * `dir/metrics.jsonl` written during fit(): one line per optimizer step, `{"step", "microStep", "loss" (the mean of
 * its micro-batches), "lr", "gradNorm" (null where none), "seconds" (its wall time)}`. Opening it keeps the lines of
 * steps ≤ `step` only: a resumed run continues its log without the steps after its checkpoint, an overwritten one
 * starts afresh (unreadable lines, e.g. one cut by a crash, are dropped too).
 */
export class MetricsLog {
  readonly file: string;
  #losses: number[] = [];
  #seconds = 0;

  constructor(dir: string, step: number) {
    this.file = path.join(dir, METRICS_FILE);
    if (!fs.existsSync(this.file)) return;
    const keep = fs.readFileSync(this.file, 'utf8').split('\n').filter((l) => {
      try {
        const s = JSON.parse(l)?.step;
        return Number.isSafeInteger(s) && s <= step;
      } catch {
        return false;
      }
    });
    fs.writeFileSync(this.file, keep.map((l) => `${l}\n`).join(''));
  }

  /** One micro-batch (its loss and seconds); the line is appended when it ended an optimizer step. */
  add(info: { step: number; microStep: number; loss: number; lr: number; gradNorm?: number }, seconds: number, endsStep: boolean): void {
    this.#losses.push(info.loss);
    this.#seconds += seconds;
    if (!endsStep) return;
    const loss = this.#losses.reduce((a, b) => a + b, 0) / this.#losses.length;
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    fs.appendFileSync(this.file, JSON.stringify({ step: info.step, microStep: info.microStep, loss, lr: info.lr, gradNorm: info.gradNorm ?? null,
      seconds: Math.round(this.#seconds * 1e4) / 1e4 }) + '\n');
    this.#losses = [];
    this.#seconds = 0;
  }
}
