// FLUX's latent layout and the decoded image's range (diffusers' FluxPipeline):
//   pack:   z [B, C, h, w] → [B, (h/2)(w/2), 4C]     (2×2 patches, channels last: c·4 + dy·2 + dx)
//   unpack: x [B, (h/2)(w/2), 4C] → z / scale + shift as [B, C, h, w]
//   toImage: decoded [B, 3, H, W] in [−1, 1] → (x/2 + 0.5) clamped to [0, 1], float32
//   imageToUint8: [B, 3, H, W] in [0, 1] → uint8 [B, H, W, 3] (×255, rounded, as diffusers' numpy_to_pil), on the CPU
// Shapes are checked (ERR_SHAPE_MISMATCH).
#pragma once
#include "core/dtype.h"

namespace x2i::sample {

at::Tensor packLatents(const at::Tensor& z);
at::Tensor unpackLatents(const at::Tensor& x, int64_t h, int64_t w, double scale, double shift);
at::Tensor toImage(const at::Tensor& decoded);
at::Tensor imageToUint8(const at::Tensor& images);

}  // namespace x2i::sample
