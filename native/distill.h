// The X2I distillation loss (see distill.cc).
#pragma once
#include "common.h"

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

// One tap [B, tokens, D]: its term (a 0-dim float32 tensor on the tap's device; zero-gradient and NaN/Inf
// left in the term when not finite) and d term / d student in the student's dtype. The one-pass CUDA kernel
// where it applies, else the same formulas as LibTorch ops (float32, float64 for float64 inputs). No autograd.
std::pair<at::Tensor, at::Tensor> tapLossGrad(const at::Tensor& teacher, const at::Tensor& student, Divergence div,
                                              double temperature);

// Stacked captures [B, layers, tokens, D] (doubleImg, doubleTxt, single), through tapLossGrad per layer.
Result fused(const std::array<at::Tensor, 3>& teacher, const std::array<at::Tensor, 3>& student, Divergence div,
             double temperature, bool wantGrad);

// The same loss through LibTorch autograd (the reference the fused paths are tested against).
Result composed(const std::array<at::Tensor, 3>& teacher, const std::array<at::Tensor, 3>& student, Divergence div,
                double temperature, bool wantGrad);

Napi::Value DistillationLoss(const Napi::CallbackInfo& info);
Napi::Value BenchTap(const Napi::CallbackInfo& info);

}  // namespace x2i::distill
