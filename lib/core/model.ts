/** The base of the classes that hold a native model: one handle, calls serialised on it, deterministic disposal. */
import { DisposedError, X2IError, nativeCall } from './errors.js';
import { SerialQueue } from './queue.js';

const disposeSymbol: typeof Symbol.dispose = Symbol.dispose ?? Symbol.for('nodejs.dispose');
const asyncDisposeSymbol: typeof Symbol.asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose');

export abstract class NativeModel<H extends { dispose(): void }> {
  #h: H | null;
  #queue = new SerialQueue();
  #freed: Promise<void> | null = null;
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

  /** Frees the weights once the calls in flight have finished (idempotent); new calls fail at once. */
  dispose(): void {
    void this.disposeAsync();
  }

  /**
   * dispose(), awaitable: resolves once the calls queued before it have settled and the native model is released
   * (its memory back to the allocator: on CUDA to LibTorch's caching allocator, which `x2i.cuda.memory(device,
   * { emptyCache: true })` hands back to the driver). Memory still referenced elsewhere (tensors returned by the
   * model's methods, e.g. LightControl.weights()) stays until those are disposed. Every call returns the same Promise.
   */
  disposeAsync(): Promise<void> {
    const h = this.#h;
    this.#h = null;
    if (h) this.#freed = this.#queue.run(async () => h.dispose());
    return this.#freed ?? Promise.resolve();
  }

  [disposeSymbol](): void {
    this.dispose();
  }

  /** `await using model = await X.fromPretrained(...)`: disposeAsync() at the end of the scope. */
  [asyncDisposeSymbol](): Promise<void> {
    return this.disposeAsync();
  }
}

/** An input with a zero-size dimension (an empty batch, sequence or image) is refused at the API boundary, by
 * name and shape, before native code sees it. */
export function requireNonEmpty(name: string, t: { shape: readonly number[] }, what = 'tensor'): void {
  if (t.shape.some((d) => d === 0))
    throw new X2IError(`${name} has shape [${t.shape.join(', ')}]: an empty ${what} (every dimension must be at least 1)`, 'ERR_INVALID_ARG');
}
