// CLIP text encoder (see clip.cc).
#pragma once
#include "text_model.h"

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
  static constexpr const char* jsName = "NativeClipTextEncoder";
  using Outputs = clip::Outputs;
  Config cfg;
  at::Tensor tokenEmbed, posEmbed, finalW, finalB;
  std::vector<Layer> layers;

  static Config parseConfig(const Napi::Object& o);
  static std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> w, const std::string& source);
  static Inputs parseInputs(const Napi::CallbackInfo& info);
  static Outputs run(const Model& m, const Inputs& in);
  static Napi::Value toJs(Napi::Env env, Outputs& o);
};

}  // namespace x2i::clip
