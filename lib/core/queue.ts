/**
 * Serialises the async calls made on one object (a model, a trainer): each call starts when the previous
 * one has settled, so two forwards of one model never run at once on the thread pool, while separate
 * objects keep their own queues and run concurrently.
 */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();
  #pending = 0;

  /** Calls still queued or running. */
  get pending(): number {
    return this.#pending;
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    this.#pending++;
    const result = this.#tail.then(fn, fn);
    this.#tail = result.then(() => undefined, () => undefined).finally(() => { this.#pending--; });
    return result;
  }
}
