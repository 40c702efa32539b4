/** x2i: X2I (FLUX.1 + multimodal-LLM attention distillation) for Node.js over a native LibTorch addon. */
export { Tensor, randn, zeros, matmul, relativeError, memory, setNumThreads, cuda, DTYPES } from './core/tensor.js';
export type { DType, AnyDType, ExtraDType, TensorOptions } from './core/tensor.js';
export { loadSafetensors, saveSafetensors, loadTorchCheckpoint, readSafetensorsHeader, MAX_HEADER_BYTES } from './core/io.js';
export type { LoadOptions, SafetensorsHeader, SafetensorsEntry } from './core/io.js';
export { X2IError, DisposedError } from './core/errors.js';
export { SerialQueue } from './core/queue.js';
export { FluxTransformer, FLUX_DEV_CONFIG } from './models/flux.js';
export type { FluxConfig, FluxLoadOptions, FluxInputs, DenoiseInputs, FluxCaptures, FluxOutput, DistillationStepResult, FluxTrainOptions,
  FluxCallOptions, LoadLoraOptions, AddLoraOptions } from './models/flux.js';
export { defaultLoraTargets, diffusersModules, fluxLinearNames, matchModules } from './models/lora.js';
export type { LoraPart, LoraModelShape } from './models/lora.js';
export { LoraTrainer, LightControlTrainer, it2iPrompt } from './train/finetune.js';
export type { FineTuneSample, FineTuneOptions, FineTuneStepInfo, FineTuneFitOptions, FineTuneParts, LoraTrainerOptions,
  LightControlTrainerOptions } from './train/finetune.js';
export { distillationLoss } from './train/distill.js';
export { AlignNet } from './models/alignnet.js';
export { LightControl, LIGHTCONTROL_OFFICIAL_CONFIG } from './models/lightcontrol.js';
export { FlowMatchEulerScheduler, FLUX_DEV_SCHEDULER } from './sample/scheduler.js';
export { AutoencoderKL } from './models/vae.js';
export { FluxPipeline, encodeImage } from './sample/pipeline.js';
export type { FluxGenerateOptions, FluxImages } from './sample/pipeline.js';
export { outpaintCanvas } from './sample/image_input.js';
export type { GenerateImageInput, OutpaintMargins } from './sample/image_input.js';
export { X2IGenerator } from './sample/generator.js';
export { X2ITrainer, loadCaptions } from './train/trainer.js';
export * as datasets from './train/data.js';
export * as audio from './models/audio.js';
export type { AudioLoadOptions, DecodedAudio, AudioInput, LogMelOptions } from './models/audio.js';
export type { DecodedImage, TrainingSample, SampleInput, ImageInput, DatasetOptions, FolderOptions, JsonlOptions, JsonlFields, WebDatasetOptions, WebDatasetGroup, ResizeSpec, ResizeOption } from './train/data.js';
export { imageAgreement, evaluateAgreement, evaluatePrompts, ClipScorer } from './sample/evaluate.js';
export type { PromptEvaluation } from './sample/evaluate.js';
export { ClipVisionEncoder, preprocessClip } from './models/clip_vision.js';
export type { ClipVisionOutput, ClipImageProcessorOptions } from './models/clip_vision.js';
export type { ClipTextOutput } from './models/clip.js';
export { decodeRgb } from './core/image_decode.js';
export { runDemo } from './app/demo.js';
export { ProcessGroup, launch } from './train/distributed.js';
export type { ProcessGroupOptions, LaunchOptions } from './train/distributed.js';
export type { DemoOptions, DemoSummary } from './app/demo.js';
export type { AgreementResult } from './sample/evaluate.js';
export type { X2ITrainerOptions, X2IBatch, X2IStepInfo } from './train/trainer.js';
export type { X2IGenerateOptions } from './sample/generator.js';
export type { FlowMatchEulerConfig } from './sample/scheduler.js';
export { T5Encoder } from './models/t5.js';
export { ClipTextEncoder } from './models/clip.js';
export { QwenVLEncoder } from './models/qwen.js';
export { InternVLEncoder, INTERNVL_IMG_CONTEXT_ID } from './models/internvl.js';
export { MiniCPMOEncoder } from './models/minicpm.js';
export type { MiniCPMOInputs, MiniCPMOPrompt, MiniCPMOProcessOptions } from './models/minicpm.js';
export { studentFromPretrained, encodeStudentPrompt } from './models/students.js';
export type { StudentEncoder, StudentPrompt, StudentEncodeOptions } from './models/students.js';
export type { InternVLInputs, InternVLPrompt } from './models/internvl.js';
export { preprocessInternVL, tileGrid } from './models/internvl_vision.js';
export type { InternVLVisionOptions } from './models/internvl_vision.js';
export type { QwenVLInputs, QwenPrompt } from './models/qwen.js';
export { preprocessImages, preprocessVideo, smartResize } from './models/qwen_vision.js';
export type { RgbImage, QwenVisionOptions } from './models/qwen_vision.js';
export type { PretrainedOptions, RandomOptions } from './models/pretrained.js';
export { QwenTokenizer, T5Tokenizer, ClipTokenizer, InternVLTokenizer, INTERNVL_SYSTEM_MESSAGE, MiniCPMOTokenizer, pythonRepr, QWEN_VL_CHAT_TEMPLATE } from './models/tokenizers.js';
export type { Encoded, EncodeOptions, PromptTokenizer, ChatMessage, ChatContent } from './models/tokenizers.js';
export type { AlignNetInfo, AlignNetLoadOptions } from './models/alignnet.js';
export type { LightControlConfig, LightControlFullConfig, LightControlInfo, LightControlInputs, LightControlLoadOptions } from './models/lightcontrol.js';
export type { Divergence, DistillationOptions, DistillationResult } from './train/distill.js';
export type { MemoryInfo, BuildInfo, TypedArray, CudaMemoryInfo } from './core/native.js';
import { addon, type BuildInfo } from './core/native.js';

/** How the addon was built: LibTorch version and flavour, CUDA, threads. */
export function buildInfo(): BuildInfo {
  return addon().buildInfo();
}
export { resolveModelPath, hubCacheDirs } from './core/hub.js';
export type { HubOptions } from './core/hub.js';
export type { LoadProgress } from './core/io.js';
export { createServer } from './app/server.js';
export type { ServerOptions, X2IServer, ServedModel, ServedGenerator, GenerationDefaults, ServerStats, RequestLog } from './app/server.js';
export { randomServedModel } from './app/serve.js';
export type { RandomServedModelOptions } from './app/serve.js';
