#include "train/grad_norm.h"

#include <cmath>

namespace x2i::train {

double globalNorm(const std::vector<at::Tensor>& grads, const at::TensorOptions& acc) {
  std::vector<at::Tensor> defined;
  for (auto& g : grads)
    if (g.defined()) defined.push_back(g);
  if (defined.empty()) return 0;
  const at::Tensor norms = at::stack(at::_foreach_norm(defined, 2)).to(acc);
  return std::sqrt(norms.square().sum().item<double>());
}

double clipCoefficient(double norm, double maxNorm) { return maxNorm > 0 && norm > maxNorm ? maxNorm / (norm + 1e-6) : 1.0; }

}  // namespace x2i::train
