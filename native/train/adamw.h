// AdamW (Loshchilov & Hutter), PyTorch's formula with decoupled weight decay; used by AlignNet's training
// (train/alignnet.cc) and by the transformer's own train step (train/step.cc). At step t (from 1):
//   p ← p·(1 − lr·wd)
//   m ← β1·m + (1 − β1)·g          v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (√(v / (1 − β2^t)) + eps)
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace x2i::train {

struct AdamW {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 1e-2;
};

// Parameters p (in place) with their moments m, v (in place) for the gradients g at step t, all lists in one
// order: multi-tensor (foreach) kernels on CUDA, one launch per formula line for every tensor at once.
void adamwUpdate(const AdamW& o, int64_t t, at::TensorList p, at::TensorList m, at::TensorList v, at::TensorList g);

// The moments of a list of parameters, made (zeros) on first use.
struct AdamWState {
  std::vector<at::Tensor> m, v;
  int64_t step = 0;
};

}  // namespace x2i::train
