// AlignNet's training: float32 master weights, gradients accumulated over micro-batches, the optimizer step
// (train/adamw.h, train/grad_norm.h), and data parallelism through a process group (train/distributed.h).
#pragma once
#include "models/alignnet.h"
#include "train/adamw.h"
#include "train/distributed.h"

#include <map>
#include <string>

namespace x2i::alignnet {

// Training state: float32 master weights, AdamW moments and step count, gradients being accumulated.
struct Training {
  std::map<std::string, at::Tensor> master, expAvg, expAvgSq, grad;
  int64_t step = 0;
  int64_t accumulated = 0;
};

// m's training state, made on first use (masters: the weights in float32; moments: zeros).
Training& trainingOf(Model& m);

// d⟨gSeq, seq⟩ + ⟨gPooled, pooled⟩ / d parameters, recomputing the forward from the float32 master weights,
// added to the accumulated gradients. optimizerStep() applies them.
void backward(Model& m, const at::Tensor& hiddenStates, const at::Tensor& gSeq, const at::Tensor& gPooled);

// The accumulated gradients averaged (over every rank's micro-batches, with a group of more than one rank),
// clipped by their global norm, then one AdamW step on the masters; the model's weights become the cast
// masters. Returns the norm before clipping.
double optimizerStep(Model& m, const train::AdamW& opt, double maxNorm, dist::Group* group);

// root's float32 masters (and so its weights) on every rank.
void broadcastWeights(Model& m, dist::Group& group, int root);

// Restores step and the named tensors of `parts` ("master", "expAvg", "expAvgSq": every key of the state,
// shapes checked by the caller); the weights become the cast masters, accumulated gradients are dropped.
void restoreTraining(Model& m, int64_t step, const std::map<std::string, std::map<std::string, at::Tensor>>& parts);

}  // namespace x2i::alignnet
