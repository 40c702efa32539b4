// The build and the devices: buildInfo, cuda*, setNumThreads (lib/core/native.ts, lib/core/tensor.ts).
#include "napi/bindings.h"

#ifdef X2I_CUDA_KERNELS
#include "kernels/kernels.h"
#endif

#include <ATen/Context.h>
#include <ATen/Parallel.h>

namespace x2i {
namespace {

bool cudaHooksRegistered() { return at::detail::getCUDAHooks().isBuilt(); }

int cudaDeviceCount() {
  try {
    return at::hasCUDA() ? at::detail::getCUDAHooks().getNumGPUs() : 0;
  } catch (const c10::Error&) {
    return 0;  // a driver problem reads as "no CUDA device"; buildInfo() says more
  }
}

}  // namespace

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto o = Napi::Object::New(env);
  o.Set("libtorchVersion", X2I_LIBTORCH_VERSION);
  o.Set("libtorchFlavour", X2I_LIBTORCH_FLAVOUR);
#ifdef X2I_WITH_CUDA
  o.Set("builtWithCuda", true);
#else
  o.Set("builtWithCuda", false);
#endif
  o.Set("cudaBackendRegistered", cudaHooksRegistered());
  o.Set("intraOpThreads", at::get_num_threads());
  o.Set("parallelInfo", at::get_parallel_info());
  return o;
}

Napi::Value CudaIsAvailable(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), cudaDeviceCount() > 0);
}
Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), cudaDeviceCount());
}
Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const c10::Device d = parseDevice(info.Length() > 0 && info[0].IsString() ? argString(info, 0, "device") : "cuda");
    return queue(info.Env(), [d] { syncDevice(d); },
                 [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
  });
}

// The CUDA device of argument 0 (default "cuda") for the allocator calls of `what`, the allocator initialised.
static c10::Device allocatorDevice(const Napi::CallbackInfo& info, const char* what) {
  const c10::Device d = parseDevice(info.Length() > 0 && info[0].IsString() ? argString(info, 0, "device") : "cuda");
  if (!d.is_cuda() || cudaDeviceCount() == 0) fail("ERR_CUDA_UNAVAILABLE", std::string(what) + ": no CUDA device");
#ifdef X2I_CUDA_KERNELS
  at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);  // the allocator exists before the first tensor
  return d.has_index() ? d : c10::Device(c10::DeviceType::CUDA, 0);
#else
  fail("ERR_NOT_SUPPORTED", std::string(what) + ": this build has no CUDA kernels (built without nvcc)");
#endif
}

// cudaMemory(device, reset?, emptyCache?) → { allocated, peakAllocated, reserved, peakReserved } (bytes, the caching
// allocator's counters); reset: the peaks start again from now; emptyCache: cached free blocks go back first. Needs the CUDA build (X2I_CUDA_KERNELS).
Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const c10::Device d = allocatorDevice(info, "cuda.memory");
    const bool reset = info.Length() > 1 && info[1].ToBoolean();
    const bool empty = info.Length() > 2 && info[2].ToBoolean();
#ifdef X2I_CUDA_KERNELS
    const int idx = d.index();
    syncDevice(d);
    if (empty) kernels::cudaEmptyCache();
    auto m = kernels::cudaMemory(idx);
    if (reset) kernels::cudaResetPeakMemory(idx);
    auto o = Napi::Object::New(info.Env());
    o.Set("allocated", double(m.allocated));
    o.Set("peakAllocated", double(m.peakAllocated));
    o.Set("reserved", double(m.reserved));
    o.Set("peakReserved", double(m.peakReserved));
    o.Set("total", double(kernels::cudaTotalMemory(idx)));
    return o;
#else
    (void)reset, (void)empty, (void)d;
    return info.Env().Undefined();  // not reached: allocatorDevice failed
#endif
  });
}

// cudaSetMemoryLimit(device, bytes | null): the caching allocator holds at most `bytes` on the device (its memory
// fraction bytes / total); null lifts the cap.
Napi::Value CudaSetMemoryLimit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const bool lift = info.Length() < 2 || info[1].IsNull() || info[1].IsUndefined();
    if (!lift && (!info[1].IsNumber() || !(info[1].As<Napi::Number>().DoubleValue() > 0)))
      fail("ERR_INVALID_ARG", "cuda.setMemoryLimit: bytes must be a positive number or null");
    const c10::Device d = allocatorDevice(info, "cuda.setMemoryLimit");
#ifdef X2I_CUDA_KERNELS
    const int idx = d.index();
    const double total = double(kernels::cudaTotalMemory(idx));
    const double bytes = lift ? total : info[1].As<Napi::Number>().DoubleValue();
    if (bytes > total)
      fail("ERR_INVALID_ARG", "cuda.setMemoryLimit: " + std::to_string(int64_t(bytes)) + " bytes is more than the device's " +
                                  std::to_string(int64_t(total)));
    kernels::cudaSetMemoryFraction(idx, bytes / total);
#else
    (void)d;
#endif
    return info.Env().Undefined();
  });
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsNumber() || info[0].As<Napi::Number>().Int32Value() < 1)
      fail("ERR_INVALID_ARG", "setNumThreads expects a positive integer");
    at::set_num_threads(info[0].As<Napi::Number>().Int32Value());
    return info.Env().Undefined();
  });
}

}  // namespace x2i
