// Agreement between two images or two tensors.
//  SSIM (Wang et al. 2004): 11×11 Gaussian window (σ = 1.5), constants (0.01, 0.03)², valid region, mean over
//  channels and pixels; PSNR for a peak of 1 (∞ for equal images). float64 on the CPU.
#pragma once
#include "core/dtype.h"

#include <vector>

namespace x2i::sample {

struct Agreement {
  std::vector<double> ssim, psnr;  // one per image
};
// a, b [B, C, H, W] of one shape, in [0, 1] (checked: ERR_SHAPE_MISMATCH).
void checkAgreement(const at::Tensor& a, const at::Tensor& b);
Agreement imageAgreement(const at::Tensor& a, const at::Tensor& b);

// ‖a − b‖ / ‖b‖ in float64 on a's device.
double relativeError(const at::Tensor& a, const at::Tensor& b);

}  // namespace x2i::sample
