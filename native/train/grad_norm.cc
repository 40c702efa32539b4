#include "train/grad_norm.h"

#include <cmath>

namespace x2i::train {

double globalNorm(const std::vector<at::Tensor>& grads, const at::TensorOptions& acc) {
  at::Tensor sq = at::zeros({}, acc);
  for (auto& g : grads)
    if (g.defined()) sq += g.pow(2).sum();
  return std::sqrt(sq.item<double>());
}

double clipCoefficient(double norm, double maxNorm) { return maxNorm > 0 && norm > maxNorm ? maxNorm / (norm + 1e-6) : 1.0; }

}  // namespace x2i::train
