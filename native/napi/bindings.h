// Every entry point the export table (addon.cc) lists, by the binding file that defines it.
#pragma once
#include "napi/common.h"

#include <memory>

namespace x2i::dist {
class Group;
}

namespace x2i {

// models: flux.cc, alignnet.cc, encoders.cc
Napi::Function initFlux(Napi::Env env);              // NativeFlux
Napi::Function initAlignNet(Napi::Env env);          // NativeAlignNet
Napi::Function initT5(Napi::Env env);                // NativeT5Encoder
Napi::Function initClip(Napi::Env env);              // NativeClipTextEncoder
Napi::Function initClipVision(Napi::Env env);        // NativeClipVisionEncoder
Napi::Function initQwen(Napi::Env env);              // NativeQwenVLEncoder
Napi::Function initVae(Napi::Env env);               // NativeAutoencoderKL
Napi::Function initInternVL(Napi::Env env);          // NativeInternVLEncoder
Napi::Function initMiniCPM(Napi::Env env);           // NativeMiniCPMOEncoder
Napi::Function initLightControl(Napi::Env env);      // NativeLightControl (lightcontrol.cc)
Napi::Value QwenRopeIndex(const Napi::CallbackInfo& info);

// training: distill.cc, distributed.cc, finetune.cc
Napi::Value DistillationLoss(const Napi::CallbackInfo& info);
Napi::Function initProcessGroup(Napi::Env env);      // NativeProcessGroup
Napi::Function initFineTune(Napi::Env env);          // NativeFineTune (finetune.cc)
Napi::Value NcclAvailable(const Napi::CallbackInfo& info);
// The group of a NativeProcessGroup passed as an argument (ERR_INVALID_ARG "expected a ProcessGroup").
std::shared_ptr<dist::Group> processGroupOf(const Napi::Value& v);

// sampling and evaluation: sample.cc
Napi::Value ResizeImage(const Napi::CallbackInfo& info);
Napi::Value PackLatents(const Napi::CallbackInfo& info);
Napi::Value UnpackLatents(const Napi::CallbackInfo& info);
Napi::Value EncodeLatents(const Napi::CallbackInfo& info);
Napi::Value NoiseLatents(const Napi::CallbackInfo& info);
Napi::Value BlendLatents(const Napi::CallbackInfo& info);
Napi::Value ToImage(const Napi::CallbackInfo& info);
Napi::Value ImageToUint8(const Napi::CallbackInfo& info);
Napi::Value ImageAgreement(const Napi::CallbackInfo& info);
Napi::Value RelativeError(const Napi::CallbackInfo& info);

// audio: audio.cc
Napi::Value AudioLogMel(const Napi::CallbackInfo& info);
Napi::Value AudioResample(const Napi::CallbackInfo& info);

// tensors: tensor.cc (NativeTensor, memory), ops.cc; checkpoint files: io.cc
Napi::Value Randn(const Napi::CallbackInfo& info);
Napi::Value Zeros(const Napi::CallbackInfo& info);
Napi::Value Matmul(const Napi::CallbackInfo& info);
Napi::Value ReadSafetensors(const Napi::CallbackInfo& info);
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info);

// the build and the devices: info.cc
Napi::Value BuildInfo(const Napi::CallbackInfo& info);
Napi::Value CudaIsAvailable(const Napi::CallbackInfo& info);
Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info);
Napi::Value CudaSynchronize(const Napi::CallbackInfo& info);
Napi::Value CudaMemory(const Napi::CallbackInfo& info);
Napi::Value CudaSetMemoryLimit(const Napi::CallbackInfo& info);
Napi::Value SetNumThreads(const Napi::CallbackInfo& info);

// test and benchmark probes (exported as `testing`): probes.cc
Napi::Object testingExports(Napi::Env env);
Napi::Value Noop(const Napi::CallbackInfo& info);
Napi::Value NoopAsync(const Napi::CallbackInfo& info);
Napi::Value BenchCopy(const Napi::CallbackInfo& info);
Napi::Value BenchDistillTap(const Napi::CallbackInfo& info);
Napi::Value DistillTap(const Napi::CallbackInfo& info);
Napi::Value NarrowView(const Napi::CallbackInfo& info);
Napi::Value SdpaBackend(const Napi::CallbackInfo& info);

}  // namespace x2i
