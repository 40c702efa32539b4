#include "sample/image.h"

namespace x2i::sample {

void checkResizeInput(const at::Tensor& img) {
  if (img.dim() != 3 || img.scalar_type() != at::kByte)
    fail("ERR_INVALID_ARG", "resizeImage expects a uint8 [H, W, C] tensor, found " + dtypeName(img.scalar_type()));
}

void checkResizeOutput(int64_t oh, int64_t ow) {
  if (oh <= 0 || ow <= 0) fail("ERR_INVALID_ARG", "resizeImage: the output size must be positive");
}

at::Tensor resizeImage(const at::Tensor& img, int64_t oh, int64_t ow) {
  at::Tensor x = img.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);  // [1, C, H, W]
  at::Tensor y = (x.size(2) == oh && x.size(3) == ow) ? x : at::_upsample_bicubic2d_aa(x, {oh, ow}, false);
  return y.round().clamp(0, 255).to(at::kByte).squeeze(0).permute({1, 2, 0}).contiguous();
}

}  // namespace x2i::sample
