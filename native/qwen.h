// Qwen2.5-VL language model as X2I's multimodal encoder (see qwen.cc).
#pragma once
#include "text_model.h"

#include <array>

namespace x2i::qwen {

struct Config {
  int64_t vocab, hidden, intermediate, layers, heads, kvHeads;
  double eps, theta;
  std::array<int64_t, 3> mropeSection;
};
struct Layer {
  at::Tensor inLn, qw, qb, kw, kb, vw, vb, ow, postLn, gate, up, down;
};
struct Inputs {
  at::Tensor ids, mask;
  std::string padRule;  // "x2i" (default) or "mask"
};
struct Outputs {
  at::Tensor hidden;  // [B, L+1, S, H]
};

struct Model {
  static constexpr const char* jsName = "NativeQwenVLEncoder";
  using Outputs = qwen::Outputs;
  Config cfg;
  at::Tensor embed, norm;
  std::vector<Layer> layers;

  static Config parseConfig(const Napi::Object& o);
  static std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> w, const std::string& source);
  static Inputs parseInputs(const Napi::CallbackInfo& info);
  static Outputs run(const Model& m, const Inputs& in);
  static Napi::Value toJs(Napi::Env env, Outputs& o);
};

}  // namespace x2i::qwen
