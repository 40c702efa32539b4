// The X2I distillation loss (see distill.cc): per tap, a divergence between the teacher's and the student's
// per-token channel distributions.
#pragma once
#include "core/dtype.h"

#include <torch/csrc/autograd/autograd.h>

#include <array>

namespace x2i::distill {

enum class Divergence { Rkl, Kl, Js, Mse };
Divergence parseDivergence(const std::string& s);

struct Result {
  double loss = 0;
  std::array<std::vector<double>, 3> terms;  // doubleImg, doubleTxt, single: one per layer
  int64_t skipped = 0;
  std::array<at::Tensor, 3> grads;           // d loss / d student captures, stacked as the captures
};

// One tap [B, tokens, D]: its term (a 0-dim float32 tensor on the tap's device, NaN/Inf left in it when not
// finite) and incoming (if defined) + d term / d student, in the student's dtype; a term that is not finite
// adds no gradient. The one-pass CUDA kernel where it applies (unless `composite`), else the same formulas
// as LibTorch ops (float32, float64 for float64 inputs). No autograd.
std::pair<at::Tensor, at::Tensor> tapLossGrad(const at::Tensor& teacher, const at::Tensor& student, Divergence div,
                                              double temperature, const at::Tensor& incoming = {},
                                              bool composite = false);

// The training step's form: returns the student's tap to pass on through the forward, and an anchor (a
// 0-dim tensor) to start the backward from. In the backward the gradient arriving at the tap becomes
// incoming + d term / d tap in one fused pass (nothing is kept but the teacher's tap), and the term is
// written to terms[slot] (float32, on the device).
std::pair<at::Tensor, at::Tensor> attachTapLoss(const at::Tensor& studentTap, const at::Tensor& teacherTap,
                                                Divergence div, double temperature, const at::Tensor& terms,
                                                int64_t slot);

// Stacked captures [B, layers, tokens, D] (doubleImg, doubleTxt, single), through tapLossGrad per layer.
Result fused(const std::array<at::Tensor, 3>& teacher, const std::array<at::Tensor, 3>& student, Divergence div,
             double temperature, bool wantGrad);

// The same loss through LibTorch autograd (the reference the fused paths are tested against).
Result composed(const std::array<at::Tensor, 3>& teacher, const std::array<at::Tensor, 3>& student, Divergence div,
                double temperature, bool wantGrad);


}  // namespace x2i::distill
