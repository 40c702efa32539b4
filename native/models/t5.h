// T5 v1.1 encoder (see t5.cc).
#pragma once
#include "core/weights.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace x2i::t5 {

struct Config {
  int64_t vocab, dModel, dKv, dFf, layers, heads, buckets, maxDistance;
  double eps;
  bool gated;
  std::string act;
};
struct Layer {
  at::Tensor ln0, qkv, o, ln1, wi, wo;  // qkv: q, k, v stacked [3·inner, d]; wi: wi_0 over wi_1 [2·dFf, d] (gated) or wi
};
struct Inputs {
  at::Tensor ids, mask;
};
struct Outputs {
  at::Tensor last, hidden;  // [B, S, d], [B, L+1, S, d]
};

struct Model {
  Config cfg;
  at::Tensor embed, relBias, finalLn;
  std::vector<Layer> layers;
};

// Builds the model from named tensors (or, under a RandomInit, random ones); every tensor is name- and shape-checked.
std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> w, const std::string& source);
Outputs forward(const Model& m, const Inputs& in);

}  // namespace x2i::t5
