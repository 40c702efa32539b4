#include "sample/euler.h"

#include <c10/core/InferenceMode.h>

namespace x2i::sample {

Denoised denoise(const flux::Model& m, const flux::Inputs& in, const std::vector<float>& ts,
                 const std::vector<float>& sig, bool keepSteps) {
  c10::InferenceMode guard;
  flux::Inputs p = flux::prepare(m, [&] { flux::Inputs q = in; q.timestep = at::zeros({in.hiddenStates.size(0)}); return q; }());
  at::Tensor x = p.hiddenStates;
  std::vector<at::Tensor> steps;
  const int64_t B = x.size(0);
  for (size_t i = 0; i < ts.size(); ++i) {
    // the pipeline's timestep: t / 1000 in the latents' dtype (the model multiplies by 1000 again)
    p.timestep = (at::full({B}, ts[i], at::TensorOptions().dtype(at::kFloat)).to(x.device(), x.scalar_type()) / 1000);
    p.hiddenStates = x;
    at::Tensor v = flux::forward(m, p);
    x = (x.to(at::kFloat) + v.to(at::kFloat) * (sig[i + 1] - sig[i])).to(x.scalar_type());
    if (keepSteps) steps.push_back(x);
  }
  Denoised out;
  out.latents = x;
  if (keepSteps) out.steps = at::stack(steps, 0);
  syncDevice(x);
  return out;
}

}  // namespace x2i::sample
