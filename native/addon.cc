// The addon's exports. Everything heavier than reading a field returns a Promise (common.h: queue).
#include "alignnet.h"
#include "clip.h"
#include "common.h"
#include "distill.h"
#include "distributed.h"
#include "flux_wrap.h"
#include "io.h"
#include "qwen.h"
#include "t5.h"
#include "tensor.h"
#include "kernels.h"
#include "vae.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <chrono>
#include <vector>

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

// cudaMemory(device, reset?, emptyCache?) → { allocated, peakAllocated, reserved, peakReserved } (bytes, the caching
// allocator's counters); reset: the peaks start again from now; emptyCache: cached free blocks go back first. Needs the CUDA build (X2I_CUDA_KERNELS).
Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const c10::Device d = parseDevice(info.Length() > 0 && info[0].IsString() ? argString(info, 0, "device") : "cuda");
    if (!d.is_cuda() || cudaDeviceCount() == 0) fail("ERR_CUDA_UNAVAILABLE", "cuda.memory: no CUDA device");
    const bool reset = info.Length() > 1 && info[1].ToBoolean();
    const bool empty = info.Length() > 2 && info[2].ToBoolean();
#ifdef X2I_CUDA_KERNELS
    const int idx = d.has_index() ? d.index() : 0;
    syncDevice(d);
    if (empty) kernels::cudaEmptyCache();
    auto m = kernels::cudaMemory(idx);
    if (reset) kernels::cudaResetPeakMemory(idx);
    auto o = Napi::Object::New(info.Env());
    o.Set("allocated", double(m.allocated));
    o.Set("peakAllocated", double(m.peakAllocated));
    o.Set("reserved", double(m.reserved));
    o.Set("peakReserved", double(m.peakReserved));
    return o;
#else
    (void)reset, (void)empty;
    fail("ERR_NOT_SUPPORTED", "cuda.memory: this build has no CUDA kernels (built without nvcc)");
#endif
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

// randn(shape, dtype, device, seed?): standard normal values drawn on the CPU (the same numbers on every
// device for a seed, as diffusers recommends), then moved and cast.
Napi::Value Randn(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto shape = argShape(info, 0, "shape");
    const at::ScalarType dtype = parseDType(argString(info, 1, "dtype"));
    const c10::Device device = parseDevice(argString(info, 2, "device"));
    const bool seeded = info.Length() > 3 && info[3].IsNumber();
    const uint64_t seed = seeded ? uint64_t(info[3].As<Napi::Number>().Int64Value()) : 0;
    if (!at::isFloatingType(dtype)) fail("ERR_INVALID_DTYPE", "randn needs a floating dtype, found " + dtypeName(dtype));
    return queueTensor(info.Env(), [=] {  // a plain tensor: usable where autograd records
      at::Generator gen = seeded ? at::detail::createCPUGenerator(seed) : at::detail::getDefaultCPUGenerator();
      at::Tensor t = at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));  // locks gen itself
      return t.to(device).to(dtype);
    }, /*inference=*/false);
  });
}

// zeros(shape, dtype, device) → Promise<NativeTensor>, allocated on the device (no host copy)
Napi::Value Zeros(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto shape = argShape(info, 0, "shape");
    const at::ScalarType dtype = parseDType(argString(info, 1, "dtype"));
    const c10::Device device = parseDevice(argString(info, 2, "device"));
    return queueTensor(info.Env(), [=] { return at::zeros(shape, at::TensorOptions().dtype(dtype).device(device)); },
                       /*inference=*/false);
  });
}

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor a = TensorWrap::Get(info[0], "a"), b = TensorWrap::Get(info[1], "b");
    return queueTensor(info.Env(), [a, b] { return at::matmul(a, b); });
  });
}

// sdpaBackend(shape [B, H, L, D], dtype, device): the kernel at::scaled_dot_product_attention picks
// ('math' | 'flash' | 'efficient' | 'cudnn' | ...).
Napi::Value SdpaBackend(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto shape = argShape(info, 0, "shape");
    const at::ScalarType dtype = parseDType(argString(info, 1, "dtype"));
    const c10::Device device = parseDevice(argString(info, 2, "device"));
    at::Tensor q = at::empty(shape, at::TensorOptions().dtype(dtype).device(device));
    const int64_t c = at::_fused_sdp_choice(q, q, q);
    static const char* names[] = {"math", "flash", "efficient", "cudnn", "overrideable"};
    return Napi::String::New(info.Env(), c >= 0 && c < 5 ? names[c] : std::to_string(c));
  });
}

// relativeError(a, b): ‖a − b‖ / ‖b‖ in float64 on the tensors' device.
Napi::Value RelativeError(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor a = TensorWrap::Get(info[0], "a"), b = TensorWrap::Get(info[1], "b");
    if (a.sizes() != b.sizes()) fail("ERR_SHAPE_MISMATCH", "relativeError: the tensors differ in shape");
    auto out = std::make_shared<double>(0);
    return queue(info.Env(), [a, b, out] {
      c10::InferenceMode guard;
      at::Tensor bd = b.to(a.device(), at::kDouble), ad = a.to(at::kDouble);
      *out = ((ad - bd).norm() / bd.norm()).item<double>();
    }, [out](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *out); });
  });
}

// resizeImage(rgb: Uint8Array [H, W, 3] as a tensor, outH, outW) → Promise<uint8 tensor [outH, outW, 3]>: bicubic
// with antialiasing (the kernel PyTorch matches to PIL's BICUBIC), rounded and clamped to 0..255 like PIL.
Napi::Value ResizeImage(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor img = TensorWrap::Get(info[0], "image");
    if (img.dim() != 3 || img.scalar_type() != at::kByte)
      fail("ERR_INVALID_ARG", "resizeImage expects a uint8 [H, W, C] tensor, found " + dtypeName(img.scalar_type()));
    const int64_t oh = info[1].As<Napi::Number>().Int64Value(), ow = info[2].As<Napi::Number>().Int64Value();
    if (oh <= 0 || ow <= 0) fail("ERR_INVALID_ARG", "resizeImage: the output size must be positive");
    return queueTensor(info.Env(), [img, oh, ow] {
      at::Tensor x = img.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);
      at::Tensor y = (x.size(2) == oh && x.size(3) == ow) ? x : at::_upsample_bicubic2d_aa(x, {oh, ow}, false);
      return y.round().clamp(0, 255).to(at::kByte).squeeze(0).permute({1, 2, 0}).contiguous();
    });
  });
}

// packLatents(z [B, C, h, w]) → [B, (h/2)(w/2), 4C]; unpackLatents(x [B, N, 4C], h, w, scale, shift) →
// z / scale + shift as [B, C, h, w]; toImage(decoded) → (x/2 + 0.5) clamped to [0, 1] in float32 (FluxPipeline).
Napi::Value PackLatents(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor z = TensorWrap::Get(info[0], "latents");
    if (z.dim() != 4 || z.size(2) % 2 || z.size(3) % 2)
      fail("ERR_SHAPE_MISMATCH", "packLatents: expected [B, C, h, w] with even h and w");
    const int64_t B = z.size(0), C = z.size(1), h = z.size(2), w = z.size(3);
    return queueTensor(info.Env(), [=] {
      return z.view({B, C, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({B, (h / 2) * (w / 2), C * 4});
    });
  });
}
Napi::Value UnpackLatents(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "latents");
    const int64_t h = info[1].As<Napi::Number>().Int64Value(), w = info[2].As<Napi::Number>().Int64Value();
    const double scale = info[3].As<Napi::Number>().DoubleValue(), shift = info[4].As<Napi::Number>().DoubleValue();
    if (x.dim() != 3 || h % 2 || w % 2 || x.size(1) != (h / 2) * (w / 2) || x.size(2) % 4)
      fail("ERR_SHAPE_MISMATCH", "unpackLatents: expected [B, (h/2)(w/2), 4C] for even h, w");
    const int64_t B = x.size(0), C = x.size(2) / 4;
    return queueTensor(info.Env(), [=] {
      return x.view({B, h / 2, w / 2, C, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({B, C, h, w}) / scale + shift;
    });
  });
}
Napi::Value ToImage(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "decoded");
    return queueTensor(info.Env(), [=] { return (x.to(at::kFloat) / 2 + 0.5).clamp(0, 1); });
  });
}

// imageToUint8(images [B, 3, H, W] in [0, 1]) → uint8 [B, H, W, 3] (×255, rounded, as diffusers' numpy_to_pil)
Napi::Value ImageToUint8(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "images");
    if (x.dim() != 4 || x.size(1) != 3) fail("ERR_SHAPE_MISMATCH", "images must be [B, 3, H, W], found " + std::to_string(x.dim()) + "-D");
    return queueTensor(info.Env(), [=] {
      return (x.to(at::kCPU, at::kFloat) * 255).round().clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
    });
  });
}

// imageAgreement(a, b [B, 3, H, W] in [0, 1]) → { ssim: number[], psnr: number[] } per image: SSIM with an 11×11
// Gaussian window (σ = 1.5), constants (0.01, 0.03)², valid region, mean over channels (Wang et al. 2004); PSNR
// for a peak of 1.
Napi::Value ImageAgreement(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor a = TensorWrap::Get(info[0], "a"), b = TensorWrap::Get(info[1], "b");
    if (a.sizes() != b.sizes() || a.dim() != 4) fail("ERR_SHAPE_MISMATCH", "imageAgreement: two images [B, C, H, W] of one shape");
    auto out = std::make_shared<std::pair<std::vector<double>, std::vector<double>>>();
    return queue(info.Env(), [=] {
      c10::InferenceMode g;
      at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
      const int64_t C = x.size(1);
      at::Tensor r = at::arange(11, at::kDouble) - 5;
      at::Tensor g1 = at::exp(-(r * r) / (2 * 1.5 * 1.5));
      g1 = g1 / g1.sum();
      at::Tensor win = (g1.unsqueeze(1) * g1.unsqueeze(0)).expand({C, 1, 11, 11}).contiguous();
      const std::vector<int64_t> one{1, 1}, zero{0, 0};
      auto f = [&](const at::Tensor& t) {
        return at::conv2d(t, win, at::Tensor(), at::IntArrayRef(one), at::IntArrayRef(zero), at::IntArrayRef(one), C);
      };
      at::Tensor mx = f(x), my = f(y);
      at::Tensor sxx = f(x * x) - mx * mx, syy = f(y * y) - my * my, sxy = f(x * y) - mx * my;
      const double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
      at::Tensor ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
      at::Tensor s = ssim.mean({1, 2, 3}), mse = (x - y).pow(2).mean({1, 2, 3});
      for (int64_t i = 0; i < x.size(0); ++i) {
        out->first.push_back(s[i].item<double>());
        const double m = mse[i].item<double>();
        out->second.push_back(m > 0 ? 10 * std::log10(1.0 / m) : std::numeric_limits<double>::infinity());
      }
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      auto s = Napi::Array::New(env), p = Napi::Array::New(env);
      for (size_t i = 0; i < out->first.size(); ++i) s.Set(uint32_t(i), out->first[i]), p.Set(uint32_t(i), out->second[i]);
      o.Set("ssim", s);
      o.Set("psnr", p);
      return o;
    });
  });
}

// ---- benchmark probes: the bridge's own cost, and a plain LibTorch copy as the baseline
Napi::Value Noop(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

Napi::Value NoopAsync(const Napi::CallbackInfo& info) {
  return queue(info.Env(), [] {}, [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
}

// benchCopy(nbytes, src, dst, iters, pinned?, fresh?): median seconds of dst.copy_(src) in LibTorch,
// synchronised; with fresh, dst is allocated anew each time (the page faults of new memory included).
Napi::Value BenchCopy(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const int64_t nbytes = info[0].As<Napi::Number>().Int64Value();
    const c10::Device src = parseDevice(argString(info, 1, "src")), dst = parseDevice(argString(info, 2, "dst"));
    const int iters = info[3].As<Napi::Number>().Int32Value();
    const bool pinned = info.Length() > 4 && info[4].ToBoolean();
    const bool fresh = info.Length() > 5 && info[5].ToBoolean();  // allocate the destination every time
    auto result = std::make_shared<double>(0);
    return queue(info.Env(), [=] {
      auto opts = at::TensorOptions().dtype(at::kByte);
      at::Tensor a = at::randint(0, 255, {nbytes}, opts.pinned_memory(pinned && src.is_cpu())).to(src);
      at::Tensor b = at::empty({nbytes}, opts.device(dst).pinned_memory(pinned && dst.is_cpu()));
      auto sync = [&] {
        syncDevice(src);
        syncDevice(dst);
      };
      std::vector<double> times;
      for (int i = 0; i < iters + 2; ++i) {
        sync();
        auto t0 = std::chrono::steady_clock::now();
        if (fresh) {
          b = at::Tensor();  // free the last one first, as a JS caller dropping its array would
          b = at::empty({nbytes}, opts.device(dst).pinned_memory(pinned && dst.is_cpu()));
        }
        b.copy_(a);
        sync();
        auto t1 = std::chrono::steady_clock::now();
        if (i >= 2) times.push_back(std::chrono::duration<double>(t1 - t0).count());
      }
      std::sort(times.begin(), times.end());
      *result = times[times.size() / 2];
    }, [result](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *result); });
  });
}

}  // namespace
}  // namespace x2i

static Napi::Object InitX2I(Napi::Env env, Napi::Object exports) {
  using namespace x2i;
  exports.Set("NativeTensor", TensorWrap::Init(env));
  exports.Set("NativeFlux", FluxWrap::Init(env));
  exports.Set("NativeAlignNet", alignnet::Wrap::Init(env));
  exports.Set("NativeT5Encoder", ModelWrap<t5::Model>::Init(env));
  exports.Set("NativeClipTextEncoder", ModelWrap<clip::Model>::Init(env));
  exports.Set("NativeQwenVLEncoder", ModelWrap<qwen::Model>::Init(env));
  exports.Set("qwenRopeIndex", Napi::Function::New(env, qwen::RopeIndex));
  exports.Set("NativeAutoencoderKL", ModelWrap<vae::Model>::Init(env));
  exports.Set("distillationLoss", Napi::Function::New(env, distill::DistillationLoss));
  exports.Set("benchDistillTap", Napi::Function::New(env, distill::BenchTap));
  exports.Set("distillTap", Napi::Function::New(env, distill::DistillTap));
  exports.Set("narrowView", Napi::Function::New(env, distill::NarrowView));
  exports.Set("memory", Napi::Function::New(env, Memory));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("cudaIsAvailable", Napi::Function::New(env, CudaIsAvailable));
  exports.Set("cudaDeviceCount", Napi::Function::New(env, CudaDeviceCount));
  exports.Set("cudaSynchronize", Napi::Function::New(env, CudaSynchronize));
  exports.Set("cudaMemory", Napi::Function::New(env, CudaMemory));
  exports.Set("NativeProcessGroup", dist::Wrap::Init(env));
  exports.Set("ncclAvailable", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Napi::Boolean::New(info.Env(), dist::ncclAvailable());
  }));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("readSafetensors", Napi::Function::New(env, ReadSafetensors));
  exports.Set("writeSafetensors", Napi::Function::New(env, WriteSafetensors));
  exports.Set("loadTorchCheckpoint", Napi::Function::New(env, LoadTorchCheckpoint));
  exports.Set("randn", Napi::Function::New(env, Randn));
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("zeros", Napi::Function::New(env, Zeros));
  exports.Set("sdpaBackend", Napi::Function::New(env, SdpaBackend));
  exports.Set("resizeImage", Napi::Function::New(env, ResizeImage));
  exports.Set("packLatents", Napi::Function::New(env, PackLatents));
  exports.Set("unpackLatents", Napi::Function::New(env, UnpackLatents));
  exports.Set("toImage", Napi::Function::New(env, ToImage));
  exports.Set("imageToUint8", Napi::Function::New(env, ImageToUint8));
  exports.Set("imageAgreement", Napi::Function::New(env, ImageAgreement));
  exports.Set("relativeError", Napi::Function::New(env, RelativeError));
  exports.Set("noop", Napi::Function::New(env, Noop));
  exports.Set("noopAsync", Napi::Function::New(env, NoopAsync));
  exports.Set("benchCopy", Napi::Function::New(env, BenchCopy));
  return exports;
}

NODE_API_MODULE(x2i, InitX2I)
