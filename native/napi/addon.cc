// The addon's export table. Everything heavier than reading a field returns a Promise (napi/common.h: queue).
// The test and benchmark probes live in one object, `testing` (napi/probes.cc).
#include "napi/bindings.h"
#include "napi/tensor.h"

namespace {

Napi::Object InitX2I(Napi::Env env, Napi::Object exports) {
  x2i::quietHardwareProbes();
  using namespace x2i;
  auto fn = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) { exports.Set(name, Napi::Function::New(env, f)); };
  exports.Set("NativeTensor", TensorWrap::Init(env));
  exports.Set("NativeFlux", initFlux(env));
  exports.Set("NativeAlignNet", initAlignNet(env));
  exports.Set("NativeT5Encoder", initT5(env));
  exports.Set("NativeClipTextEncoder", initClip(env));
  exports.Set("NativeClipVisionEncoder", initClipVision(env));
  exports.Set("NativeQwenVLEncoder", initQwen(env));
  fn("qwenRopeIndex", QwenRopeIndex);
  exports.Set("NativeAutoencoderKL", initVae(env));
  exports.Set("NativeInternVLEncoder", initInternVL(env));
  exports.Set("NativeMiniCPMOEncoder", initMiniCPM(env));
  exports.Set("NativeLightControl", initLightControl(env));
  fn("distillationLoss", DistillationLoss);
  fn("memory", Memory);
  fn("buildInfo", BuildInfo);
  fn("cudaIsAvailable", CudaIsAvailable);
  fn("cudaDeviceCount", CudaDeviceCount);
  fn("cudaSynchronize", CudaSynchronize);
  fn("cudaMemory", CudaMemory);
  fn("cudaSetMemoryLimit", CudaSetMemoryLimit);
  exports.Set("NativeProcessGroup", initProcessGroup(env));
  exports.Set("NativeFineTune", initFineTune(env));
  fn("ncclAvailable", NcclAvailable);
  fn("setNumThreads", SetNumThreads);
  fn("readSafetensors", ReadSafetensors);
  fn("writeSafetensors", WriteSafetensors);
  fn("randn", Randn);
  fn("matmul", Matmul);
  fn("zeros", Zeros);
  fn("resizeImage", ResizeImage);
  fn("packLatents", PackLatents);
  fn("unpackLatents", UnpackLatents);
  fn("encodeLatents", EncodeLatents);
  fn("noiseLatents", NoiseLatents);
  fn("blendLatents", BlendLatents);
  fn("toImage", ToImage);
  fn("imageToUint8", ImageToUint8);
  fn("imageAgreement", ImageAgreement);
  fn("relativeError", RelativeError);
  fn("audioLogMel", AudioLogMel);
  fn("audioResample", AudioResample);
  exports.Set("testing", testingExports(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(x2i, InitX2I)
