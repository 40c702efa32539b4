/** x2i: X2I (FLUX.1 + multimodal-LLM attention distillation) for Node.js over a native LibTorch addon. */
export { Tensor, randn, zeros, matmul, relativeError, memory, setNumThreads, cuda, DTYPES } from './tensor.js';
export type { DType, AnyDType, ExtraDType, TensorOptions } from './tensor.js';
export { loadSafetensors, saveSafetensors, loadTorchCheckpoint, readSafetensorsHeader, MAX_HEADER_BYTES } from './io.js';
export type { LoadOptions, SafetensorsHeader, SafetensorsEntry } from './io.js';
export { X2IError, DisposedError } from './errors.js';
export { SerialQueue } from './queue.js';
export { FluxTransformer, FLUX_DEV_CONFIG } from './flux.js';
export type { FluxConfig, FluxLoadOptions, FluxInputs, DenoiseInputs, FluxCaptures, FluxOutput, DistillationStepResult, FluxTrainOptions } from './flux.js';
export { distillationLoss } from './distill.js';
export { AlignNet } from './alignnet.js';
export { FlowMatchEulerScheduler, FLUX_DEV_SCHEDULER } from './scheduler.js';
export { AutoencoderKL } from './vae.js';
export { FluxPipeline, encodeImage } from './pipeline.js';
export type { FluxGenerateOptions, FluxImages } from './pipeline.js';
export { X2IGenerator } from './generator.js';
export { X2ITrainer, loadCaptions } from './trainer.js';
export { imageAgreement, evaluateAgreement } from './evaluate.js';
export { runDemo } from './demo.js';
export { ProcessGroup, launch } from './distributed.js';
export type { ProcessGroupOptions, LaunchOptions } from './distributed.js';
export type { DemoOptions, DemoSummary } from './demo.js';
export type { AgreementResult } from './evaluate.js';
export type { X2ITrainerOptions, X2IBatch, X2IStepInfo } from './trainer.js';
export type { X2IGenerateOptions } from './generator.js';
export type { FlowMatchEulerConfig } from './scheduler.js';
export { T5Encoder } from './t5.js';
export { ClipTextEncoder } from './clip.js';
export { QwenVLEncoder } from './qwen.js';
export type { QwenVLInputs, QwenPrompt } from './qwen.js';
export { preprocessImages, preprocessVideo, smartResize } from './qwen_vision.js';
export type { RgbImage, QwenVisionOptions } from './qwen_vision.js';
export type { PretrainedOptions, RandomOptions } from './pretrained.js';
export { QwenTokenizer, T5Tokenizer, ClipTokenizer, pythonRepr, QWEN_VL_CHAT_TEMPLATE } from './tokenizers.js';
export type { Encoded, EncodeOptions, PromptTokenizer, ChatMessage, ChatContent } from './tokenizers.js';
export type { AlignNetInfo, AlignNetLoadOptions } from './alignnet.js';
export type { Divergence, DistillationOptions, DistillationResult } from './distill.js';
export type { MemoryInfo, BuildInfo, TypedArray, CudaMemoryInfo } from './native.js';
import { addon, type BuildInfo } from './native.js';

/** How the addon was built: LibTorch version and flavour, CUDA, threads. */
export function buildInfo(): BuildInfo {
  return addon().buildInfo();
}
