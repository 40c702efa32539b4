#include "sample/evaluate.h"

#include <c10/core/InferenceMode.h>

#include <cmath>
#include <limits>

namespace x2i::sample {
namespace {
// The normalised 11×11 Gaussian window (σ = 1.5), one per channel: [C, 1, 11, 11].
at::Tensor gaussianWindow(int64_t C) {
  at::Tensor r = at::arange(11, at::kDouble) - 5;
  at::Tensor g1 = at::exp(-(r * r) / (2 * 1.5 * 1.5));
  g1 = g1 / g1.sum();
  return (g1.unsqueeze(1) * g1.unsqueeze(0)).expand({C, 1, 11, 11}).contiguous();
}
}  // namespace

void checkAgreement(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.dim() != 4) fail("ERR_SHAPE_MISMATCH", "imageAgreement: two images [B, C, H, W] of one shape");
}

Agreement imageAgreement(const at::Tensor& a, const at::Tensor& b) {
  c10::InferenceMode g;
  at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  const int64_t C = x.size(1);
  const at::Tensor win = gaussianWindow(C);
  const std::vector<int64_t> one{1, 1}, zero{0, 0};
  auto f = [&](const at::Tensor& t) {  // the windowed mean, per channel, valid region
    return at::conv2d(t, win, at::Tensor(), at::IntArrayRef(one), at::IntArrayRef(zero), at::IntArrayRef(one), C);
  };
  at::Tensor mx = f(x), my = f(y);
  at::Tensor sxx = f(x * x) - mx * mx, syy = f(y * y) - my * my, sxy = f(x * y) - mx * my;
  const double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
  at::Tensor ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
  at::Tensor s = ssim.mean({1, 2, 3}), mse = (x - y).pow(2).mean({1, 2, 3});
  Agreement out;
  for (int64_t i = 0; i < x.size(0); ++i) {
    out.ssim.push_back(s[i].item<double>());
    const double m = mse[i].item<double>();
    out.psnr.push_back(m > 0 ? 10 * std::log10(1.0 / m) : std::numeric_limits<double>::infinity());
  }
  return out;
}

double relativeError(const at::Tensor& a, const at::Tensor& b) {
  c10::InferenceMode guard;
  at::Tensor bd = b.to(a.device(), at::kDouble), ad = a.to(at::kDouble);
  return ((ad - bd).norm() / bd.norm()).item<double>();
}

}  // namespace x2i::sample
