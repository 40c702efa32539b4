#include "models/fp8.h"
#ifdef X2I_CUDA_KERNELS
#include "kernels/kernels.h"
#endif

#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>

namespace x2i::fp8 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// per-row scales of a float32 [M, K]: max(|row|) / 448 (at least 1e-12 / 448: rows of zeros stay zeros)
at::Tensor rowScales(const at::Tensor& xf) { return xf.abs().amax(-1, true).clamp_min(1e-12).div_(kE4m3Max); }

at::Tensor toE4m3(const at::Tensor& xf, const at::Tensor& scale) {
  return (xf / scale).clamp_(-kE4m3Max, kE4m3Max).to(at::kFloat8_e4m3fn);
}

// x [M, K] · (w8 · scale)ᵀ + b on FP8 tensor cores, or undefined where that path does not apply
at::Tensor scaledGemm(const at::Tensor& w8, const at::Tensor& scale, const at::Tensor& b, const at::Tensor& x) {
#ifdef X2I_CUDA_KERNELS
  const auto dt = x.scalar_type();
  if (!x.is_cuda() || (dt != at::kBFloat16 && dt != at::kHalf) || x.size(1) % 16 || w8.size(0) % 16 ||
      !kernels::fp8GemmSupported(x.device().index()) || std::getenv("X2I_NO_KERNELS"))
    return {};
  auto [x8, xs] = quantizeRows(x);
  std::optional<at::Tensor> bias;
  if (b.defined()) bias = b.to(dt);
  return at::_scaled_mm(x8, w8.t(), xs, scale.view({1, -1}), bias, std::nullopt, dt, /*use_fast_accum=*/false);
#else
  (void)w8, (void)scale, (void)b, (void)x;
  return {};
#endif
}

at::Tensor product(const at::Tensor& w8, const at::Tensor& scale, const at::Tensor& b, const at::Tensor& x) {
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  at::Tensor y = scaledGemm(w8, scale, b, x2);
  if (!y.defined()) {  // the twin: the same quantized operands, multiplied in float32 (float64 for float64 inputs)
    const auto f = at::promote_types(at::kFloat, x.scalar_type());
    auto [x8, xs] = quantizeRows(x2);
    y = at::mm(x8.to(f) * xs.to(f), (w8.to(f) * scale.to(f).unsqueeze(1)).t());
    if (b.defined()) y.add_(b.to(f));
    y = y.to(x.scalar_type());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w8.size(0);
  return y.view(shape);
}

// y = W x + b with W in FP8; backward: dx = dy · W (the weights frozen, dequantized for the product)
struct Fp8Linear : torch::autograd::Function<Fp8Linear> {
  static variable_list forward(AutogradContext* ctx, at::Tensor x, at::Tensor w8, at::Tensor scale,
                               std::optional<at::Tensor> b) {
    ctx->saved_data["w8"] = w8;
    ctx->saved_data["scale"] = scale;
    return {product(w8, scale, b.value_or(at::Tensor()), x)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const at::Tensor w8 = ctx->saved_data["w8"].toTensor(), scale = ctx->saved_data["scale"].toTensor();
    const at::Tensor dy = g[0];
    const at::Tensor w = w8.to(dy.scalar_type()) * scale.to(dy.scalar_type()).unsqueeze(1);  // [out, in]
    return {at::matmul(dy, w), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::vector<flux::Linear*> blockLinears(flux::Model& m) {
  std::vector<flux::Linear*> out;
  for (auto& b : m.doubles)
    for (flux::Stream* s : {&b.img, &b.txt}) out.insert(out.end(), {&s->mod, &s->qkv, &s->proj, &s->mlp0, &s->mlp2});
  for (auto& b : m.singles) out.insert(out.end(), {&b.mod, &b.linear1, &b.linear2});
  return out;
}

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

std::pair<at::Tensor, at::Tensor> quantizeRows(const at::Tensor& x, bool twin) {
  c10::NoGradGuard noGrad;
#ifdef X2I_CUDA_KERNELS
  if (!twin && x.is_cuda() && x.scalar_type() != at::kDouble && std::getenv("X2I_NO_KERNELS") == nullptr)
    return kernels::quantizeRowsE4m3(x);
#else
  (void)twin;
#endif
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor s = rowScales(xf);
  return {toE4m3(xf, s), s};
}

at::Tensor linear(const flux::Linear& l, const at::Tensor& x) {
  return Fp8Linear::apply(x, l.w8, l.w8Scale, l.b.defined() ? std::optional<at::Tensor>(l.b) : std::nullopt)[0];
}

at::Tensor dequantized(const flux::Linear& l, at::ScalarType dt) {
  return l.w8.to(dt) * l.w8Scale.to(dt).unsqueeze(1);
}

at::Tensor linearTwin(const flux::Linear& l, const at::Tensor& x, at::ScalarType dt) {
  c10::NoGradGuard noGrad;
  auto [x8, xs] = quantizeRows(x.reshape({-1, x.size(-1)}), /*twin=*/true);
  at::Tensor y = at::mm(x8.to(dt) * xs.to(dt), dequantized(l, dt).t());
  if (l.b.defined()) y.add_(l.b.to(dt));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = l.w8.size(0);
  return y.view(shape);
}

}  // namespace x2i::fp8
