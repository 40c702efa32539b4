// The global gradient norm and clipping by it (torch.nn.utils.clip_grad_norm_), used by AlignNet's training
// and by the transformer's own train step:  ‖g‖ = √(Σ_tensors Σ g²),  coef = maxNorm / (‖g‖ + 1e-6) when
// ‖g‖ > maxNorm > 0, else 1.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace x2i::train {

// ‖g‖ over the defined tensors: each tensor's ‖g‖ in its own dtype (one multi-tensor launch), squared and summed
// in `acc` (options: device and dtype of the accumulator), read once.
double globalNorm(const std::vector<at::Tensor>& grads, const at::TensorOptions& acc);
double clipCoefficient(double norm, double maxNorm);
// g scaled by coef (g itself when coef is 1).
inline at::Tensor clipped(const at::Tensor& g, double coef) { return coef == 1.0 ? g : g * coef; }

}  // namespace x2i::train
