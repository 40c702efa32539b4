import type { LoadProgress } from '../core/io.js';
export type { LoadProgress };

/**
 * The CLI's progress and chatter on stderr. On a terminal (`isTTY`) a bar is redrawn in place with carriage returns;
 * anywhere else (a pipe, a log file, CI) each bar prints plain lines at a modest rate: every step of a run of at most
 * 20 steps, else the first step, each 10%, and the last. `quiet` prints nothing (errors are printed elsewhere, always).
 */

/** Where progress goes: stderr, or any stream with `write` (tests). */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
}

export interface ProgressOptions {
  /** Print nothing. Default false. */
  quiet?: boolean;
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Redraw in place (default: the stream's isTTY). */
  tty?: boolean;
}

/** An update of a bar: `step` of `total`, with what follows the count (a phase, a loss). */
export type BarUpdate = (step: number, total: number, detail?: string) => void;

const WIDTH = 30;

/** The reporter whose bar line is open on the terminal (errors end it first: `endProgressLine`). */
let active: Progress | null = null;

/** Ends an open bar's line on the terminal, so that what follows starts a line of its own. */
export function endProgressLine(): void {
  active?.end();
}

/** Runs of at most this many steps print every step when not on a terminal. */
const EVERY_STEP_UP_TO = 20;

/** One command's stderr reporter: bars (`bar`), loading bars (`loading`) and one-line messages (`note`). */
export class Progress {
  readonly quiet: boolean;
  readonly tty: boolean;
  readonly #stream: ProgressStream;
  /** The bar whose line is open on the terminal (redrawn in place), and that line's length. */
  #open: { label: string; length: number } | null = null;

  constructor(opts: ProgressOptions = {}) {
    this.quiet = opts.quiet ?? false;
    this.#stream = opts.stream ?? process.stderr;
    this.tty = opts.tty ?? Boolean(this.#stream.isTTY);
  }

  /** A message on a line of its own (after an open bar's line); nothing when quiet. */
  note(message: string): void {
    if (this.quiet) return;
    this.end();
    this.#stream.write(`${message}\n`);
  }

  /** Ends the open bar's line on a terminal (before other output). */
  end(): void {
    if (this.#open) this.#stream.write('\n');
    this.#open = null;
    if (active === this) active = null;
  }

  /**
   * A bar labelled `label`: call it with (step, total, detail). `count` formats the count (default `step/total`).
   * On a terminal the line is redrawn; elsewhere plain lines as the module says.
   */
  bar(label: string, count: (step: number, total: number) => string = (s, t) => `${s}/${t}`): BarUpdate {
    let printedDecile = -1, printed = '';
    return (step, total, detail) => {
      if (this.quiet) return;
      const frac = total > 0 ? Math.min(1, Math.max(0, step / total)) : 1;
      const text = `${count(step, total)}${detail ? ` ${detail}` : ''}`;
      if (this.tty) {
        if (this.#open && this.#open.label !== label) this.end();
        const done = Math.round(frac * WIDTH);
        const line = `${label} [${'#'.repeat(done)}${'.'.repeat(WIDTH - done)}] ${text}`;
        const pad = Math.max(0, (this.#open?.length ?? 0) - line.length);
        this.#stream.write(`\r${line}${' '.repeat(pad)}`);
        this.#open = { label, length: line.length };
        active = this;
        return;
      }
      const decile = Math.floor(frac * 10);
      const last = step >= total;
      // every step of a short run; else the first update, each new 10% and the end; never the same line twice
      if ((total <= EVERY_STEP_UP_TO || last || decile > printedDecile) && text !== printed) {
        this.end();
        this.#stream.write(`${label} ${text}\n`);
        printedDecile = decile;
        printed = text;
      }
    };
  }

  /** `FluxPipeline.generate`'s onProgress ({ step, total, phase }) as a bar. */
  steps(label: string): (p: { step: number; total: number; phase: string }) => void {
    const bar = this.bar(label);
    return ({ step, total, phase }) => bar(step, total, phase);
  }

  /** A loading bar: `fromPretrained`'s onProgress, in MB loaded of the total, with the file being read. */
  loading(label: string): (p: LoadProgress) => void {
    const bar = this.bar(label, (s, t) => `${(s / 1e6).toFixed(t < 1e7 ? 1 : 0)}/${(t / 1e6).toFixed(t < 1e7 ? 1 : 0)} MB`);
    return (p) => {
      const file = p.file ? p.file.split(/[\\/]/).pop() : '';
      bar(p.bytesLoaded, p.bytesTotal, `(${p.tensorsLoaded}/${p.tensorsTotal} tensors${file ? `, ${file}` : ''})`);
    };
  }
}


/** A loading bar on stderr (redrawn on a terminal, plain lines elsewhere, nothing with `quiet`): the `onProgress` of
 * `fromPretrained`, e.g. `FluxTransformer.fromPretrained(dir, { onProgress: loadingBar('loading FLUX') })`. */
export function loadingBar(label: string, opts: ProgressOptions | Progress = {}): (p: LoadProgress) => void {
  return (opts instanceof Progress ? opts : new Progress(opts)).loading(label);
}
