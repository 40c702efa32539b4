#include "sample/latents.h"

namespace x2i::sample {

at::Tensor packLatents(const at::Tensor& z) {
  if (z.dim() != 4 || z.size(2) % 2 || z.size(3) % 2)
    fail("ERR_SHAPE_MISMATCH", "packLatents: expected [B, C, h, w] with even h and w");
  const int64_t B = z.size(0), C = z.size(1), h = z.size(2), w = z.size(3);
  return z.view({B, C, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({B, (h / 2) * (w / 2), C * 4});
}

at::Tensor unpackLatents(const at::Tensor& x, int64_t h, int64_t w, double scale, double shift) {
  if (x.dim() != 3 || h % 2 || w % 2 || x.size(1) != (h / 2) * (w / 2) || x.size(2) % 4)
    fail("ERR_SHAPE_MISMATCH", "unpackLatents: expected [B, (h/2)(w/2), 4C] for even h, w");
  const int64_t B = x.size(0), C = x.size(2) / 4;
  return x.view({B, h / 2, w / 2, C, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({B, C, h, w}) / scale + shift;
}

at::Tensor toImage(const at::Tensor& x) { return (x.to(at::kFloat) / 2 + 0.5).clamp(0, 1); }

at::Tensor imageToUint8(const at::Tensor& x) {
  if (x.dim() != 4 || x.size(1) != 3) fail("ERR_SHAPE_MISMATCH", "images must be [B, 3, H, W], found " + std::to_string(x.dim()) + "-D");
  return (x.to(at::kCPU, at::kFloat) * 255).round().clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
}

}  // namespace x2i::sample
