#include "train/adamw.h"

#include <cmath>

namespace x2i::train {

void adamwUpdate(const AdamW& o, int64_t t, at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g) {
  const double bc1 = 1 - std::pow(o.beta1, double(t)), bc2 = 1 - std::pow(o.beta2, double(t));
  p.mul_(1 - o.lr * o.weightDecay);                 // decoupled weight decay
  m.mul_(o.beta1).add_(g, 1 - o.beta1);             // first moment
  v.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);      // second moment
  p.addcdiv_(m, (v / bc2).sqrt_().add_(o.eps), -o.lr / bc1);
}

}  // namespace x2i::train
