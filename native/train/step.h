// What one training step does through the FLUX transformer:
//  - distillationStep: the X2I step. The frozen teacher runs without autograd and keeps its taps; the student
//    runs with every tap passed through its loss node (train/distill.h: attachTapLoss); the backward goes to
//    the conditioning inputs (encoderHiddenStates, pooledProjections) only: AlignNet trains, FLUX does not.
//  - conditioningVjp: the same backward for given gradients of the output and of the stacked taps.
//  - flowMatchingStep: the transformer's own training (a teacher trained from scratch, as in `x2i demo`).
#pragma once
#include "models/flux.h"
#include "train/adamw.h"
#include "train/distill.h"

#include <array>
#include <vector>

namespace x2i::train {

// Taps stacked per kind (doubleImg, doubleTxt, single) on dim 1: [B, blocks, tokens, D].
using Captures = std::array<at::Tensor, 3>;
extern const char* const kCaptureNames[3];  // "doubleImg", "doubleTxt", "single"

// The velocity [B, N, out] of one inference forward, and its stacked taps when `capture`.
struct Prediction {
  at::Tensor sample;
  Captures captures;
};
Prediction predict(const flux::Model& m, const flux::Inputs& in, bool capture);

// Gradients with respect to the conditioning inputs.
struct ConditioningGrad {
  at::Tensor encoderHiddenStates, pooledProjections;
};

// The vector-Jacobian product of the frozen transformer with respect to its conditioning inputs, for the given
// gradients of the output (gradSample, may be undefined) and/or of the stacked captures. Returns the sample too.
std::pair<at::Tensor, ConditioningGrad> conditioningVjp(const flux::Model& m, const flux::Inputs& in,
                                                        const at::Tensor& gradSample, const Captures& gradCaptures,
                                                        bool checkpoint);

// The teacher of a distillation step: its inputs (it runs here), or its stacked taps computed elsewhere
// (e.g. on another GPU), [B, blocks, tokens, D] each.
struct Teacher {
  flux::Inputs inputs;
  Captures captures;
  bool given = false;
};
// `given` captures checked against the model's block counts (ERR_SHAPE_MISMATCH).
void checkTeacherCaptures(const flux::Model& m, const Captures& c);

struct DistillResult {
  std::array<std::vector<double>, 3> terms;  // per tap kind, one per block (NaN/Inf: skipped)
  double loss = 0;                           // Σ of the finite terms
  int64_t skipped = 0;
  ConditioningGrad grad;
};
DistillResult distillationStep(const flux::Model& m, const Teacher& teacher, const flux::Inputs& student,
                               distill::Divergence div, double temperature, bool checkpoint);

// One step of flow matching on every parameter: loss = mean (v − target)², backward, clipping by the global
// norm (maxNorm ≤ 0: none), AdamW with moments in `state`. float32 models only (checked by the caller).
struct FlowStepResult {
  double loss = 0, gradNorm = 0;
  int64_t step = 0;
};
FlowStepResult flowMatchingStep(flux::Model& m, const flux::Inputs& in, const at::Tensor& target, const AdamW& opt,
                                double maxNorm, AdamWState& state);

}  // namespace x2i::train
