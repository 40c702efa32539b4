#include "train/adamw.h"

#include <cmath>

namespace x2i::train {

void adamwUpdate(const AdamW& o, int64_t t, at::TensorList p, at::TensorList m, at::TensorList v, at::TensorList g) {
  if (p.empty()) return;
  const double bc1 = 1 - std::pow(o.beta1, double(t)), bc2 = 1 - std::pow(o.beta2, double(t));
  at::_foreach_mul_(p, 1 - o.lr * o.weightDecay);  // decoupled weight decay
  at::_foreach_mul_(m, o.beta1);                   // first moment
  at::_foreach_add_(m, g, 1 - o.beta1);
  at::_foreach_mul_(v, o.beta2);                   // second moment
  at::_foreach_addcmul_(v, g, g, 1 - o.beta2);
  std::vector<at::Tensor> denom = at::_foreach_div(v, bc2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, o.eps);
  at::_foreach_addcdiv_(p, m, denom, -o.lr / bc1);
}

}  // namespace x2i::train
