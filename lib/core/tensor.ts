/** x2i.Tensor: a typed handle on one LibTorch tensor (native/napi/tensor.cc). */
import { DisposedError, X2IError, invalidArg, nativeCall, nativeSync } from './errors.js';
import { addon, type CudaMemoryInfo, type MemoryInfo, type NativeTensor, type TypedArray } from './native.js';

/** The dtypes of the public API; tensors loaded from files may also carry the extra ones. */
export type DType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'uint8' | 'bool';
export type ExtraDType = 'int8' | 'int16' | 'uint16' | 'uint32' | 'uint64' | 'complex64' | 'float8_e4m3fn' |
  'float8_e5m2' | 'float8_e8m0fnu' | 'float4_e2m1fn_x2';
export type AnyDType = DType | ExtraDType;

export const DTYPES: readonly AnyDType[] = ['float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'uint8',
  'bool', 'int8', 'int16', 'uint16', 'uint32', 'uint64', 'complex64', 'float8_e4m3fn', 'float8_e5m2',
  'float8_e8m0fnu', 'float4_e2m1fn_x2'];

export interface TensorOptions {
  /** Element type. Default: the typed array's own (Float32Array → float32, ...); Uint16Array needs one of
   * 'bfloat16' | 'float16' | 'uint16'. A different floating/integer dtype converts the values. */
  dtype?: AnyDType;
  /** 'cpu' (default), 'cuda' or 'cuda:N'. */
  device?: string;
}

function checkShape(shape: unknown): number[] {
  if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0))
    throw invalidArg('shape', 'an array of non-negative integers', shape);
  return shape as number[];
}

function checkDType(dtype: unknown, what = 'dtype'): AnyDType | undefined {
  if (dtype === undefined) return undefined;
  if (typeof dtype !== 'string' || !DTYPES.includes(dtype as AnyDType))
    throw invalidArg(what, `one of ${DTYPES.join(', ')}`, dtype);
  return dtype as AnyDType;
}

function checkDevice(device: unknown): string | undefined {
  if (device === undefined) return undefined;
  if (typeof device !== 'string' || !/^(cpu|cuda(:\d+)?)$/.test(device))
    throw invalidArg('device', "'cpu', 'cuda' or 'cuda:N'", device);
  return device;
}

const disposeSymbol: typeof Symbol.dispose = Symbol.dispose ?? Symbol.for('nodejs.dispose');

export class Tensor {
  #h: NativeTensor | null;
  readonly shape: readonly number[];
  readonly dtype: AnyDType;
  readonly device: string;
  /** Bytes of the tensor's elements. */
  readonly nbytes: number;

  /** @internal Use Tensor.fromArray, x2i.randn or a loader. */
  constructor(handle: NativeTensor) {
    this.#h = handle;
    const info = handle.info();
    this.shape = Object.freeze(info.shape);
    this.dtype = info.dtype as AnyDType;
    this.device = info.device;
    this.nbytes = info.nbytes;
  }

  /** Copies a typed array once into a new tensor (float16/bfloat16 as raw Uint16Array bits). */
  static fromArray(data: TypedArray, shape: number[], opts: TensorOptions = {}): Tensor {
    if (!ArrayBuffer.isView(data) || data instanceof DataView)
      throw invalidArg('data', 'a typed array (Float32Array, Float64Array, Int32Array, BigInt64Array, Uint8Array, ' +
        'Uint16Array, ...)', data);
    checkShape(shape);
    const dtype = checkDType(opts.dtype);
    const device = checkDevice(opts.device);
    return new Tensor(nativeSync(() => addon().NativeTensor.fromArray(data, shape, dtype, device)));
  }

  /** Number of elements. */
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get disposed(): boolean {
    return this.#h === null;
  }

  /** @internal The native handle; throws after dispose(). */
  get handle(): NativeTensor {
    if (!this.#h) throw new DisposedError(`Tensor ${this}`);
    return this.#h;
  }

  /** The values, copied once off the JS thread. bfloat16/float16 come back as Uint16Array bits, int64 as
   * BigInt64Array, bool as Uint8Array. */
  async toArray(): Promise<TypedArray> {
    const h = this.handle;
    return nativeCall(() => h.toArray());
  }

  /** A tensor on another device and/or of another dtype (the same storage when nothing changes). */
  async to(opts: TensorOptions): Promise<Tensor> {
    const h = this.handle;
    const device = checkDevice(opts?.device);
    const dtype = checkDType(opts?.dtype);
    return new Tensor(await nativeCall(() => h.to(device, dtype)));
  }

  /** Frees the tensor now (idempotent). A collected Tensor is freed by its finalizer anyway. */
  dispose(): void {
    this.#h?.dispose();
    this.#h = null;
  }

  [disposeSymbol](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor([${this.shape.join(', ')}], ${this.dtype}, ${this.device}${this.#h ? '' : ', disposed'})`;
  }
}

/** Standard-normal values. Drawn on the CPU from `seed` (the same numbers on every device), then moved. */
export async function randn(shape: number[], opts: TensorOptions & { seed?: number } = {}): Promise<Tensor> {
  checkShape(shape);
  const dtype = checkDType(opts.dtype) ?? 'float32';
  const device = checkDevice(opts.device) ?? 'cpu';
  if (opts.seed !== undefined && !(Number.isSafeInteger(opts.seed) && opts.seed >= 0))
    throw invalidArg('seed', 'a non-negative integer', opts.seed);
  return new Tensor(await nativeCall(() => addon().randn(shape, dtype, device, opts.seed)));
}

/** Zeros, allocated on the device itself. */
export async function zeros(shape: number[], opts: TensorOptions = {}): Promise<Tensor> {
  checkShape(shape);
  const dtype = checkDType(opts.dtype) ?? 'float32';
  const device = checkDevice(opts.device) ?? 'cpu';
  return new Tensor(await nativeCall(() => addon().zeros(shape, dtype, device)));
}

/** Matrix product (LibTorch `matmul` semantics, broadcasting batch dimensions). */
export async function matmul(a: Tensor, b: Tensor): Promise<Tensor> {
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) throw invalidArg('matmul operands', 'two Tensors', a);
  const [ha, hb] = [a.handle, b.handle];
  return new Tensor(await nativeCall(() => addon().matmul(ha, hb)));
}

/** ‖a − b‖ / ‖b‖, computed in float64 where the tensors are (for accuracy checks). */
export async function relativeError(a: Tensor, b: Tensor): Promise<number> {
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) throw invalidArg('relativeError operands', 'two Tensors', a);
  const [ha, hb] = [a.handle, b.handle];
  return nativeCall(() => addon().relativeError(ha, hb));
}

/** Live tensor handles and their bytes, in total and per device (for leak checks). */
export function memory(): MemoryInfo {
  return addon().memory();
}

/** Sets LibTorch's intra-op thread count. */
export function setNumThreads(n: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw invalidArg('setNumThreads(n)', 'a positive integer', n);
  addon().setNumThreads(n);
}

export const cuda = {
  /** Whether LibTorch sees at least one CUDA device (false on CPU builds). */
  isAvailable(): boolean {
    return addon().cudaIsAvailable();
  },
  deviceCount(): number {
    return addon().cudaDeviceCount();
  },
  /** The caching allocator's bytes on `device` (now and peak, allocated and reserved), after a device
   * synchronisation; `reset: true` starts the peaks again from now (torch.cuda.reset_peak_memory_stats);
   * `emptyCache: true` first returns the cached free blocks to the driver (torch.cuda.empty_cache). */
  memory(device = 'cuda', opts: { reset?: boolean; emptyCache?: boolean } = {}): CudaMemoryInfo {
    checkDevice(device);
    return addon().cudaMemory(device, opts.reset ?? false, opts.emptyCache ?? false);
  },
  /**
   * Caps what the caching allocator holds on `device` at `bytes` (torch.cuda.set_per_process_memory_fraction(bytes /
   * total)): an allocation beyond it frees the cache and then fails with a clear out-of-memory error, as on a card of
   * that size. `null` lifts the cap. For proving that a workload fits a smaller card.
   */
  setMemoryLimit(bytes: number | null, device = 'cuda'): void {
    checkDevice(device);
    if (bytes !== null && !(typeof bytes === 'number' && Number.isFinite(bytes) && bytes > 0))
      throw invalidArg('cuda.setMemoryLimit(bytes)', 'a positive number of bytes or null', bytes);
    addon().cudaSetMemoryLimit(device, bytes);
  },
  /** Waits for all work queued on the device. */
  async synchronize(device = 'cuda'): Promise<void> {
    checkDevice(device);
    if (!addon().cudaIsAvailable()) throw new X2IError('CUDA is not available', 'ERR_CUDA_UNAVAILABLE');
    await nativeCall(() => addon().cudaSynchronize(device));
  },
};
