// X2I AlignNet (see alignnet.cc): the bridge from the MLLM's stacked hidden states to FLUX's conditioning.
#pragma once
#include "core/dtype.h"

#include <map>
#include <memory>
#include <string>

namespace x2i::alignnet {

struct Training;  // train/alignnet.h

struct Model {
  std::string variant;     // "conv" (Qwen/MiniCPM/InternVL-4B), "scale" (InternVL-1B), "mean"
  int64_t layers = 0;      // C, the stacked hidden states (0: any, for "mean")
  double eps = 1e-6;
  at::Tensor convW, convB; // [1, C, k, k], [1]
  at::Tensor scale;        // cha_scale [1, C, 1, 1]
  at::Tensor lnW, lnB;     // LayerNorm(H)
  at::Tensor proj0, proj2; // Linear(H → Dseq), Linear(Dseq → Dseq), no bias
  at::Tensor fcW, fcB;     // Linear(Dseq → Dpooled)
  std::shared_ptr<Training> training;  // made by the first training call
};

// Takes the official names (module./state_dict. prefixes already stripped); shapes come from the weights.
std::shared_ptr<Model> load(std::map<std::string, at::Tensor> weights, double eps, const std::string& source);
// hiddenStates [B, C, S, H] → (encoderHiddenStates [B, S, Dseq], pooledProjections [B, Dpooled])
std::pair<at::Tensor, at::Tensor> forward(const Model& m, const at::Tensor& hiddenStates);
std::map<std::string, at::Tensor> weights(const Model& m);
// The parameters by their official names (pointers into the model, so that updates land in place).
std::vector<std::pair<std::string, at::Tensor*>> parameters(Model& m);


}  // namespace x2i::alignnet
