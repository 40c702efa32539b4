// FLUX's latent layout and the decoded image's range (diffusers' FluxPipeline):
//   pack:   z [B, C, h, w] → [B, (h/2)(w/2), 4C]     (2×2 patches, channels last: c·4 + dy·2 + dx)
//   unpack: x [B, (h/2)(w/2), 4C] → z / scale + shift as [B, C, h, w]
//   toImage: decoded [B, 3, H, W] in [−1, 1] → (x/2 + 0.5) clamped to [0, 1], float32
//   imageToUint8: [B, 3, H, W] in [0, 1] → uint8 [B, H, W, 3] (×255, rounded, as diffusers' numpy_to_pil), on the CPU
// Image-to-image and inpainting (diffusers' FluxImg2ImgPipeline / FluxInpaintPipeline):
//   encodeLatents: z [B, C, h, w] (the VAE's posterior mean) → pack((z − shift)·scale) in float32 (unpackLatents' inverse)
//   noiseLatents:  σ·noise + (1 − σ)·x0 (the scheduler's scale_noise), in float32, as noise's dtype and device
//   blendLatents:  (1 − m)·known + m·x (m = 1: keep the sampled x, 0: the known latents), in float32, as x's dtype
// Shapes are checked (ERR_SHAPE_MISMATCH).
#pragma once
#include "core/dtype.h"

namespace x2i::sample {

at::Tensor packLatents(const at::Tensor& z);
at::Tensor unpackLatents(const at::Tensor& x, int64_t h, int64_t w, double scale, double shift);
at::Tensor toImage(const at::Tensor& decoded);
at::Tensor imageToUint8(const at::Tensor& images);
at::Tensor encodeLatents(const at::Tensor& z, double scale, double shift);
at::Tensor noiseLatents(const at::Tensor& x0, const at::Tensor& noise, double sigma);
at::Tensor blendLatents(const at::Tensor& x, const at::Tensor& known, const at::Tensor& mask);

}  // namespace x2i::sample
