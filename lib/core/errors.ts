/** Errors thrown by x2i. `code` is stable and machine-readable (ERR_*); the message says what was
 * expected and what was found (shape, dtype, key, file). */
export class X2IError extends Error {
  readonly code: string;
  constructor(message: string, code = 'ERR_X2I', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'X2IError';
    this.code = code;
  }
}

/** Thrown when a disposed tensor or model is used. */
export class DisposedError extends X2IError {
  constructor(what: string) {
    super(`${what} was disposed`, 'ERR_DISPOSED');
    this.name = 'DisposedError';
  }
}

/** Re-creates a native error as an X2IError whose stack points at the caller's line (as sharp does). */
function restack(e: unknown, site: Error): unknown {
  if (!(e instanceof Error) || e instanceof X2IError) return e;
  const code = (e as { code?: unknown }).code;
  if (typeof code !== 'string' || !code.startsWith('ERR_')) return e;
  const err = new X2IError(e.message, code);
  const frames = (site.stack ?? '').split('\n').slice(1).join('\n');
  err.stack = `X2IError: ${e.message}\n${frames}`;
  return err;
}

/** Runs a native async call; a rejection becomes an X2IError with the caller's stack. */
export async function nativeCall<T>(fn: () => Promise<T>): Promise<T> {
  const site = new Error();
  try {
    return await fn();
  } catch (e) {
    throw restack(e, site);
  }
}

/** Same for a synchronous native call. */
export function nativeSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw restack(e, new Error());
  }
}

export function invalidArg(what: string, expected: string, found: unknown): X2IError {
  const f = found === null ? 'null' : Array.isArray(found) ? `array [${found.join(', ')}]`
    : typeof found === 'object' ? (found as object).constructor?.name ?? 'object' : `${typeof found} ${String(found)}`;
  return new X2IError(`Expected ${expected} for ${what} but received ${f}`, 'ERR_INVALID_ARG');
}
