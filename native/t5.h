// T5 v1.1 encoder (see t5.cc).
#pragma once
#include "text_model.h"

namespace x2i::t5 {

struct Config {
  int64_t vocab, dModel, dKv, dFf, layers, heads, buckets, maxDistance;
  double eps;
  bool gated;
  std::string act;
};
struct Layer {
  at::Tensor ln0, q, k, v, o, ln1, wi0, wi1, wo;
};
struct Inputs {
  at::Tensor ids, mask;
};
struct Outputs {
  at::Tensor last, hidden;  // [B, S, d], [B, L+1, S, d]
};

struct Model {
  static constexpr const char* jsName = "NativeT5Encoder";
  using Outputs = t5::Outputs;
  Config cfg;
  at::Tensor embed, relBias, finalLn;
  std::vector<Layer> layers;

  static Config parseConfig(const Napi::Object& o);
  static std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> w, const std::string& source);
  static Inputs parseInputs(const Napi::CallbackInfo& info);
  static Outputs run(const Model& m, const Inputs& in);
  static Napi::Value toJs(Napi::Env env, Outputs& o);
};

}  // namespace x2i::t5
