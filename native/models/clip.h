// CLIP text encoder (see clip.cc).
#pragma once
#include "core/weights.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace x2i::clip {

struct Config {
  int64_t vocab, hidden, intermediate, heads, layers, maxPositions, eosTokenId;
  double eps;
  std::string act;
};
struct Layer {
  at::Tensor ln1w, ln1b, qw, qb, kw, kb, vw, vb, ow, ob, ln2w, ln2b, fc1w, fc1b, fc2w, fc2b;
};
struct Inputs {
  at::Tensor ids;
};
struct Outputs {
  at::Tensor last, pooled, hidden;  // [B, S, H], [B, H], [B, L+1, S, H]
};

struct Model {
  Config cfg;
  at::Tensor tokenEmbed, posEmbed, finalW, finalB;
  std::vector<Layer> layers;
};

// Builds the model from named tensors (or, under a RandomInit, random ones); every tensor is name- and shape-checked.
std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> w, const std::string& source);
Outputs forward(const Model& m, const Inputs& in);

}  // namespace x2i::clip
