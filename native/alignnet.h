// X2I AlignNet (see alignnet.cc).
#pragma once
#include "common.h"

#include <map>

namespace x2i::alignnet {

// Training state: float32 master weights, AdamW moments and step count, gradients being accumulated.
struct Training {
  std::map<std::string, at::Tensor> master, expAvg, expAvgSq, grad;
  int64_t step = 0;
  int64_t accumulated = 0;
};

struct Model {
  std::string variant;     // "conv" (Qwen/MiniCPM/InternVL-4B), "scale" (InternVL-1B), "mean"
  int64_t layers = 0;      // C, the stacked hidden states (0: any, for "mean")
  double eps = 1e-6;
  at::Tensor convW, convB; // [1, C, k, k], [1]
  at::Tensor scale;        // cha_scale [1, C, 1, 1]
  at::Tensor lnW, lnB;     // LayerNorm(H)
  at::Tensor proj0, proj2; // Linear(H → Dseq), Linear(Dseq → Dseq), no bias
  at::Tensor fcW, fcB;     // Linear(Dseq → Dpooled)
  std::shared_ptr<Training> training;
};


std::shared_ptr<Model> load(std::map<std::string, at::Tensor> weights, double eps, const std::string& source);
// hiddenStates [B, C, S, H] → (encoderHiddenStates [B, S, Dseq], pooledProjections [B, Dpooled])
std::pair<at::Tensor, at::Tensor> forward(const Model& m, const at::Tensor& hiddenStates);
std::map<std::string, at::Tensor> weights(const Model& m);

class Wrap : public Napi::ObjectWrap<Wrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit Wrap(const Napi::CallbackInfo& info);

 private:
  std::shared_ptr<Model> model_;
  std::shared_ptr<Model> model() const;
  static Napi::Value Load(const Napi::CallbackInfo& info);
  static Napi::Value Random(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Weights(const Napi::CallbackInfo& info);
  Napi::Value Backward(const Napi::CallbackInfo& info);
  Napi::Value OptimizerStep(const Napi::CallbackInfo& info);
  Napi::Value BroadcastWeights(const Napi::CallbackInfo& info);
  Napi::Value TrainingState(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
};

}  // namespace x2i::alignnet
