// Fine-tuning through the frozen transformer by flow matching: X2I's LoRA training (image-text-to-image through
// the student's conditioning, or text-to-image through T5 + CLIP) and LightControl's training (§5.3):
//   x_σ = (1 − σ)·x0 + σ·ε,   v = FLUX(x_σ, t = σ, conditioning, guidance [, control residuals]),
//   loss = mean (v − (ε − x0))²   (the official recipe: weighting "none", mean over all elements)
// Only the trainable parameters get gradients: an adapter's parts (models/lora.h) and/or LightControl's branches.
// They are float32 leaves; gradients accumulate over micro-batches; step() averages them (over every rank with a
// process group), clips by the global norm (train/grad_norm.h) and applies AdamW (train/adamw.h).
#pragma once
#include "models/flux.h"
#include "train/adamw.h"
#include "train/distributed.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace x2i::train {

// The control branches: residuals [B, n, N, D] for a hint and the timestep, differentiable in their parameters.
using ControlFn = std::function<at::Tensor(const at::Tensor& hint, const at::Tensor& timestep, at::ScalarType dtype)>;

struct FineTune {
  std::shared_ptr<flux::Model> model;
  std::string adapter;              // the LoRA adapter trained ("": none)
  std::shared_ptr<void> control;    // keeps the control branches alive
  ControlFn controlForward;
  std::vector<std::string> names;   // one per parameter, for checkpoints
  std::vector<at::Tensor> params;   // float32 leaves
  std::vector<at::Tensor> grads;    // accumulated (undefined: none yet)
  int64_t accumulated = 0;
  AdamWState adamw;
};

// Adds the adapter's parts as parameters named "<target>.<row>.lora_A" / ".lora_B" (the adapter must be trainable).
void addAdapterParameters(FineTune& ft, const std::string& adapter);
// Adds named float32 parameters (made leaves that require grad).
void addParameters(FineTune& ft, const std::vector<std::pair<std::string, at::Tensor*>>& named);

struct FineTuneBatch {
  flux::Inputs inputs;  // hiddenStates: the clean packed latents x0
  at::Tensor noise;     // ε, like x0
  at::Tensor sigma;     // [B] in [0, 1]
  at::Tensor hint;      // the control image [B, 3, H, W] in [−1, 1] (with control branches)
  double controlScale = 1;
  bool checkpoint = false;
};
// One micro-batch: the loss, its gradients added to the accumulated ones.
double backward(FineTune& ft, const FineTuneBatch& batch);
// The optimizer step; returns the gradient norm before clipping.
double step(FineTune& ft, const AdamW& opt, double maxNorm, dist::Group* group);
// Checkpoint state: parameters, moments and step (copies); restore() copies them back (shapes checked).
struct FineTuneState {
  int64_t step = 0;
  std::map<std::string, at::Tensor> params, expAvg, expAvgSq;
};
FineTuneState state(const FineTune& ft);
void restore(FineTune& ft, const FineTuneState& s);

}  // namespace x2i::train
