/** The base of the classes that hold a native model: one handle, calls serialised on it, deterministic disposal. */
import { DisposedError, X2IError, nativeCall } from './errors.js';
import { SerialQueue } from './queue.js';

const disposeSymbol: typeof Symbol.dispose = Symbol.dispose ?? Symbol.for('nodejs.dispose');

export abstract class NativeModel<H extends { dispose(): void }> {
  #h: H | null;
  #queue = new SerialQueue();
  readonly #name: string;

  protected constructor(handle: H, name: string) {
    this.#h = handle;
    this.#name = name;
  }

  get disposed(): boolean {
    return this.#h === null;
  }

  /** @internal The native handle; throws a DisposedError after dispose(). */
  protected native(): H {
    if (!this.#h) throw new DisposedError(this.#name);
    return this.#h;
  }

  /** @internal The handle, for a native call of another model that takes this one as an argument. */
  nativeHandle(): H {
    return this.native();
  }

  /** Runs a native call after the calls already queued on this model (one at a time per model). */
  protected call<T>(fn: (h: H) => Promise<T>): Promise<T> {
    const h = this.native();
    return this.#queue.run(() => nativeCall(() => fn(h)));
  }

  /** Frees the weights once the calls in flight have finished (idempotent). */
  dispose(): void {
    const h = this.#h;
    this.#h = null;
    if (h) void this.#queue.run(async () => h.dispose());
  }

  [disposeSymbol](): void {
    this.dispose();
  }
}

/** An input with a zero-size dimension (an empty batch, sequence or image) is refused at the API boundary, by
 * name and shape, before native code sees it. */
export function requireNonEmpty(name: string, t: { shape: readonly number[] }, what = 'tensor'): void {
  if (t.shape.some((d) => d === 0))
    throw new X2IError(`${name} has shape [${t.shape.join(', ')}]: an empty ${what} (every dimension must be at least 1)`, 'ERR_INVALID_ARG');
}
