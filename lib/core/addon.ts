/**
 * The typed contract of the native addon (x2i.node): every class and function it exports, in one place
 * (as node-llama-cpp's AddonTypes.ts). The rest of lib/ reaches the addon only through these types.
 */
export interface NativeTensorInfo {
  shape: number[];
  dtype: string;
  device: string;
  nbytes: number;
}
export type TypedArray = Float32Array | Float64Array | Int32Array | BigInt64Array | BigUint64Array | Uint8Array |
  Uint16Array | Int8Array | Int16Array | Uint32Array | Uint8ClampedArray;

/** One at::Tensor held by JS. Created only by the addon. */
export interface NativeTensor {
  info(): NativeTensorInfo;
  toArray(): Promise<TypedArray>;
  to(device?: string, dtype?: string): Promise<NativeTensor>;
  dispose(): void;
}

export interface MemoryInfo {
  /** Live tensor handles (not yet disposed or collected). */
  tensors: number;
  /** Their bytes (views of one storage count once each). */
  bytes: number;
  devices: Record<string, { tensors: number; bytes: number }>;
}

/** The CUDA caching allocator's bytes on one device (torch.cuda.memory_allocated and friends). */
export interface CudaMemoryInfo {
  allocated: number;
  peakAllocated: number;
  reserved: number;
  peakReserved: number;
}

export interface BuildInfo {
  libtorchVersion: string;
  libtorchFlavour: string;
  builtWithCuda: boolean;
  cudaBackendRegistered: boolean;
  intraOpThreads: number;
  parallelInfo: string;
}

/** The exports of x2i.node (native/addon.cc). */
export interface Addon {
  NativeTensor: {
    fromArray(data: TypedArray, shape: number[], dtype?: string, device?: string): NativeTensor;
  };
  memory(): MemoryInfo;
  buildInfo(): BuildInfo;
  cudaIsAvailable(): boolean;
  cudaDeviceCount(): number;
  cudaSynchronize(device?: string): Promise<void>;
  cudaMemory(device?: string, reset?: boolean, emptyCache?: boolean): CudaMemoryInfo;
  setNumThreads(n: number): void;
  readSafetensors(path: string, dataStart: number, entries: [string, string, number[], number, number][],
    device?: string, dtype?: string): Promise<Record<string, NativeTensor>>;
  writeSafetensors(path: string, header: Buffer, tensors: NativeTensor[], nbytes: number[]): Promise<void>;
  loadTorchCheckpoint(path: string): Promise<Record<string, NativeTensor>>;
  zeros(shape: number[], dtype: string, device: string): Promise<NativeTensor>;
  randn(shape: number[], dtype: string, device: string, seed?: number): Promise<NativeTensor>;
  matmul(a: NativeTensor, b: NativeTensor): Promise<NativeTensor>;
  sdpaBackend(shape: number[], dtype: string, device: string): string;
  relativeError(a: NativeTensor, b: NativeTensor): Promise<number>;
  /** One tap of the distillation loss (internal: benchmarks and tests); method 'fused' (default) | 'composite'. */
  benchDistillTap(teacher: NativeTensor, student: NativeTensor, divergence: string, temperature: number,
    incoming?: NativeTensor, method?: string, iters?: number): Promise<number>;
  distillTap(teacher: NativeTensor, student: NativeTensor, divergence: string, temperature: number,
    incoming?: NativeTensor, method?: string): Promise<{ term: number; grad: NativeTensor }>;
  narrowView(tensor: NativeTensor, dim: number, start: number, length: number): NativeTensor;
  noop(): void;
  noopAsync(): Promise<void>;
  benchCopy(nbytes: number, src: string, dst: string, iters: number, pinned?: boolean, fresh?: boolean): Promise<number>;
}
