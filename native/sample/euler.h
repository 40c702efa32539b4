// FLUX's Euler sampler (diffusers' FluxPipeline with FlowMatchEulerDiscreteScheduler): at step i the transformer
// sees timestep t_i / 1000 (in the latents' dtype; the model multiplies by 1000 again) and predicts the velocity v;
//   x ← x + (σ_{i+1} − σ_i)·v        in float32, rounded back to the latents' dtype.
#pragma once
#include "models/flux.h"

#include <vector>

namespace x2i::sample {

struct Denoised {
  at::Tensor latents;  // [B, N, C] packed, like inputs.hiddenStates
  at::Tensor steps;    // [steps, B, N, C]: the latents after each step (when kept)
};
// sigmas has one entry more than timesteps; inputs.hiddenStates holds the starting noise.
Denoised denoise(const flux::Model& m, const flux::Inputs& in, const std::vector<float>& timesteps,
                 const std::vector<float>& sigmas, bool keepSteps);

// The model's captured denoising step: "none", "fresh" (not captured yet), "captured" or "failed" (eager from now on).
const char* stepGraphState(const flux::Model& m);

}  // namespace x2i::sample
