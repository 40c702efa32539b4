// Image resizing as PIL's BICUBIC does it: bicubic with antialiasing (the kernel PyTorch matches to PIL),
// rounded and clamped to 0..255 ('torch': PyTorch's float kernel in one pass, what torchvision-based processors
// compute), or bit for bit as Pillow computes it ('pil': separable passes, horizontal then vertical, 22-bit
// fixed-point weights, 8-bit rounding between the passes).
#pragma once
#include "core/dtype.h"

namespace x2i::sample {

// rgb uint8 [H, W, C] → uint8 [outH, outW, C]; the checks (ERR_INVALID_ARG) come first, on the caller's thread.
void checkResizeInput(const at::Tensor& rgb);
void checkResizeOutput(int64_t outH, int64_t outW);
at::Tensor resizeImage(const at::Tensor& rgb, int64_t outH, int64_t outW, bool pil = false);

}  // namespace x2i::sample
