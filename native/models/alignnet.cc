// X2I's AlignNet: a layer mixer over the MLLM's stacked hidden states [B, C, S, H]
// (Conv2d C→1 5×5, or a learned per-layer scale, or a plain mean), then LayerNorm + a two-layer
// MLP to the T5-replacement sequence, and GELU + Linear + mean over tokens to the CLIP-replacement vector.
#include "models/alignnet.h"

namespace x2i::alignnet {

std::shared_ptr<Model> load(std::map<std::string, at::Tensor> w, double eps, const std::string& source) {
  auto m = std::make_shared<Model>();
  m->eps = eps;
  auto take = [&](const std::string& k, bool required = true) {
    auto it = w.find(k);
    if (it == w.end()) {
      if (required) fail("ERR_CHECKPOINT_KEY", "AlignNet (" + source + "): missing tensor '" + k + "'");
      return at::Tensor();
    }
    at::Tensor t = it->second;
    w.erase(it);
    return t;
  };
  auto expect = [&](const char* k, const at::Tensor& t, std::vector<int64_t> shape) {
    if (t.sizes() != at::IntArrayRef(shape))
      fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): tensor '" + k + "' has shape " + shapeString(t.sizes()) +
                                       ", expected " + shapeString(shape));
  };
  m->convW = take("conv.weight", false);
  m->convB = take("conv.bias", false);
  m->scale = take("cha_scale", false);
  m->lnW = take("mlp.layernorm.weight");
  m->lnB = take("mlp.layernorm.bias");
  m->proj0 = take("mlp.projector.0.weight");
  m->proj2 = take("mlp.projector.2.weight");
  m->fcW = take("mlp.fc.1.weight");
  m->fcB = take("mlp.fc.1.bias");
  const int64_t H = m->lnW.size(0);
  if (m->lnW.dim() != 1) fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): mlp.layernorm.weight must be 1-D");
  expect("mlp.layernorm.bias", m->lnB, {H});
  if (m->proj0.dim() != 2 || m->proj0.size(1) != H)
    fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): mlp.projector.0.weight has shape " + shapeString(m->proj0.sizes()) +
                                     ", expected [*, " + std::to_string(H) + "]");
  const int64_t Dseq = m->proj0.size(0);
  expect("mlp.projector.2.weight", m->proj2, {Dseq, Dseq});
  if (m->fcW.dim() != 2 || m->fcW.size(1) != Dseq)
    fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): mlp.fc.1.weight has shape " + shapeString(m->fcW.sizes()) +
                                     ", expected [*, " + std::to_string(Dseq) + "]");
  expect("mlp.fc.1.bias", m->fcB, {m->fcW.size(0)});
  if (m->convW.defined()) {
    if (m->convW.dim() != 4 || m->convW.size(0) != 1 || m->convW.size(2) != m->convW.size(3) || m->convW.size(2) % 2 == 0)
      fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): conv.weight has shape " + shapeString(m->convW.sizes()) +
                                       ", expected [1, layers, k, k] with an odd k");
    m->layers = m->convW.size(1);
    if (!m->convB.defined()) fail("ERR_CHECKPOINT_KEY", "AlignNet (" + source + "): missing tensor 'conv.bias'");
    expect("conv.bias", m->convB, {1});
    m->variant = "conv";
  } else if (m->scale.defined()) {
    if (m->scale.dim() != 4 || m->scale.size(0) != 1 || m->scale.size(2) != 1 || m->scale.size(3) != 1)
      fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): cha_scale has shape " + shapeString(m->scale.sizes()) +
                                       ", expected [1, layers, 1, 1]");
    m->layers = m->scale.size(1);
    m->variant = "scale";
  } else {
    m->variant = "mean";
  }
  if (!w.empty()) {
    std::string extra;
    int n = 0;
    for (auto& [k, v] : w)
      if (n++ < 5) extra += (extra.empty() ? "'" : ", '") + k + "'";
    fail("ERR_CHECKPOINT_KEY", "AlignNet (" + source + "): " + std::to_string(w.size()) + " unexpected tensor(s): " + extra);
  }
  return m;
}

std::pair<at::Tensor, at::Tensor> forward(const Model& m, const at::Tensor& hiddenStates) {
  const int64_t H = m.lnW.size(0);
  if (hiddenStates.dim() != 4 || hiddenStates.size(3) != H || (m.layers > 0 && hiddenStates.size(1) != m.layers))
    fail("ERR_SHAPE_MISMATCH", "AlignNet.forward: hiddenStates has shape " + shapeString(hiddenStates.sizes()) +
                                   ", expected [B, " + (m.layers > 0 ? std::to_string(m.layers) : std::string("layers")) +
                                   ", tokens, " + std::to_string(H) + "]");
  const at::Tensor x = hiddenStates.to(m.lnW.device(), m.lnW.scalar_type());
  at::Tensor mixed;  // [B, S, H]
  if (m.variant == "conv") {
    const int64_t pad = m.convW.size(2) / 2;
    mixed = at::conv2d(x, m.convW, m.convB, {1, 1}, {pad, pad}).squeeze(1);
  } else if (m.variant == "scale") {
    mixed = (x * m.scale).mean(1);
  } else {
    mixed = x.mean(1);
  }
  at::Tensor h = at::layer_norm(mixed, {H}, m.lnW, m.lnB, m.eps);
  at::Tensor seq = at::linear(at::gelu(at::linear(h, m.proj0)), m.proj2);  // exact (erf) GELU
  at::Tensor pooled = at::linear(at::gelu(seq), m.fcW, m.fcB).mean(1);
  return {seq, pooled};
}

std::map<std::string, at::Tensor> weights(const Model& m) {
  std::map<std::string, at::Tensor> w{{"mlp.layernorm.weight", m.lnW}, {"mlp.layernorm.bias", m.lnB},
                                      {"mlp.projector.0.weight", m.proj0}, {"mlp.projector.2.weight", m.proj2},
                                      {"mlp.fc.1.weight", m.fcW}, {"mlp.fc.1.bias", m.fcB}};
  if (m.convW.defined()) w["conv.weight"] = m.convW, w["conv.bias"] = m.convB;
  if (m.scale.defined()) w["cha_scale"] = m.scale;
  return w;
}

std::vector<std::pair<std::string, at::Tensor*>> parameters(Model& m) {
  std::vector<std::pair<std::string, at::Tensor*>> p{{"mlp.layernorm.weight", &m.lnW}, {"mlp.layernorm.bias", &m.lnB},
    {"mlp.projector.0.weight", &m.proj0}, {"mlp.projector.2.weight", &m.proj2}, {"mlp.fc.1.weight", &m.fcW}, {"mlp.fc.1.bias", &m.fcB}};
  if (m.convW.defined()) p.push_back({"conv.weight", &m.convW}), p.push_back({"conv.bias", &m.convB});
  if (m.scale.defined()) p.push_back({"cha_scale", &m.scale});
  return p;
}

}  // namespace x2i::alignnet
