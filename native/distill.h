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

// teacher/student: stacked captures [B, layers, tokens, D] in the order doubleImg, doubleTxt, single.
Result composed(const std::array<at::Tensor, 3>& teacher, const std::array<at::Tensor, 3>& student, Divergence div,
                double temperature, bool wantGrad);

Napi::Value DistillationLoss(const Napi::CallbackInfo& info);

}  // namespace x2i::distill
