// The test and benchmark probes, exported as `testing` (addon.testing.noop() etc.; lib/core/addon.ts types them):
// the bridge's own cost, a plain LibTorch copy as the baseline, one distillation tap, views, SDPA's choice and
// x2i's GroupNorm against LibTorch's.
#include "napi/bindings.h"
#include "napi/tensor.h"
#include "models/fp8.h"
#include "napi/flux.h"
#include "sample/euler.h"
#include "models/group_norm.h"
#include "models/lora.h"
#ifdef X2I_CUDA_KERNELS
#include "kernels/kernels.h"

#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#endif
#include "train/distill.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace x2i {
namespace {
using namespace distill;

// The arguments of one tap's call (distillTap, benchDistillTap): teacher, student, divergence, temperature,
// incoming? (moved to the student's device), method 'fused' (default) | 'composite'.
struct TapCall {
  at::Tensor T, S, In;
  Divergence div;
  double tau;
  bool composite;
};
TapCall parseTapCall(const Napi::CallbackInfo& info, const char* name) {
  TapCall c;
  c.T = TensorWrap::Get(info[0], "teacher"), c.S = TensorWrap::Get(info[1], "student");
  c.div = parseDivergence(argString(info, 2, "divergence"));
  c.tau = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0;
  if (!(c.tau > 0)) fail("ERR_INVALID_ARG", std::string(name) + ": temperature must be positive");
  if (info.Length() > 4 && info[4].IsObject()) c.In = TensorWrap::Get(info[4], "incoming");
  if (c.In.defined() && c.In.sizes() != c.S.sizes())
    fail("ERR_SHAPE_MISMATCH", std::string(name) + ": incoming gradient " + shapeString(c.In.sizes()) + " for a tap of " +
                                   shapeString(c.S.sizes()));
  if (c.In.defined()) c.In = c.In.to(c.S.device());
  c.composite = info.Length() > 5 && info[5].IsString() && info[5].As<Napi::String>().Utf8Value() == "composite";
  return c;
}

// Mean ms of one fn() over `iters` back-to-back calls after three warm-ups, the device of `on` synchronised at both
// ends (the benchmark probes' loop, run in the worker).
template <class F>
double meanMs(const at::Tensor& on, int iters, F&& fn) {
  for (int i = 0; i < 3; ++i) fn();
  syncDevice(on);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) fn();
  syncDevice(on);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
}

}  // namespace

// groupNorm(x, groups, weight, bias, dy, method 'split' | 'libtorch', eps?) → Promise<{ y, dx, dw, db }>: GroupNorm
// forward and backward (⟨dy, y⟩ differentiated) by x2i's split reduction (models/group_norm.cc) or by
// at::group_norm, on the tensors' own device and dtype.
Napi::Value GroupNormProbe(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor x = TensorWrap::Get(info[0], "x");
    const int64_t groups = info[1].As<Napi::Number>().Int64Value();
    const at::Tensor w = TensorWrap::Get(info[2], "weight"), b = TensorWrap::Get(info[3], "bias"),
                     dy = TensorWrap::Get(info[4], "dy");
    const std::string method = argString(info, 5, "method");
    if (method != "split" && method != "libtorch") fail("ERR_INVALID_ARG", "groupNorm: method must be 'split' or 'libtorch', found '" + method + "'");
    const double eps = info.Length() > 6 && info[6].IsNumber() ? info[6].As<Napi::Number>().DoubleValue() : 1e-5;
    auto out = std::make_shared<std::array<at::Tensor, 4>>();
    return queue(info.Env(), [=] {
      c10::AutoGradMode enable(true);
      const at::Tensor xi = x.detach().requires_grad_(true), wi = w.detach().requires_grad_(true),
                       bi = b.detach().requires_grad_(true);
      at::Tensor y = method == "split" ? groupNorm(xi, groups, wi, bi, eps) : at::group_norm(xi, groups, wi, bi, eps);
      auto g = torch::autograd::grad({y}, {xi, wi, bi}, {dy.to(y.device(), y.scalar_type())});
      *out = {y.detach(), g[0], g[1], g[2]};
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      const char* names[] = {"y", "dx", "dw", "db"};
      for (int i = 0; i < 4; ++i) o.Set(names[i], TensorWrap::Wrap(env, (*out)[size_t(i)]));
      return o;
    });
  });
}

// The arguments of lowRankAdd / benchLowRankAdd: (yAug, rank, up, k, epilogue 'none' | 'gelu' | 'gated', res?, gate?,
// method 'kernel' | 'composite', mask?); run() computes epilogue(y + k · u · upᵀ) with y = yAug[:, :N], u = yAug[:, N:]
// (column blocks of one tensor, as the stacked GEMM gives them) by kernels::lowRankAdd (CUDA; with mask, up's chunk
// mask as LoRA uses it) or by its LibTorch twin lora::lowRankComposite, on the tensors' own device and dtype. mask:
// true (computed from up) or the int32 mask itself.
struct LowRankCall {
  at::Tensor ya, up, givenMask;
  int64_t R = 0;
  double k = 1;
  flux::Epilogue e;
  bool composite = false, useMask = false;

  LowRankCall(const Napi::CallbackInfo& info, const char* name) {
    const std::string fn(name);
    ya = TensorWrap::Get(info[0], "yAug");
    R = info[1].As<Napi::Number>().Int64Value();
    up = TensorWrap::Get(info[2], "up");
    k = info[3].As<Napi::Number>().DoubleValue();
    const std::string epi = argString(info, 4, "epilogue");
    if (epi == "gelu") e.kind = flux::Epilogue::GeluTanh;
    else if (epi == "gated") e.kind = flux::Epilogue::Gated;
    else if (epi != "none") fail("ERR_INVALID_ARG", fn + ": epilogue must be 'none', 'gelu' or 'gated', found '" + epi + "'");
    if (e.kind == flux::Epilogue::Gated) e.res = TensorWrap::Get(info[5], "res"), e.gate = TensorWrap::Get(info[6], "gate");
    const std::string method = argString(info, 7, "method");
    if (method != "kernel" && method != "composite") fail("ERR_INVALID_ARG", fn + ": method must be 'kernel' or 'composite', found '" + method + "'");
    composite = method == "composite";
    if (info.Length() > 8 && info[8].IsObject()) givenMask = TensorWrap::Get(info[8], "mask");  // a benchmark keeps its host copy out of the timed calls
    useMask = givenMask.defined() || (info.Length() > 8 && info[8].ToBoolean());
    if (ya.dim() != 2 || R <= 0 || R >= ya.size(1) || up.dim() != 2 || up.size(0) != ya.size(1) - R || up.size(1) != R)
      fail("ERR_SHAPE_MISMATCH", fn + ": yAug " + shapeString(ya.sizes()) + ", rank " + std::to_string(R) + ", up " + shapeString(up.sizes()));
#ifndef X2I_CUDA_KERNELS
    if (!composite) fail("ERR_NOT_SUPPORTED", fn + ": this build has no CUDA kernels");
#endif
  }

  at::Tensor run() const {
    const int64_t N = ya.size(1) - R, M = ya.size(0);
    const at::Tensor y = ya.narrow(1, 0, N), u = ya.narrow(1, N, R);
    const int64_t rowsPerGate = e.gate.defined() ? M / e.gate.size(0) : 1;
    if (composite) return lora::lowRankComposite(y, u, up, k, e, rowsPerGate);
#ifdef X2I_CUDA_KERNELS
    const auto kind = e.kind == flux::Epilogue::GeluTanh ? kernels::LowRankEpilogue::GeluTanh
                      : e.kind == flux::Epilogue::Gated  ? kernels::LowRankEpilogue::Gated
                                                         : kernels::LowRankEpilogue::None;
    at::Tensor o = at::empty({M, N}, y.options());
    const at::Tensor mask = givenMask.defined() ? givenMask : useMask ? lora::chunkMask(up) : at::Tensor();
    kernels::lowRankAdd(y, u, up.contiguous(), mask, 0, k, kind, e.res, e.gate, rowsPerGate, o);
    return o;
#else
    return {};
#endif
  }
};

// lowRankAdd(...LowRankCall's arguments) → Promise<Tensor>
Napi::Value LowRankAddProbe(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const LowRankCall c(info, "lowRankAdd");
    auto out = std::make_shared<at::Tensor>();
    return queue(info.Env(), [=] { *out = c.run(); }, [out](Napi::Env env) -> Napi::Value { return TensorWrap::Wrap(env, *out); });
  });
}

// benchLowRankAdd(...LowRankCall's arguments, iters = 100) → Promise<number>: mean ms of one call over `iters`
// back-to-back calls in the worker (three warm-ups; a device synchronisation at each end) — the kernel's time without
// the bridge's.
Napi::Value BenchLowRankAdd(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const LowRankCall c(info, "benchLowRankAdd");
    const int iters = info.Length() > 9 && info[9].IsNumber() ? info[9].As<Napi::Number>().Int32Value() : 100;
    if (iters < 1) fail("ERR_INVALID_ARG", "benchLowRankAdd: iters must be positive");
    auto ms = std::make_shared<double>(0);
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      *ms = meanMs(c.ya, iters, [&] { c.run(); });
    }, [ms](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *ms); });
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

// benchDistillTap(teacher, student, divergence, temperature, incoming?, method?, iters) → mean ms of tapLossGrad
// over `iters` back-to-back calls (one device synchronisation at each end). 'composite' times the same formulas
// as unfused LibTorch ops (the baseline of the fused pass).
Napi::Value BenchDistillTap(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const TapCall c = parseTapCall(info, "benchDistillTap");
    const int iters = info.Length() > 6 && info[6].IsNumber() ? info[6].As<Napi::Number>().Int32Value() : 100;
    if (iters < 1) fail("ERR_INVALID_ARG", "benchDistillTap: iters must be positive");
    auto ms = std::make_shared<double>(0);
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      *ms = meanMs(c.S, iters, [&] { tapLossGrad(c.T, c.S, c.div, c.tau, c.In, c.composite); });
    }, [ms](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *ms); });
  });
}

// distillTap(teacher, student, divergence, temperature, incoming?, method?) → Promise<{ term, grad }>: one tap
// through tapLossGrad (the form the training step's backward uses).
Napi::Value DistillTap(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const TapCall c = parseTapCall(info, "distillTap");
    struct Out { double term = 0; at::Tensor grad; };
    auto out = std::make_shared<Out>();
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      auto [term, grad] = tapLossGrad(c.T, c.S, c.div, c.tau, c.In, c.composite);
      out->term = term.item<double>();
      out->grad = grad;
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("term", out->term);
      o.Set("grad", TensorWrap::Wrap(env, out->grad));
      return o;
    });
  });
}

// narrowView(tensor, dim, start, length) → a view (internal: the GPU tests feed the kernel row-strided taps)
Napi::Value NarrowView(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "tensor");
    const int64_t dim = info[1].As<Napi::Number>().Int64Value(), start = info[2].As<Napi::Number>().Int64Value(),
                  len = info[3].As<Napi::Number>().Int64Value();
    if (dim < 0 || dim >= x.dim() || start < 0 || len < 0 || start + len > x.size(dim))
      fail("ERR_INVALID_ARG", "narrowView: [" + std::to_string(start) + ", " + std::to_string(start + len) +
                                  ") of dim " + std::to_string(dim) + " of " + shapeString(x.sizes()));
    return TensorWrap::Wrap(info.Env(), x.narrow(dim, start, len));
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

// cudaProfiler(start): cudaProfilerStart / cudaProfilerStop, so that a profiler started with its capture off
// (ncu --profile-from-start off) sees only the calls between them; false where this build has no CUDA kernels.
Napi::Value CudaProfiler(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const bool start = info.Length() > 0 && info[0].ToBoolean();
#ifdef X2I_CUDA_KERNELS
    const cudaError_t e = start ? cudaProfilerStart() : cudaProfilerStop();
    if (e != cudaSuccess) fail("ERR_CUDA", std::string("cudaProfiler: ") + cudaGetErrorString(e));
    return Napi::Boolean::New(info.Env(), true);
#else
    (void)start;
    return Napi::Boolean::New(info.Env(), false);
#endif
  });
}

// fp8QuantizeRows(x [M, K], method 'kernel' | 'twin', colScale? [K]) → Promise<{ q: float8_e4m3fn [M, K], scale: float32
// [M, 1] }>: FP8 activations (x · colScale with column scales) by the CUDA kernel (fp8.cu) or its LibTorch twin, on x's device.
Napi::Value Fp8QuantizeRows(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor x = TensorWrap::Get(info[0], "x");
    const std::string method = argString(info, 1, "method");
    const at::Tensor cols = info.Length() > 2 && info[2].IsObject() ? TensorWrap::Get(info[2], "colScale") : at::Tensor();
    if (cols.defined() && (cols.dim() != 1 || x.dim() != 2 || cols.size(0) != x.size(1) || cols.device() != x.device()))
      fail("ERR_SHAPE_MISMATCH", "fp8QuantizeRows: colScale must be [" + std::to_string(x.size(-1)) + "] on x's device, found " + shapeString(cols.sizes()));
    if (method != "kernel" && method != "twin") fail("ERR_INVALID_ARG", "fp8QuantizeRows: method must be 'kernel' or 'twin', found '" + method + "'");
    if (method == "kernel" && (!fp8::rowKernelBuilt() || !x.is_cuda() || std::getenv("X2I_NO_KERNELS")))
      fail("ERR_NOT_SUPPORTED", "fp8QuantizeRows: the kernel needs a CUDA tensor, a build with the CUDA kernels and X2I_NO_KERNELS unset");
    if (x.dim() != 2 || !at::isFloatingType(x.scalar_type()))
      fail("ERR_INVALID_ARG", "fp8QuantizeRows: x must be a 2-D floating tensor, found " + shapeString(x.sizes()));
    auto out = std::make_shared<std::pair<at::Tensor, at::Tensor>>();
    return queue(info.Env(), [=] {
      *out = fp8::quantizeRows(x, method == "twin", cols);
      syncDevice(x);
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("q", TensorWrap::Wrap(env, out->first));
      o.Set("scale", TensorWrap::Wrap(env, out->second));
      return o;
    });
  });
}

// fp8Linear(x [.., in], weight [out, in], bias?, method 'gemm' | 'twin64', dy?) → Promise<{ y, w8, scale, dx?, path,
// backwardPath }>: the weight quantized as the FP8 layers quantize it, then y = W x + b by the layer's path on x's device
// ('gemm': FP8 tensor cores where they apply) or by the float64 product of the same quantized operands on the CPU
// ('twin64'); with dy, dx = d⟨dy, y⟩ / dx through the layer's backward ('gemm'; backwardPath 'scaled_mm' or
// 'dequantized') or the float64 product of the FP8 backward's quantized operands, q(dy · diag(scale)) · w8 ('twin64').
Napi::Value Fp8Linear(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor x = TensorWrap::Get(info[0], "x"), w = TensorWrap::Get(info[1], "weight");
    const at::Tensor b = info[2].IsObject() ? TensorWrap::Get(info[2], "bias") : at::Tensor();
    const std::string method = argString(info, 3, "method");
    if (method != "gemm" && method != "twin64") fail("ERR_INVALID_ARG", "fp8Linear: method must be 'gemm' or 'twin64', found '" + method + "'");
    const at::Tensor dy = info.Length() > 4 && info[4].IsObject() ? TensorWrap::Get(info[4], "dy") : at::Tensor();
    if (w.dim() != 2 || x.dim() < 2 || x.size(-1) != w.size(1))
      fail("ERR_SHAPE_MISMATCH", "fp8Linear: x " + shapeString(x.sizes()) + " and weight " + shapeString(w.sizes()) + " do not multiply");
    auto out = std::make_shared<std::array<at::Tensor, 4>>();
    const bool scaledMm = method == "gemm" && fp8::usesScaledMm(w.size(0), x);
    if (dy.defined()) {
      std::vector<int64_t> want(x.sizes().begin(), x.sizes().end());
      want.back() = w.size(0);
      if (dy.sizes() != at::IntArrayRef(want))
        fail("ERR_SHAPE_MISMATCH", "fp8Linear: dy must be " + shapeString(want) + ", found " + shapeString(dy.sizes()));
    }
    auto backwardScaledMm = std::make_shared<bool>(false);
    return queue(info.Env(), [=] {
      flux::Linear l;
      std::tie(l.w8, l.w8Scale) = fp8::quantizeWeight(w, x.device());
      if (b.defined()) l.b = b.to(x.device(), x.scalar_type());
      if (method == "twin64") {
        flux::Linear c{{}, l.b.defined() ? l.b.cpu() : at::Tensor(), l.w8.cpu(), l.w8Scale.cpu()};
        (*out)[0] = fp8::linearTwin(c, x.cpu(), at::kDouble);
        if (dy.defined()) (*out)[3] = fp8::inputGradientTwin(c, dy.cpu(), at::kDouble);
      } else {
        c10::AutoGradMode enable(dy.defined());
        const at::Tensor xi = dy.defined() ? x.detach().requires_grad_(true) : x;
        at::Tensor y = fp8::linear(l, xi);
        if (dy.defined()) {
          const at::Tensor g = dy.to(y.device(), y.scalar_type());
          *backwardScaledMm = fp8::backwardUsesScaledMm(w.size(1), g);
          (*out)[3] = torch::autograd::grad({y}, {xi}, {g})[0];
        }
        (*out)[0] = y.detach();
      }
      (*out)[1] = l.w8, (*out)[2] = l.w8Scale;
      syncDevice(x);
    }, [out, scaledMm, backwardScaledMm](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      const char* names[] = {"y", "w8", "scale", "dx"};
      for (int i = 0; i < 4; ++i)
        if ((*out)[size_t(i)].defined()) o.Set(names[i], TensorWrap::Wrap(env, (*out)[size_t(i)]));
      o.Set("path", scaledMm ? "scaled_mm" : "twin");
      o.Set("backwardPath", *backwardScaledMm ? "scaled_mm" : "dequantized");
      return o;
    });
  });
}

// benchFp8Linear(x [M, K], weight [N, K], iters?) → Promise<{ fp8Ms, bf16Ms, path }>: mean ms of one FP8 layer call
// (the weight quantized once; the activation quantization included) and of at::linear with the weight in x's dtype,
// over `iters` back-to-back calls in the worker (default 20, after 3 warm-ups), synchronised at both ends.
Napi::Value BenchFp8Linear(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor x = TensorWrap::Get(info[0], "x"), w = TensorWrap::Get(info[1], "weight");
    const int iters = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 20;
    if (w.dim() != 2 || x.dim() != 2 || x.size(1) != w.size(1) || iters < 1)
      fail("ERR_INVALID_ARG", "benchFp8Linear: x [M, K], weight [N, K], iters ≥ 1");
    auto out = std::make_shared<std::array<double, 2>>();
    const bool scaledMm = fp8::usesScaledMm(w.size(0), x);
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      flux::Linear l;
      std::tie(l.w8, l.w8Scale) = fp8::quantizeWeight(w, x.device());
      const at::Tensor wx = w.to(x.device(), x.scalar_type());
      (*out)[0] = meanMs(x, iters, [&] { fp8::linear(l, x); });
      (*out)[1] = meanMs(x, iters, [&] { at::linear(x, wx); });
    }, [out, scaledMm](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("fp8Ms", (*out)[0]);
      o.Set("bf16Ms", (*out)[1]);
      o.Set("path", scaledMm ? "scaled_mm" : "twin");
      return o;
    });
  });
}

// fp8Transpose(x [R, C], 1-byte elements, CUDA) → Promise<[C, R]>: the backward's weight transposition
// (kernels/fp8.cu; LibTorch's copy for widths not multiples of 4)
Napi::Value Fp8Transpose(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor x = TensorWrap::Get(info[0], "x");
    if (!fp8::rowKernelBuilt() || !x.is_cuda() || x.dim() != 2 || x.element_size() != 1)
      fail("ERR_NOT_SUPPORTED", "fp8Transpose: a 2-D CUDA tensor of 1-byte elements and a build with the CUDA kernels, found " +
                                    shapeString(x.sizes()) + " on " + x.device().str());
    auto out = std::make_shared<at::Tensor>();
    return queue(info.Env(), [=] {
#ifdef X2I_CUDA_KERNELS
      *out = kernels::transposeBytes(x);
#endif
      syncDevice(x);
    }, [out](Napi::Env env) -> Napi::Value { return TensorWrap::Wrap(env, *out); });
  });
}

// geluTanhRows(x, method 'kernel' | 'twin', dy?, out?) → Promise<{ y, dx? }>: the tanh GELU of x (any view) by the row
// kernel (kernels/gelu.cu) or LibTorch (at::gelu / at::gelu_backward), written into out where given (y is then out), and
// with dy its input gradient
Napi::Value GeluTanhRowsProbe(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor x = TensorWrap::Get(info[0], "x");
    const std::string method = argString(info, 1, "method");
    const at::Tensor dy = info.Length() > 2 && info[2].IsObject() ? TensorWrap::Get(info[2], "dy") : at::Tensor();
    const at::Tensor dst = info.Length() > 3 && info[3].IsObject() ? TensorWrap::Get(info[3], "out") : at::Tensor();
    if (dst.defined() && (dst.sizes() != x.sizes() || dst.scalar_type() != x.scalar_type() || dst.device() != x.device()))
      fail("ERR_SHAPE_MISMATCH", "geluTanhRows: out must match x " + shapeString(x.sizes()) + ", found " + shapeString(dst.sizes()));
    if (method != "kernel" && method != "twin") fail("ERR_INVALID_ARG", "geluTanhRows: method must be 'kernel' or 'twin', found '" + method + "'");
    if (dy.defined() && (dy.sizes() != x.sizes() || dy.scalar_type() != x.scalar_type() || dy.device() != x.device()))
      fail("ERR_SHAPE_MISMATCH", "geluTanhRows: dy must match x " + shapeString(x.sizes()) + ", found " + shapeString(dy.sizes()));
#ifdef X2I_CUDA_KERNELS
    const bool takes = kernels::geluTanhRowsTakes(x) && (!dst.defined() || kernels::geluTanhRowsTakes(dst));
#else
    const bool takes = false;
#endif
    if (method == "kernel" && (!takes || std::getenv("X2I_NO_KERNELS")))
      fail("ERR_NOT_SUPPORTED", "geluTanhRows: the kernel takes CUDA bf16 / fp16 / float32 views with unit column stride in a build with the CUDA kernels, found " +
                                    shapeString(x.sizes()) + " on " + x.device().str());
    auto out = std::make_shared<std::array<at::Tensor, 2>>();
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
#ifdef X2I_CUDA_KERNELS
      if (method == "kernel") {
        (*out)[0] = kernels::geluTanhRows(x, dst);
        if (dy.defined()) (*out)[1] = kernels::geluTanhRowsBackward(dy, x);
      }
#endif
      if (method == "twin") {
        if (dst.defined()) {
          at::Tensor o = dst;
          (*out)[0] = at::gelu_out(o, x, "tanh");
        } else {
          (*out)[0] = at::gelu(x, "tanh");
        }
        if (dy.defined()) (*out)[1] = at::gelu_backward(dy, x, "tanh");
      }
      syncDevice(x);
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("y", TensorWrap::Wrap(env, (*out)[0]));
      if ((*out)[1].defined()) o.Set("dx", TensorWrap::Wrap(env, (*out)[1]));
      return o;
    });
  });
}

// stepGraphState(flux) → 'none' | 'fresh' | 'captured' | 'failed': the transformer's captured denoising
// step (sample/euler.cc)
Napi::Value StepGraphState(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::String::New(info.Env(), sample::stepGraphState(*fluxOf(info[0], "flux")));
  });
}

Napi::Object testingExports(Napi::Env env) {
  auto t = Napi::Object::New(env);
  t.Set("noop", Napi::Function::New(env, Noop));
  t.Set("noopAsync", Napi::Function::New(env, NoopAsync));
  t.Set("benchCopy", Napi::Function::New(env, BenchCopy));
  t.Set("benchDistillTap", Napi::Function::New(env, BenchDistillTap));
  t.Set("distillTap", Napi::Function::New(env, DistillTap));
  t.Set("narrowView", Napi::Function::New(env, NarrowView));
  t.Set("sdpaBackend", Napi::Function::New(env, SdpaBackend));
  t.Set("groupNorm", Napi::Function::New(env, GroupNormProbe));
  t.Set("lowRankAdd", Napi::Function::New(env, LowRankAddProbe));
  t.Set("benchLowRankAdd", Napi::Function::New(env, BenchLowRankAdd));
  t.Set("cudaProfiler", Napi::Function::New(env, CudaProfiler));
  t.Set("fp8QuantizeRows", Napi::Function::New(env, Fp8QuantizeRows));
  t.Set("fp8Linear", Napi::Function::New(env, Fp8Linear));
  t.Set("benchFp8Linear", Napi::Function::New(env, BenchFp8Linear));
  t.Set("fp8Transpose", Napi::Function::New(env, Fp8Transpose));
  t.Set("geluTanhRows", Napi::Function::New(env, GeluTanhRowsProbe));
  t.Set("stepGraphState", Napi::Function::New(env, StepGraphState));
  return t;
}

}  // namespace x2i
