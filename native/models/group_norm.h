// GroupNorm for large feature maps (LightControl's branches, the VAE), the same function as
// torch.nn.functional.group_norm.
#pragma once
#include <torch/torch.h>

namespace x2i {

// x [N, C, *] → (x − μ_{n,g}) / √(σ²_{n,g} + eps) · w_c + b_c, groups of C / groups channels; w and b [C].
// The statistics come from a split reduction in float32 (float64 for float64 inputs): each (sample, group) row is
// cut into chunks that are reduced in parallel and combined exactly (Chan's formula). PyTorch's own kernel gives a
// row one thread block, so a 512² map in two groups runs on two of the GPU's SMs (bench/RESULTS.md, issue 13).
// The normalisation and affine are one pass (one rounding), the backward is LibTorch's group-norm backward.
at::Tensor groupNorm(const at::Tensor& x, int64_t groups, const at::Tensor& w, const at::Tensor& b, double eps);

}  // namespace x2i
