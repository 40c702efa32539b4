#include "models/fp8.h"
#ifdef X2I_CUDA_KERNELS
#include "kernels/kernels.h"
#endif

#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace x2i::fp8 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// per-row scales of a float32 [M, K]: max(|row|) × the float nearest 1/448 (at least 1e-12 of that: rows of zeros stay
// zeros); a multiplication, as LibTorch's CUDA division by a scalar is, so that every device and the kernel agree
at::Tensor rowScales(const at::Tensor& xf) {
  return xf.abs().amax(-1, true).clamp_min(1e-12).mul_(double(1.f / float(kE4m3Max)));
}

at::Tensor toE4m3(const at::Tensor& xf, const at::Tensor& scale) {
  return (xf / scale).clamp_(-kE4m3Max, kE4m3Max).to(at::kFloat8_e4m3fn);
}

// w8 · scale in dt (scaled in float32: a bf16 / fp16 scale would round)
at::Tensor dequantize(const at::Tensor& w8, const at::Tensor& scale, at::ScalarType dt) {
  return (w8.to(at::promote_types(at::kFloat, dt)) * scale.unsqueeze(1)).to(dt);
}

// y [M, N] of x [.., K] back in x's leading shape: [.., N]
at::Tensor rowsLike(const at::Tensor& y, const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = y.size(1);
  return y.view(shape);
}

// x [.., K] · (w8 · scale)ᵀ + b from the dequantized operands, in dt (x quantized as the FP8 path quantizes it)
at::Tensor twin(const at::Tensor& w8, const at::Tensor& scale, const at::Tensor& b, const at::Tensor& x, at::ScalarType dt,
                bool twinRows) {
  auto [x8, xs] = quantizeRows(x.reshape({-1, x.size(-1)}), twinRows);
  at::Tensor y = at::mm(x8.to(dt) * xs.to(dt), dequantize(w8, scale, dt).t());
  if (b.defined()) y.add_(b.to(dt));
  return rowsLike(y, x);
}

at::Tensor product(const at::Tensor& w8, const at::Tensor& scale, const at::Tensor& b, const at::Tensor& x) {
  if (usesScaledMm(w8.size(0), x)) {
#ifdef X2I_CUDA_KERNELS
    auto [x8, xs] = quantizeRows(x.reshape({-1, x.size(-1)}));
    std::optional<at::Tensor> bias;
    if (b.defined()) bias = b.to(at::kBFloat16);
    return rowsLike(at::_scaled_mm(x8, w8.t(), xs, scale.view({1, -1}), bias, std::nullopt, at::kBFloat16, /*use_fast_accum=*/false), x);
#endif
  }
  // the twin: the same quantized operands, multiplied in float32 (float64 for float64 inputs)
  return twin(w8, scale, b, x, at::promote_types(at::kFloat, x.scalar_type()), false).to(x.scalar_type());
}

#ifdef X2I_CUDA_KERNELS
// [1, K] float32 ones on `device`: the FP8 backward's unit scales of its second operand, made once per width and device
// (every backward of every layer asks); kept for the process's life, never destroyed (a static CUDA tensor's destructor
// would run after the allocator's at exit)
at::Tensor onesRow(int64_t K, c10::Device device) {
  static std::mutex mu;
  static auto* made = new std::map<std::pair<int64_t, c10::DeviceIndex>, at::Tensor>();
  std::lock_guard<std::mutex> lock(mu);
  at::Tensor& t = (*made)[{K, device.index()}];
  if (!t.defined()) t = at::ones({1, K}, at::TensorOptions().dtype(at::kFloat).device(device));
  return t;
}
#endif

// w8 [N, K] → [K, N] bytes (the CUDA tile kernel; LibTorch's copy elsewhere)
at::Tensor transposed(const at::Tensor& w8) {
#ifdef X2I_CUDA_KERNELS
  if (w8.is_cuda()) return kernels::transposeBytes(w8);
#endif
  return w8.t().contiguous();
}

// dx = dy · W for W = diag(scale) · w8 [N, K], dy [.., N]. On FP8 tensor cores (the forward's conditions, with N and K
// swapped): the weight's row scales fold into dy's columns before its rows are quantized, so dx = q(dy · diag(scale)) · w8
// with w8 transposed for the GEMM (tensor cores take the second operand column-major only: the layer's kept w8t, else
// transposed here) and dy's row scales in the epilogue. Elsewhere, or with X2I_FP8_BACKWARD=dequantize: dy times the
// dequantized weights.
at::Tensor inputGradient(const at::Tensor& w8, const at::Tensor& kept, const at::Tensor& scale, const at::Tensor& dy) {
  const int64_t K = w8.size(1);
  if (backwardUsesScaledMm(K, dy)) {
#ifdef X2I_CUDA_KERNELS
    auto [g8, gs] = quantizeRows(dy.reshape({-1, dy.size(-1)}), false, scale);
    const at::Tensor w8t = kept.defined() ? kept : transposed(w8);  // [K, N]
    return rowsLike(at::_scaled_mm(g8, w8t.t(), gs, onesRow(K, dy.device()), std::nullopt, std::nullopt, at::kBFloat16, /*use_fast_accum=*/false), dy);
#endif
  }
  return at::matmul(dy, dequantize(w8, scale, dy.scalar_type()));
}

// y = W x + b with W in FP8; backward: dx = dy · W (the weights frozen; w8t: w8 transposed, kept by the layer, or undefined)
struct Fp8Linear : torch::autograd::Function<Fp8Linear> {
  static variable_list forward(AutogradContext* ctx, at::Tensor x, at::Tensor w8, at::Tensor scale,
                               std::optional<at::Tensor> b, std::optional<at::Tensor> w8t) {
    ctx->saved_data["w8"] = w8;
    if (w8t) ctx->saved_data["w8t"] = *w8t;
    ctx->saved_data["scale"] = scale;
    return {product(w8, scale, b.value_or(at::Tensor()), x)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const at::Tensor w8 = ctx->saved_data["w8"].toTensor(), scale = ctx->saved_data["scale"].toTensor();
    const auto kept = ctx->saved_data.find("w8t");
    const at::Tensor w8t = kept != ctx->saved_data.end() ? kept->second.toTensor() : at::Tensor();
    return {inputGradient(w8, w8t, scale, g[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> quantizeWeight(const at::Tensor& w, c10::Device device) {
  c10::NoGradGuard noGrad;
  const at::Tensor wf = w.to(device, at::kFloat);
  const at::Tensor s = rowScales(wf);  // [out, 1]
  return {toE4m3(wf, s), s.view({-1})};
}

void quantize(flux::Linear& l, c10::Device device) {
  if (l.w8.defined()) return;
  std::tie(l.w8, l.w8Scale) = quantizeWeight(l.w, device);
  l.w = at::Tensor();
  if (l.b.defined()) l.b = l.b.to(device);
}

void keepTransposed(flux::Linear& l, at::ScalarType dtype) {
  c10::NoGradGuard noGrad;
  const at::Tensor dy = at::empty({0, l.w8.size(0)}, l.w8.options().dtype(dtype));  // the output gradient's kind
  if (usesScaledMm(l.w8.size(1), dy)) l.w8t = transposed(l.w8);
}

std::pair<at::Tensor, at::Tensor> quantizeRows(const at::Tensor& x, bool twin, const at::Tensor& colScale) {
  c10::NoGradGuard noGrad;
#ifdef X2I_CUDA_KERNELS
  if (!twin && x.is_cuda() && x.scalar_type() != at::kDouble && std::getenv("X2I_NO_KERNELS") == nullptr)
    return kernels::quantizeRowsE4m3(x, colScale);
#else
  (void)twin;
#endif
  at::Tensor xf = x.to(at::kFloat);
  if (colScale.defined()) xf = xf * colScale.to(x.device(), at::kFloat);
  const at::Tensor s = rowScales(xf);
  return {toE4m3(xf, s), s};
}

at::Tensor linear(const flux::Linear& l, const at::Tensor& x) {
  return Fp8Linear::apply(x, l.w8, l.w8Scale, l.b.defined() ? std::optional<at::Tensor>(l.b) : std::nullopt,
                         l.w8t.defined() ? std::optional<at::Tensor>(l.w8t) : std::nullopt)[0];
}

at::Tensor linearTwin(const flux::Linear& l, const at::Tensor& x, at::ScalarType dt) {
  c10::NoGradGuard noGrad;
  return twin(l.w8, l.w8Scale, l.b, x, dt, /*twinRows=*/true);
}

bool usesScaledMm(int64_t outFeatures, const at::Tensor& x) {
#ifdef X2I_CUDA_KERNELS
  // bf16 only: the rowwise kernels of some LibTorch builds (CUTLASS on sm89, cuBLAS before 12.9) take no fp16 bias
  return x.is_cuda() && x.scalar_type() == at::kBFloat16 && x.size(-1) % 16 == 0 && outFeatures % 16 == 0 &&
         kernels::computeCapability(x.device().index()) >= 89 && std::getenv("X2I_NO_KERNELS") == nullptr;
#else
  (void)outFeatures, (void)x;
  return false;
#endif
}

at::Tensor inputGradientTwin(const flux::Linear& l, const at::Tensor& dy, at::ScalarType dt) {
  c10::NoGradGuard noGrad;
  auto [g8, gs] = quantizeRows(dy.reshape({-1, dy.size(-1)}), /*twin=*/true, l.w8Scale);
  return rowsLike(at::mm(g8.to(dt) * gs.to(dt), l.w8.to(dt)), dy);
}

bool backwardUsesScaledMm(int64_t inFeatures, const at::Tensor& dy) {
  const char* e = std::getenv("X2I_FP8_BACKWARD");
  return (e == nullptr || std::string(e) != "dequantize") && usesScaledMm(inFeatures, dy);
}

bool rowKernelBuilt() {
#ifdef X2I_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

}  // namespace x2i::fp8
