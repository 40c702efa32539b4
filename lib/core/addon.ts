/**
 * The typed contract of the native addon (x2i.node): every class and function it exports, in one place
 * (the pattern of node-llama-cpp's typed bindings). The rest of lib/ reaches the addon only through these
 * types, without casts (test/core/contract.test.ts checks both: no casts in lib/, and that the loaded addon
 * exports exactly the names listed in ADDON_EXPORTS / ADDON_TESTING_EXPORTS below).
 *
 * Argument and result shapes follow each binding's argument parsing (the comment above each N-API function
 * in native/ states its signature). Tensors cross as NativeTensor handles; every heavy call returns a Promise.
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
  /** The device's memory. */
  total: number;
}

export interface BuildInfo {
  libtorchVersion: string;
  libtorchFlavour: string;
  builtWithCuda: boolean;
  cudaBackendRegistered: boolean;
  intraOpThreads: number;
  parallelInfo: string;
}

/** A record of named tensors (weights, checkpoints, optimizer state). */
export type NativeTensorRecord = Record<string, NativeTensor>;
/** One range for readSafetensors: [name, dtype, shape, begin, end] or [name, dtype, shape, begin, end, stride, offset]. */
export type NativeReadEntry = [string, string, number[], number, number] |
  [string, string, number[], number, number, number[], number];

/** The divergences of the X2I distillation loss (native/train/distill.cc parseDivergence). */
export type NativeDivergence = 'rkl' | 'kl' | 'js' | 'mse';

/** The three X2I distillation taps of FLUX, each stacked over blocks on dim 1 ([B, blocks, tokens, D]). */
export interface NativeCaptures {
  doubleImg: NativeTensor;
  doubleTxt: NativeTensor;
  single: NativeTensor;
}

/** Per-layer loss terms of the three taps (NaN/Inf terms are skipped and counted). */
export interface NativeDistillTerms {
  doubleImg: number[];
  doubleTxt: number[];
  single: number[];
}

/** d loss / d the student's conditioning inputs. */
export interface NativeConditioningGrad {
  encoderHiddenStates: NativeTensor;
  pooledProjections: NativeTensor;
}

/** AdamW settings read by the training steps (napi/model_wrap.h readAdamW); left out: lr 1e-4, beta1 0.9, beta2 0.999,
 * weightDecay 1e-2, eps 1e-8, maxGradNorm 1. */
export interface NativeAdamWOptions {
  lr?: number;
  beta1?: number;
  beta2?: number;
  weightDecay?: number;
  eps?: number;
  /** Clipping by the global gradient norm; 0 = off. */
  maxGradNorm?: number;
}

/** The `random` and `load` statics shared by the model classes built on native/napi/model_wrap.h (ModelWrap). */
export interface NativeModelClass<C, H> {
  /** load(config, weights, source) → the model; the weights' handles may be disposed afterwards. */
  load(config: C, weights: NativeTensorRecord, source: string): Promise<H>;
  /** random(config, device, dtype, seed) → a model of `config` with random weights (RandomInit). */
  random(config: C, device: string, dtype: string, seed: number): Promise<H>;
}

// ---------------------------------------------------------------- FLUX (native/napi/flux.cc)

/** NativeFlux's config (napi/flux.cc parseConfig): camelCase, widths already multiplied out. */
export interface NativeFluxConfig {
  inChannels: number;
  outChannels: number;
  /** heads × head dim. */
  hidden: number;
  heads: number;
  jointDim: number;
  pooledDim: number;
  depth: number;
  depthSingle: number;
  guidance: boolean;
  /** RoPE axes dims (sum = head dim). */
  axes: number[];
  /** RoPE base; default 10000. */
  theta?: number;
  /** Fused kernels (default true) or the reference op chain. */
  fast?: boolean;
  /** t·1000 and guidance·1000 into the timestep sinusoids in float32 (default false: rounded to the model dtype first). */
  exactTimesteps?: boolean;
  /** The block layers' weights in FP8 e4m3 with per-row scales, their GEMMs in FP8 (default false). */
  fp8?: boolean;
  /** Each FP8 weight also kept transposed for the input gradient (default false: transposed at every backward). */
  fp8Transposed?: boolean;
}

/** The inputs of one FLUX forward; absent entries are undefined (napi/flux.cc parseInputs). */
export interface NativeFluxInputs {
  hiddenStates?: NativeTensor;
  encoderHiddenStates?: NativeTensor;
  pooledProjections?: NativeTensor;
  timestep?: NativeTensor;
  guidance?: NativeTensor;
  imgIds?: NativeTensor;
  txtIds?: NativeTensor;
  /** LightControl residuals [B, n, N, D], added to the image stream after double blocks 0..n−1. */
  controlResiduals?: NativeTensor;
  /** Default 1. */
  controlScale?: number;
  /** Adapter scales for this call (absent adapters keep theirs). */
  loraScales?: Record<string, number>;
}

/** One part of a LoRA adapter for NativeFlux.loraAdd (native/models/lora.h PartSpec): a low-rank pair on rows
 * [row, row + B.rows) of a BFL-named layer, or (A and B absent) a new trainable part of `rank` over `rows` rows. */
export interface NativeLoraPart {
  target: string;
  row: number;
  A?: NativeTensor;
  B?: NativeTensor;
  rank?: number;
  /** Rows of a new part (0 or absent: to the layer's last row). */
  rows?: number;
  /** alpha / rank. */
  scale: number;
}

export interface NativeFluxInfo {
  device: string;
  dtype: string;
  parameters: number;
  /** Whether the block layers hold FP8 weights. */
  fp8: boolean;
  /** Whether they are also kept transposed (NativeFluxConfig.fp8Transposed, where the FP8 backward runs on tensor cores). */
  fp8Transposed: boolean;
}

export interface NativeDistillationStepResult {
  loss: number;
  terms: NativeDistillTerms;
  skipped: number;
  grad: NativeConditioningGrad;
}

/** A loaded FLUX transformer (lib/models/flux.ts wraps it). */
export interface NativeFlux {
  info(): NativeFluxInfo;
  forward(inputs: NativeFluxInputs, capture: boolean): Promise<{ sample: NativeTensor; captures?: NativeCaptures }>;
  /** The vector-Jacobian product with respect to the conditioning inputs, for gradients of the sample and/or of
   * the stacked captures (at least one of the two). */
  forwardBackward(inputs: NativeFluxInputs, gradSample: NativeTensor | null, gradCaptures: Partial<NativeCaptures> | null,
    checkpoint: boolean): Promise<{ sample: NativeTensor; grad: NativeConditioningGrad }>;
  /** The teacher runs here (its inputs) or was run elsewhere (its captures). */
  distillationStep(teacher: NativeFluxInputs | { captures: NativeCaptures }, student: NativeFluxInputs,
    divergence: NativeDivergence, temperature: number, checkpoint: boolean): Promise<NativeDistillationStepResult>;
  /** The Euler loop; `sigmas` has one entry more than `timesteps`; stepLatents only when keepSteps (default true). */
  denoise(inputs: NativeFluxInputs, timesteps: number[], sigmas: number[], keepSteps?: boolean):
    Promise<{ latents: NativeTensor; stepLatents?: NativeTensor }>;
  /** One AdamW step of the transformer's own weights on the velocity MSE (float32 models only). */
  trainStep(inputs: NativeFluxInputs, target: NativeTensor, opts: NativeAdamWOptions):
    Promise<{ loss: number; gradNorm: number; step: number }>;
  /** Adds adapter `name` (models/lora.h add); trainable adapters keep float32 leaves, new parts drawn from `seed`. */
  loraAdd(name: string, parts: NativeLoraPart[], scale: number, trainable: boolean, seed: number): Promise<void>;
  /** 'remove' (one adapter, or all without a name), 'fuse', 'unfuse'; `scales` are set first. */
  loraOp(op: 'remove' | 'fuse' | 'unfuse', name?: string, scales?: Record<string, number>): Promise<void>;
  /** An adapter's parts (float32 copies). */
  loraWeights(name: string): Promise<{ target: string; row: number; A: NativeTensor; B: NativeTensor; scale: number }[]>;
  dispose(): void;
}

export interface NativeFluxClass {
  /** layout: 'bfl' | 'diffusers'; source: the file named in errors. */
  /** With `device`, the weights move there one by one (FP8 block weights quantized as they arrive). */
  load(config: NativeFluxConfig, weights: NativeTensorRecord, layout: 'bfl' | 'diffusers', source: string, device?: string): Promise<NativeFlux>;
  random(config: NativeFluxConfig, device: string, dtype: string, seed: number): Promise<NativeFlux>;
}

// ---------------------------------------------------------------- fine-tuning (native/napi/finetune.cc)

/** One micro-batch of NativeFineTune.backward: the FLUX inputs with hiddenStates = the clean latents x0. */
export interface NativeFineTuneBatch extends NativeFluxInputs {
  noise: NativeTensor;
  /** [B] in [0, 1]. */
  sigma: NativeTensor;
  /** The control image [B, 3, H, W] in [−1, 1] (with control branches). */
  hint?: NativeTensor;
  checkpoint?: boolean;
}

/** Parameters, AdamW moments and step of a fine-tuning run, by parameter name. */
export interface NativeFineTuneState {
  step: number;
  params: NativeTensorRecord;
  expAvg: NativeTensorRecord;
  expAvgSq: NativeTensorRecord;
}

/** A fine-tuning run through a frozen transformer: a LoRA adapter and/or LightControl's branches. */
export interface NativeFineTune {
  /** The flow-matching loss of one micro-batch; its gradients are accumulated. */
  backward(batch: NativeFineTuneBatch): Promise<number>;
  /** Clipping and AdamW on the accumulated gradients (averaged over every rank with a group); the gradient norm. */
  step(opts: NativeAdamWOptions, group?: NativeProcessGroup): Promise<number>;
  /** The state (copies); with `restore`, sets it first. */
  state(restore?: NativeFineTuneState): Promise<NativeFineTuneState>;
  names(): string[];
  dispose(): void;
}

export interface NativeFineTuneClass {
  create(flux: NativeFlux, what: { adapter?: string; control?: NativeLightControl }): Promise<NativeFineTune>;
}

// ---------------------------------------------------------------- AlignNet (native/napi/alignnet.cc)

/** The sizes of a random ('conv' variant) AlignNet. */
export interface NativeAlignNetSizes {
  /** C = MLLM layers + 1. */
  layers: number;
  inputDim: number;
  sequenceDim: number;
  pooledDim: number;
  /** Odd. */
  kernelSize: number;
}

export interface NativeAlignNetInfo extends NativeAlignNetSizes {
  variant: 'conv' | 'scale' | 'mean';
  device: string;
  dtype: string;
}

/** The optimizer state (float32 masters and AdamW moments), for checkpoints. */
export interface NativeTrainingState {
  step: number;
  master: NativeTensorRecord;
  expAvg: NativeTensorRecord;
  expAvgSq: NativeTensorRecord;
}

export interface NativeAlignNet {
  info(): NativeAlignNetInfo;
  forward(hiddenStates: NativeTensor): Promise<NativeConditioningGrad>;
  /** The weights under their official names (views of the model's). */
  weights(): NativeTensorRecord;
  /** Accumulates d⟨grad, output⟩ / d weights. */
  backward(hiddenStates: NativeTensor, gradEncoderHiddenStates: NativeTensor, gradPooledProjections: NativeTensor): Promise<void>;
  /** AdamW on the masters; with a group, the gradients are averaged over every rank first. Resolves to the gradient norm. */
  optimizerStep(opts: NativeAdamWOptions, group?: NativeProcessGroup): Promise<number>;
  broadcastWeights(group: NativeProcessGroup, root?: number): Promise<void>;
  /** The optimizer state (copies); with `restore`, sets it first. */
  trainingState(restore?: NativeTrainingState): NativeTrainingState;
  dispose(): void;
}

export interface NativeAlignNetClass {
  /** Variant and sizes come from the weights' names and shapes; eps: the LayerNorm's. */
  load(weights: NativeTensorRecord, eps: number, source: string): Promise<NativeAlignNet>;
  random(sizes: NativeAlignNetSizes, eps: number, device: string, dtype: string, seed: number): Promise<NativeAlignNet>;
}

// ---------------------------------------------------------------- LightControl (native/napi/lightcontrol.cc)

/** The ControlNeXt branches' config (the parseConfig of native/napi/lightcontrol.cc; lib/models/lightcontrol.ts
 * validates it from config.json's snake_case fields). */
export interface NativeLightControlConfig {
  inChannels: [number, number];
  outChannels: [number, number];
  groups: [number, number];
  timeEmbedDim: number;
  finalOutChannels: number;
  embeddingChannels: [number, number, number];
  embeddingNormGroups: number;
  midNormGroups: number;
  /** D, FLUX's inner dim (3072). */
  controlOutChannels: number;
  timeProjChannels: number;
  numBranches: number;
}

export interface NativeLightControlInfo {
  device: string;
  dtype: string;
  /** Parameter elements over all branches. */
  parameters: number;
  branches: number;
}

export interface NativeLightControl {
  info(): NativeLightControlInfo;
  /** hint [B, 3, 16h, 16w], timestep [B] or [] (0..1) → residuals [B, branches, h·w, D]. */
  forward(hint: NativeTensor, timestep: NativeTensor): Promise<NativeTensor>;
  /** The weights under their official names `<i>.<param>` (views of the model's). */
  weights(): NativeTensorRecord;
  dispose(): void;
}

// ---------------------------------------------------------------- text encoders (native/napi/encoders.cc)

/** T5 encoder config (the T5 parseConfig of native/napi/encoders.cc). */
export interface NativeT5Config {
  vocabSize: number;
  dModel: number;
  dKv: number;
  dFf: number;
  numLayers: number;
  numHeads: number;
  relativeAttentionNumBuckets: number;
  relativeAttentionMaxDistance: number;
  layerNormEpsilon: number;
  gated: boolean;
  act: string;
}

export interface NativeT5Encoder {
  forward(inputs: { inputIds: NativeTensor; attentionMask?: NativeTensor }):
    Promise<{ lastHiddenState: NativeTensor; hiddenStates: NativeTensor }>;
  dispose(): void;
}

/** CLIP text encoder config (the CLIP parseConfig of native/napi/encoders.cc). */
export interface NativeClipConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numAttentionHeads: number;
  numHiddenLayers: number;
  maxPositionEmbeddings: number;
  eosTokenId: number;
  layerNormEps: number;
  hiddenAct: 'quick_gelu' | 'gelu';
  /** The text_projection's output width (whole CLIPModel checkpoints); absent: no projection. */
  projectionDim?: number;
}

export interface NativeClipTextEncoder {
  /** textEmbeds: pooledOutput · text_projectionᵀ, for checkpoints with the projection (projectionDim set). */
  forward(inputs: { inputIds: NativeTensor }):
    Promise<{ lastHiddenState: NativeTensor; pooledOutput: NativeTensor; hiddenStates: NativeTensor; textEmbeds?: NativeTensor }>;
  dispose(): void;
}

/** CLIP vision tower config (the clipvision parseConfig of native/napi/encoders.cc). */
export interface NativeClipVisionConfig {
  hiddenSize: number;
  intermediateSize: number;
  numAttentionHeads: number;
  numHiddenLayers: number;
  imageSize: number;
  patchSize: number;
  numChannels: number;
  layerNormEps: number;
  hiddenAct: string;
  /** The visual_projection's output width; absent: no projection. */
  projectionDim?: number;
}
export interface NativeClipVisionEncoder {
  forward(inputs: { pixelValues: NativeTensor }): Promise<{ lastHiddenState: NativeTensor; poolerOutput: NativeTensor; imageEmbeds?: NativeTensor }>;
  dispose(): void;
}

/** Qwen2.5-VL vision tower config (the Qwen parseConfig of native/napi/encoders.cc, `vision`). */
export interface NativeQwenVisionConfig {
  depth: number;
  hiddenSize: number;
  numHeads: number;
  intermediateSize: number;
  outHiddenSize: number;
  patchSize: number;
  spatialMergeSize: number;
  temporalPatchSize: number;
  windowSize: number;
  inChannels: number;
  tokensPerSecond: number;
  fullAttBlockIndexes: number[];
  imageTokenId: number;
  videoTokenId: number;
  visionStartTokenId: number;
}

/** Qwen2.5-VL config (the Qwen parseConfig of native/napi/encoders.cc); `vision` absent: a text-only model. */
export interface NativeQwenConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Three entries, 2 × their sum = the head dim. */
  mropeSection: number[];
  vision?: NativeQwenVisionConfig;
}

/** The inputs of one Qwen prefill (and decode, with maxNewTokens) (the Qwen parseInputs of native/napi/encoders.cc). */
export interface NativeQwenInputs {
  inputIds: NativeTensor;
  attentionMask?: NativeTensor;
  pixelValues?: NativeTensor;
  imageGridThw?: NativeTensor;
  pixelValuesVideos?: NativeTensor;
  videoGridThw?: NativeTensor;
  secondPerGridT?: number;
  /** Default 'x2i'. */
  padRule?: 'x2i' | 'mask';
  /** Every layer's state (default true) or the last only. */
  capture?: boolean;
  /** Greedy decoding of up to this many tokens (0..4096) after the prefill. */
  maxNewTokens?: number;
  eosTokenIds?: number[];
  /** Default 'mrope'. */
  positions?: 'mrope' | 'sequential';
}

export interface NativeQwenVLEncoder {
  /** answerStates and tokens only when maxNewTokens > 0. */
  forward(inputs: NativeQwenInputs): Promise<{ hiddenStates: NativeTensor; answerStates?: NativeTensor; tokens?: number[] }>;
  dispose(): void;
}

/** InternVL2.5: InternViT's settings, the Qwen2.5 language model (mropeSection [hd/2, 0, 0]: 1-D RoPE), the
 * pixel-shuffle ratio and the <IMG_CONTEXT> id. */
export interface NativeInternVLConfig {
  vision: { hiddenSize: number; numHiddenLayers: number; numAttentionHeads: number; intermediateSize: number; imageSize: number;
    patchSize: number; numChannels: number; layerNormEps: number };
  llm: NativeQwenConfig;
  downsampleRatio: number;
  imgContextTokenId: number;
}

export interface NativeInternVLInputs {
  inputIds?: NativeTensor;
  attentionMask?: NativeTensor;
  /** [tiles, 3, s, s], normalised. */
  pixelValues?: NativeTensor;
  capture?: boolean;
  /** Only the image features [tiles, tokens, H] (as hiddenStates); inputIds not needed. */
  embedsOnly?: boolean;
}

export interface NativeInternVLEncoder {
  forward(inputs: NativeInternVLInputs): Promise<{ hiddenStates: NativeTensor }>;
  dispose(): void;
}

/** MiniCPM-o 2.6: the Qwen2.5 language model (1-D RoPE), SigLIP NaViT + resampler, Whisper encoder + projection. */
export interface NativeMiniCPMOConfig {
  llm: NativeQwenConfig;
  vision?: { hiddenSize: number; numHiddenLayers: number; numAttentionHeads: number; intermediateSize: number; imageSize: number;
    patchSize: number; numChannels: number; layerNormEps: number };
  queryNum?: number;
  audio?: { dModel: number; encoderLayers: number; encoderAttentionHeads: number; encoderFfnDim: number; numMelBins: number;
    maxSourcePositions: number };
  audioPoolStep?: number;
  audioChunkLength?: number;
}

export interface NativeMiniCPMOInputs {
  inputIds?: NativeTensor;
  attentionMask?: NativeTensor;
  pixelValues?: NativeTensor[];
  tgtSizes?: NativeTensor;
  imageBound?: NativeTensor;
  audioFeatures?: NativeTensor;
  audioFeatureLens?: NativeTensor;
  audioBounds?: NativeTensor;
  capture?: boolean;
  /** Only one tower's features (as hiddenStates): 'image' [n, Q, H] or 'audio' [Σ N, H]. */
  only?: 'image' | 'audio';
}

export interface NativeMiniCPMOEncoder {
  forward(inputs: NativeMiniCPMOInputs): Promise<{ hiddenStates: NativeTensor }>;
  dispose(): void;
}

/** The vision settings qwenRopeIndex needs. */
export interface NativeRopeIndexOptions {
  imageTokenId: number;
  videoTokenId: number;
  merge: number;
  tokensPerSecond: number;
  /** Default 1. */
  secondPerGridT?: number;
}

// ---------------------------------------------------------------- VAE (native/napi/encoders.cc)

/** AutoencoderKL config (the VAE parseConfig of native/napi/encoders.cc). */
export interface NativeVaeConfig {
  inChannels: number;
  outChannels: number;
  latentChannels: number;
  normNumGroups: number;
  layersPerBlock: number;
  blockOutChannels: number[];
  midBlockAddAttention: boolean;
}

export interface NativeAutoencoderKL {
  /** 'encode': image → posterior mean; 'decode': latents → raw decoder output. */
  forward(x: NativeTensor, mode: 'encode' | 'decode'): Promise<NativeTensor>;
  dispose(): void;
}

// ---------------------------------------------------------------- distributed (native/napi/distributed.cc)

export type NativeProcessGroupOp = 'allReduce' | 'allReduceMean' | 'broadcast' | 'send' | 'recv' | 'barrier' | 'close';

/** NativeProcessGroup.create's options (defaults: store backend, rank 0 of 1, 127.0.0.1:29500, 30 minutes). */
export interface NativeProcessGroupOptions {
  backend?: 'nccl' | 'store';
  rank?: number;
  worldSize?: number;
  host?: string;
  port?: number;
  timeoutMs?: number;
}

export interface NativeProcessGroup {
  info(): { rank: number; worldSize: number; backend: 'nccl' | 'store' };
  /** tensor: required except for 'barrier' and 'close'; peer: the root of 'broadcast', the other rank of send/recv. */
  op(name: NativeProcessGroupOp, tensor?: NativeTensor, peer?: number): Promise<void>;
  dispose(): void;
}

export interface NativeProcessGroupClass {
  /** Resolves after the rendezvous (rank 0 serves the store). */
  create(opts: NativeProcessGroupOptions): Promise<NativeProcessGroup>;
}

// ---------------------------------------------------------------- distillation (native/napi/distill.cc)

export interface NativeDistillationLossResult {
  loss: number;
  terms: NativeDistillTerms;
  skipped: number;
  /** d loss / d student captures, only when asked for. */
  grads?: NativeCaptures;
}

// ---------------------------------------------------------------- the export table

/** The exports of x2i.node (native/napi/addon.cc InitX2I): the production table. */
/** WhisperFeatureExtractor's settings (preprocessor_config.json); omitted fields take Whisper's values. */
export interface NativeAudioFeatureConfig {
  mels?: number;
  samplingRate?: number;
  nFft?: number;
  hop?: number;
  chunkSeconds?: number;
}

export interface Addon {
  NativeTensor: {
    fromArray(data: TypedArray, shape: number[], dtype?: string, device?: string): NativeTensor;
  };
  NativeFlux: NativeFluxClass;
  NativeAlignNet: NativeAlignNetClass;
  NativeT5Encoder: NativeModelClass<NativeT5Config, NativeT5Encoder>;
  NativeClipTextEncoder: NativeModelClass<NativeClipConfig, NativeClipTextEncoder>;
  NativeClipVisionEncoder: NativeModelClass<NativeClipVisionConfig, NativeClipVisionEncoder>;
  NativeQwenVLEncoder: NativeModelClass<NativeQwenConfig, NativeQwenVLEncoder>;
  NativeInternVLEncoder: NativeModelClass<NativeInternVLConfig, NativeInternVLEncoder>;
  NativeMiniCPMOEncoder: NativeModelClass<NativeMiniCPMOConfig, NativeMiniCPMOEncoder>;
  NativeAutoencoderKL: NativeModelClass<NativeVaeConfig, NativeAutoencoderKL>;
  NativeLightControl: NativeModelClass<NativeLightControlConfig, NativeLightControl>;
  NativeProcessGroup: NativeProcessGroupClass;
  NativeFineTune: NativeFineTuneClass;
  /** The [3, B, S] M-RoPE position ids (synchronous). */
  qwenRopeIndex(inputIds: NativeTensor, attentionMask: NativeTensor | undefined, imageGridThw: NativeTensor | undefined,
    videoGridThw: NativeTensor | undefined, opts: NativeRopeIndexOptions): NativeTensor;
  /** The X2I loss over all taps; method 'fused' (default) | 'autograd' (the composite reference). */
  distillationLoss(teacher: NativeCaptures, student: NativeCaptures, temperature?: number, divergence?: NativeDivergence,
    wantGrad?: boolean, method?: 'fused' | 'autograd'): Promise<NativeDistillationLossResult>;
  memory(): MemoryInfo;
  buildInfo(): BuildInfo;
  cudaIsAvailable(): boolean;
  cudaDeviceCount(): number;
  cudaSynchronize(device?: string): Promise<void>;
  cudaMemory(device?: string, reset?: boolean, emptyCache?: boolean): CudaMemoryInfo;
  /** The caching allocator holds at most `bytes` on the device (null: no cap). */
  cudaSetMemoryLimit(device: string, bytes: number | null): void;
  /** Whether this build has NCCL (the 'nccl' process-group backend). */
  ncclAvailable(): boolean;
  setNumThreads(n: number): void;
  /** Byte ranges of a file after dataStart, each re-checked against the file: [name, dtype, shape, begin, end] (the
   * range holds exactly the tensor), or [..., stride, offset] (a view of the storage [begin, end), each storage read
   * once). Owned memory; `mmap`: CPU tensors are zero-copy views of a private mapping instead. The tensors come
   * back in entry order. */
  readSafetensors(path: string, dataStart: number, entries: NativeReadEntry[],
    device?: string, dtype?: string, mmap?: boolean): Promise<NativeTensor[]>;
  writeSafetensors(path: string, header: Buffer, tensors: NativeTensor[], nbytes: number[]): Promise<void>;
  zeros(shape: number[], dtype: string, device: string): Promise<NativeTensor>;
  randn(shape: number[], dtype: string, device: string, seed?: number): Promise<NativeTensor>;
  matmul(a: NativeTensor, b: NativeTensor): Promise<NativeTensor>;
  /** ‖a − b‖ / ‖b‖ in float64. */
  relativeError(a: NativeTensor, b: NativeTensor): Promise<number>;
  /** uint8 [H, W, C] → uint8 [outH, outW, C], bicubic with antialiasing (PIL's BICUBIC): 'torch' (default,
   * PyTorch's float kernel) or 'pil' (Pillow's fixed-point passes, bit for bit). */
  resizeImage(image: NativeTensor, outH: number, outW: number, method?: 'torch' | 'pil'): Promise<NativeTensor>;
  /** [B, C, h, w] → [B, (h/2)(w/2), 4C]. */
  packLatents(latents: NativeTensor): Promise<NativeTensor>;
  /** [B, (h/2)(w/2), 4C] → z / scale + shift as [B, C, h, w]. */
  unpackLatents(latents: NativeTensor, h: number, w: number, scale: number, shift: number): Promise<NativeTensor>;
  /** The VAE's [B, C, h, w] → pack((z − shift)·scale) [B, (h/2)(w/2), 4C] in float32 (unpackLatents' inverse). */
  encodeLatents(latents: NativeTensor, scale: number, shift: number): Promise<NativeTensor>;
  /** σ·noise + (1 − σ)·x0 in float32, as noise's dtype and device (the scheduler's scale_noise). */
  noiseLatents(x0: NativeTensor, noise: NativeTensor, sigma: number): Promise<NativeTensor>;
  /** (1 − mask)·known + mask·x in float32, as x's dtype and device (inpainting). */
  blendLatents(x: NativeTensor, known: NativeTensor, mask: NativeTensor): Promise<NativeTensor>;
  /** Decoded → (x/2 + 0.5) clamped to [0, 1], float32. */
  toImage(decoded: NativeTensor): Promise<NativeTensor>;
  /** [B, 3, H, W] in [0, 1] → uint8 [B, H, W, 3] on the CPU. */
  imageToUint8(images: NativeTensor): Promise<NativeTensor>;
  /** SSIM and PSNR per image of two [B, C, H, W] batches in [0, 1]. */
  imageAgreement(a: NativeTensor, b: NativeTensor): Promise<{ ssim: number[]; psnr: number[] }>;
  /** waveform [n] float → Whisper's log-mel [mels, F] in float32 (30 s pieces, as MiniCPM-o's processor). */
  audioLogMel(waveform: NativeTensor, config?: NativeAudioFeatureConfig): Promise<NativeTensor>;
  /** waveform [n] float from `from` Hz to `to` Hz (windowed-sinc) → [ceil(n·to/from)]. */
  audioResample(waveform: NativeTensor, from: number, to: number): Promise<NativeTensor>;
  /** The benchmark and test probes (lib/testing.ts); no production code uses them. */
  testing: AddonTesting;
}

/** The probes of `addon.testing`: the bridge's own cost, copies, single distillation taps, SDPA's kernel choice. */
export interface AddonTesting {
  noop(): void;
  noopAsync(): Promise<void>;
  /** Median seconds of dst.copy_(src) of `nbytes` in LibTorch, synchronised; fresh: dst allocated each time. */
  benchCopy(nbytes: number, src: string, dst: string, iters: number, pinned?: boolean, fresh?: boolean): Promise<number>;
  /** Mean ms of one tap's loss-and-gradient pass over `iters` calls (default 100); method 'fused' (default) | 'composite'. */
  benchDistillTap(teacher: NativeTensor, student: NativeTensor, divergence: NativeDivergence, temperature: number,
    incoming?: NativeTensor, method?: 'fused' | 'composite', iters?: number): Promise<number>;
  /** One tap through the pass the training step's backward uses: its term and incoming + d term / d student. */
  distillTap(teacher: NativeTensor, student: NativeTensor, divergence: NativeDivergence, temperature: number,
    incoming?: NativeTensor, method?: 'fused' | 'composite'): Promise<{ term: number; grad: NativeTensor }>;
  /** A view (tensor.narrow): row-strided inputs for the kernels. */
  narrowView(tensor: NativeTensor, dim: number, start: number, length: number): NativeTensor;
  /** The kernel at::scaled_dot_product_attention picks for q = k = v of this shape [B, H, L, D]. */
  sdpaBackend(shape: number[], dtype: string, device: string): string;
  /** GroupNorm forward and backward (of ⟨dy, y⟩) by x2i's split reduction or by LibTorch's group_norm (default eps 1e-5). */
  groupNorm(x: NativeTensor, groups: number, weight: NativeTensor, bias: NativeTensor, dy: NativeTensor,
    method: 'split' | 'libtorch', eps?: number): Promise<{ y: NativeTensor; dx: NativeTensor; dw: NativeTensor; db: NativeTensor }>;
  /** Unfused LoRA's one-pass term: epilogue(y + k · u · upᵀ) with y = yAug[:, :N], u = yAug[:, N:] (rank columns), by the
   * CUDA kernel (optionally with up's chunk mask: true computes it, or the int32 mask) or its LibTorch twin; gated: res + gate · v (gate: one row per sample). */
  lowRankAdd(yAug: NativeTensor, rank: number, up: NativeTensor, k: number, epilogue: 'none' | 'gelu' | 'gated',
    res: NativeTensor | undefined, gate: NativeTensor | undefined, method: 'kernel' | 'composite', mask?: boolean | NativeTensor): Promise<NativeTensor>;
  /** Mean ms of one lowRankAdd call (its arguments) over `iters` back-to-back calls in the worker (default 100). */
  benchLowRankAdd(yAug: NativeTensor, rank: number, up: NativeTensor, k: number, epilogue: 'none' | 'gelu' | 'gated',
    res: NativeTensor | undefined, gate: NativeTensor | undefined, method: 'kernel' | 'composite', mask: boolean | NativeTensor, iters?: number): Promise<number>;
  /** cudaProfilerStart (true) / cudaProfilerStop (false) for a profiler whose capture starts off; false without CUDA kernels. */
  cudaProfiler(start: boolean): boolean;
  /** FP8 activations: per-row scale max|row| / 448 and e4m3 values (of x · colScale with column scales), by the CUDA
   * kernel or its LibTorch twin. */
  fp8QuantizeRows(x: NativeTensor, method: 'kernel' | 'twin', colScale?: NativeTensor): Promise<{ q: NativeTensor; scale: NativeTensor }>;
  /** An FP8 layer made from `weight` (quantized per row): y = W x + b by its own path ('gemm') or the float64 product of
   * the same quantized operands on the CPU ('twin64'); with dy, dx through the layer's backward ('gemm') or the float64
   * product of the FP8 backward's quantized operands ('twin64'). */
  fp8Linear(x: NativeTensor, weight: NativeTensor, bias: NativeTensor | undefined, method: 'gemm' | 'twin64',
    dy?: NativeTensor): Promise<{ y: NativeTensor; w8: NativeTensor; scale: NativeTensor; dx?: NativeTensor; path: 'scaled_mm' | 'twin';
      backwardPath: 'scaled_mm' | 'dequantized' }>;
  /** The FP8 backward's weight transposition (a 2-D CUDA tensor of 1-byte elements) → its transpose, contiguous. */
  fp8Transpose(x: NativeTensor): Promise<NativeTensor>;
  /** The tanh GELU (and with dy its input gradient) by the row kernel of FLUX's MLP ranges or by LibTorch. */
  geluTanhRows(x: NativeTensor, method: 'kernel' | 'twin', dy?: NativeTensor, out?: NativeTensor): Promise<{ y: NativeTensor; dx?: NativeTensor }>;
  /** Mean ms of one FP8 layer call (weight quantized once) and of the bf16 linear, back to back in the worker. */
  benchFp8Linear(x: NativeTensor, weight: NativeTensor, iters?: number): Promise<{ fp8Ms: number; bf16Ms: number; path: 'scaled_mm' | 'twin' }>;
  /** The transformer's captured denoising step (sample/euler.cc). */
  stepGraphState(flux: NativeFlux): 'none' | 'fresh' | 'captured' | 'failed';
}

/** The production export names, at run time (the type system keeps them in step with `Addon`). */
export const ADDON_EXPORTS: Readonly<Record<keyof Addon, true>> = Object.freeze({
  NativeTensor: true, NativeFlux: true, NativeAlignNet: true, NativeT5Encoder: true, NativeClipTextEncoder: true, NativeClipVisionEncoder: true,
  NativeQwenVLEncoder: true, NativeInternVLEncoder: true, NativeMiniCPMOEncoder: true, NativeAutoencoderKL: true, NativeLightControl: true, NativeProcessGroup: true, NativeFineTune: true, qwenRopeIndex: true,
  distillationLoss: true, memory: true, buildInfo: true, cudaIsAvailable: true, cudaDeviceCount: true,
  cudaSynchronize: true, cudaMemory: true, cudaSetMemoryLimit: true, ncclAvailable: true, setNumThreads: true, readSafetensors: true,
  writeSafetensors: true, zeros: true, randn: true, matmul: true, relativeError: true, audioLogMel: true, audioResample: true,
  resizeImage: true, packLatents: true, unpackLatents: true, toImage: true, imageToUint8: true, imageAgreement: true,
  encodeLatents: true, noiseLatents: true, blendLatents: true,
  testing: true,
} satisfies Record<keyof Addon, true>);

/** The probe names of `addon.testing`, at run time. */
export const ADDON_TESTING_EXPORTS: Readonly<Record<keyof AddonTesting, true>> = Object.freeze({
  noop: true, noopAsync: true, benchCopy: true, benchDistillTap: true, distillTap: true, narrowView: true, sdpaBackend: true,
  groupNorm: true, lowRankAdd: true, benchLowRankAdd: true, cudaProfiler: true, fp8QuantizeRows: true, fp8Linear: true,
  benchFp8Linear: true, fp8Transpose: true, geluTanhRows: true, stepGraphState: true,
} satisfies Record<keyof AddonTesting, true>);

/** Which members of a native class the contract declares: its statics and its instances' methods. */
interface ClassMembers<S, I> {
  statics: Readonly<Record<keyof S, true>>;
  methods: Readonly<Record<keyof I, true>>;
}

/** The native classes of the contract and their members. */
interface AddonClasses {
  readonly NativeTensor: ClassMembers<Addon['NativeTensor'], NativeTensor>;
  readonly NativeFlux: ClassMembers<NativeFluxClass, NativeFlux>;
  readonly NativeAlignNet: ClassMembers<NativeAlignNetClass, NativeAlignNet>;
  readonly NativeT5Encoder: ClassMembers<Addon['NativeT5Encoder'], NativeT5Encoder>;
  readonly NativeClipTextEncoder: ClassMembers<Addon['NativeClipTextEncoder'], NativeClipTextEncoder>;
  readonly NativeClipVisionEncoder: ClassMembers<Addon['NativeClipVisionEncoder'], NativeClipVisionEncoder>;
  readonly NativeQwenVLEncoder: ClassMembers<Addon['NativeQwenVLEncoder'], NativeQwenVLEncoder>;
  readonly NativeInternVLEncoder: ClassMembers<Addon['NativeInternVLEncoder'], NativeInternVLEncoder>;
  readonly NativeMiniCPMOEncoder: ClassMembers<Addon['NativeMiniCPMOEncoder'], NativeMiniCPMOEncoder>;
  readonly NativeAutoencoderKL: ClassMembers<Addon['NativeAutoencoderKL'], NativeAutoencoderKL>;
  readonly NativeLightControl: ClassMembers<Addon['NativeLightControl'], NativeLightControl>;
  readonly NativeProcessGroup: ClassMembers<NativeProcessGroupClass, NativeProcessGroup>;
  readonly NativeFineTune: ClassMembers<NativeFineTuneClass, NativeFineTune>;
}

/** The members of every native class, at run time (the type system keeps them in step with the interfaces). */
export const ADDON_CLASSES: AddonClasses = Object.freeze({
  NativeTensor: { statics: { fromArray: true }, methods: { info: true, toArray: true, to: true, dispose: true } },
  NativeFlux: { statics: { load: true, random: true }, methods: { info: true, forward: true, forwardBackward: true,
    distillationStep: true, trainStep: true, denoise: true, loraAdd: true, loraOp: true, loraWeights: true, dispose: true } },
  NativeAlignNet: { statics: { load: true, random: true }, methods: { info: true, forward: true, weights: true,
    backward: true, optimizerStep: true, broadcastWeights: true, trainingState: true, dispose: true } },
  NativeT5Encoder: { statics: { load: true, random: true }, methods: { forward: true, dispose: true } },
  NativeClipTextEncoder: { statics: { load: true, random: true }, methods: { forward: true, dispose: true } },
  NativeClipVisionEncoder: { statics: { load: true, random: true }, methods: { forward: true, dispose: true } },
  NativeQwenVLEncoder: { statics: { load: true, random: true }, methods: { forward: true, dispose: true } },
  NativeInternVLEncoder: { statics: { load: true, random: true }, methods: { forward: true, dispose: true } },
  NativeMiniCPMOEncoder: { statics: { load: true, random: true }, methods: { forward: true, dispose: true } },
  NativeAutoencoderKL: { statics: { load: true, random: true }, methods: { forward: true, dispose: true } },
  NativeLightControl: { statics: { load: true, random: true }, methods: { info: true, forward: true, weights: true,
    dispose: true } },
  NativeProcessGroup: { statics: { create: true }, methods: { info: true, op: true, dispose: true } },
  NativeFineTune: { statics: { create: true }, methods: { backward: true, step: true, state: true, names: true, dispose: true } },
} satisfies AddonClasses);
