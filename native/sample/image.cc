#include "sample/image.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace x2i::sample {

void checkResizeInput(const at::Tensor& img) {
  if (img.dim() != 3 || img.scalar_type() != at::kByte)
    fail("ERR_INVALID_ARG", "resizeImage expects a uint8 [H, W, C] tensor, found " + dtypeName(img.scalar_type()));
}

void checkResizeOutput(int64_t oh, int64_t ow) {
  if (oh <= 0 || ow <= 0) fail("ERR_INVALID_ARG", "resizeImage: the output size must be positive");
}

namespace {

// Pillow's bicubic filter (a = −0.5, support 2)
double bicubic(double x) {
  const double a = -0.5;
  x = std::abs(x);
  if (x < 1) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

constexpr int kPrecision = 32 - 8 - 2;  // Pillow's PRECISION_BITS

// One axis: for each output index its first input index, tap count and fixed-point weights (Pillow's
// precompute_coeffs + normalize_coeffs_8bpc).
struct Taps {
  std::vector<int64_t> first, count;
  std::vector<int32_t> w;  // [out, ksize]
  int64_t ksize = 0;
};
Taps taps(int64_t in, int64_t out) {
  const double scale = double(in) / double(out), filterscale = std::max(scale, 1.0), support = 2.0 * filterscale;
  Taps t;
  t.ksize = int64_t(std::ceil(support)) * 2 + 1;
  t.first.resize(size_t(out)), t.count.resize(size_t(out)), t.w.assign(size_t(out * t.ksize), 0);
  std::vector<double> k(size_t(t.ksize));
  for (int64_t xx = 0; xx < out; ++xx) {
    const double center = (double(xx) + 0.5) * scale, ss = 1.0 / filterscale;
    int64_t xmin = int64_t(center - support + 0.5), xmax = int64_t(center + support + 0.5);
    xmin = std::max<int64_t>(xmin, 0);
    xmax = std::min<int64_t>(xmax, in) - xmin;
    double ww = 0;
    for (int64_t x = 0; x < xmax; ++x) ww += (k[size_t(x)] = bicubic((double(x + xmin) - center + 0.5) * ss));
    for (int64_t x = 0; x < xmax; ++x) {
      const double v = ww != 0 ? k[size_t(x)] / ww : k[size_t(x)];
      t.w[size_t(xx * t.ksize + x)] = int32_t(v < 0 ? v * (1 << kPrecision) - 0.5 : v * (1 << kPrecision) + 0.5);
    }
    t.first[size_t(xx)] = xmin, t.count[size_t(xx)] = xmax;
  }
  return t;
}

uint8_t clip8(int64_t v) {
  v >>= kPrecision;
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Pillow's ImagingResample for 8-bit images: a horizontal pass, then a vertical one, each rounding to 8 bits.
at::Tensor resizePil(const at::Tensor& img, int64_t oh, int64_t ow) {
  const at::Tensor src = img.contiguous();
  const int64_t H = src.size(0), W = src.size(1), C = src.size(2);
  at::Tensor mid = src;
  if (ow != W) {
    const Taps t = taps(W, ow);
    mid = at::empty({H, ow, C}, src.options());
    const uint8_t* in = src.data_ptr<uint8_t>();
    uint8_t* o = mid.data_ptr<uint8_t>();
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < ow; ++x)
        for (int64_t c = 0; c < C; ++c) {
          int64_t ss = int64_t(1) << (kPrecision - 1);
          for (int64_t k = 0; k < t.count[size_t(x)]; ++k)
            ss += int64_t(in[(y * W + t.first[size_t(x)] + k) * C + c]) * t.w[size_t(x * t.ksize + k)];
          o[(y * ow + x) * C + c] = clip8(ss);
        }
  }
  if (oh == H) return mid.clone();
  const Taps t = taps(H, oh);
  at::Tensor out = at::empty({oh, ow, C}, src.options());
  const uint8_t* in = mid.data_ptr<uint8_t>();
  uint8_t* o = out.data_ptr<uint8_t>();
  for (int64_t y = 0; y < oh; ++y)
    for (int64_t x = 0; x < ow; ++x)
      for (int64_t c = 0; c < C; ++c) {
        int64_t ss = int64_t(1) << (kPrecision - 1);
        for (int64_t k = 0; k < t.count[size_t(y)]; ++k)
          ss += int64_t(in[((t.first[size_t(y)] + k) * ow + x) * C + c]) * t.w[size_t(y * t.ksize + k)];
        o[(y * ow + x) * C + c] = clip8(ss);
      }
  return out;
}

}  // namespace

at::Tensor resizeImage(const at::Tensor& img, int64_t oh, int64_t ow, bool pil) {
  if (pil) return img.size(0) == oh && img.size(1) == ow ? img.clone() : resizePil(img.to(at::kCPU), oh, ow).to(img.device());
  at::Tensor x = img.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);  // [1, C, H, W]
  at::Tensor y = (x.size(2) == oh && x.size(3) == ow) ? x : at::_upsample_bicubic2d_aa(x, {oh, ow}, false);
  return y.round().clamp(0, 255).to(at::kByte).squeeze(0).permute({1, 2, 0}).contiguous();
}

}  // namespace x2i::sample
