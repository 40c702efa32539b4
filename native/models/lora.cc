#include "models/lora.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>

namespace x2i {
namespace flux {

// A slot's parts as [Σr, in] down and [out, Σr] up (block-diagonal over the parts' rows, zeros elsewhere), scales in.
std::pair<at::Tensor, at::Tensor> lowRank(const LoraSlot& slot, int64_t out, at::ScalarType dt) {
  std::vector<at::Tensor> downs, ups;
  int64_t row = 0;
  for (auto& p : slot.parts) {  // parts sorted by row; rows no part covers are blocks of zero width
    if (p.row > row) ups.push_back(at::zeros({p.row - row, 0}, p.B.options().dtype(dt)));
    downs.push_back(p.A.to(dt));
    ups.push_back(p.B.to(dt) * p.scale);
    row = p.row + p.B.size(0);
  }
  if (row < out) ups.push_back(at::zeros({out - row, 0}, ups[0].options()));
  return {downs.size() == 1 ? downs[0] : at::cat(downs, 0), ups.size() == 1 ? ups[0] : at::block_diag(ups)};
}

// x [.., in] → y [.., out]. With active adapters, their low-rank terms are computed first, on top of the bias
// (u = x·downᵀ, then b + k·u·upᵀ: two GEMMs of rank width), and the frozen GEMM accumulates into that (addmm with
// β = 1: the sum is read in the big GEMM's epilogue, not in a pass of its own).
at::Tensor Linear::operator()(const at::Tensor& x) const {
  bool active = false;
  for (const auto& slot : lora) active = active || slot.adapter->scale != slot.adapter->fusedScale;
  if (!active) return at::linear(x, w, b);
  const int64_t out = w.size(0);
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  at::Tensor acc;  // [M, out]
  for (const auto& slot : lora) {
    const double k = slot.adapter->scale - slot.adapter->fusedScale;
    if (k == 0) continue;
    auto [down, up] = slot.down.defined() && !slot.adapter->trainable ? std::make_pair(slot.down, slot.up)
                                                                       : lowRank(slot, out, x.scalar_type());
    const at::Tensor u = at::mm(x2, down.t());  // [M, Σr]
    if (acc.defined()) acc = at::addmm(acc, u, up.t(), 1, k);
    else if (b.defined()) acc = at::addmm(b, u, up.t(), 1, k);
    else acc = at::mm(u, up.t()) * k;
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return at::addmm(acc, x2, w.t()).view(shape);
}

}  // namespace flux

namespace lora {
namespace {


// k · ΔW of one adapter's parts at one layer, added to W in float32.
void merge(flux::Linear& l, const flux::LoraSlot& slot, double k) {
  c10::NoGradGuard noGrad;
  at::Tensor w = l.w.to(at::kFloat);
  if (w.data_ptr() == l.w.data_ptr()) w = w.clone();
  for (auto& p : slot.parts)
    w.narrow(0, p.row, p.B.size(0)).add_(at::mm(p.B.to(at::kFloat), p.A.to(at::kFloat)), k * p.scale);
  l.w.copy_(w);
}

void mergeAdapter(flux::Model& m, const flux::LoraAdapter* a, double k) {
  for (auto& [name, l] : linears(m))
    for (auto& slot : l->lora)
      if (slot.adapter.get() == a) merge(*l, slot, k);
}

std::string names(const flux::Model& m) {
  std::string s;
  for (auto& [k, v] : m.adapters) s += (s.empty() ? "'" : ", '") + k + "'";
  return s.empty() ? "none" : s;
}

}  // namespace

std::map<std::string, flux::Linear*> linears(flux::Model& m) {
  std::map<std::string, flux::Linear*> out{
      {"img_in", &m.imgIn}, {"txt_in", &m.txtIn}, {"time_in.in_layer", &m.timeIn1}, {"time_in.out_layer", &m.timeIn2},
      {"vector_in.in_layer", &m.vectorIn1}, {"vector_in.out_layer", &m.vectorIn2},
      {"final_layer.linear", &m.finalLinear}, {"final_layer.adaLN_modulation.1", &m.finalMod}};
  if (m.cfg.guidance) out["guidance_in.in_layer"] = &m.guidanceIn1, out["guidance_in.out_layer"] = &m.guidanceIn2;
  for (size_t i = 0; i < m.doubles.size(); ++i) {
    const std::string p = "double_blocks." + std::to_string(i) + ".";
    for (auto [s, side] : {std::pair<flux::Stream*, std::string>{&m.doubles[i].img, "img"}, {&m.doubles[i].txt, "txt"}}) {
      out[p + side + "_mod.lin"] = &s->mod;
      out[p + side + "_attn.qkv"] = &s->qkv;
      out[p + side + "_attn.proj"] = &s->proj;
      out[p + side + "_mlp.0"] = &s->mlp0;
      out[p + side + "_mlp.2"] = &s->mlp2;
    }
  }
  for (size_t i = 0; i < m.singles.size(); ++i) {
    const std::string p = "single_blocks." + std::to_string(i) + ".";
    out[p + "linear1"] = &m.singles[i].linear1;
    out[p + "linear2"] = &m.singles[i].linear2;
    out[p + "modulation.lin"] = &m.singles[i].mod;
  }
  return out;
}

void add(flux::Model& m, const std::string& name, const std::vector<PartSpec>& specs, double scale, bool trainable,
         uint64_t seed) {
  if (name.empty()) fail("ERR_INVALID_ARG", "loadLora: the adapter needs a name");
  if (m.adapters.count(name)) fail("ERR_INVALID_ARG", "loadLora: an adapter named '" + name + "' is already loaded (unloadLora it first)");
  if (specs.empty()) fail("ERR_INVALID_ARG", "loadLora: adapter '" + name + "' has no parts");
  if (!std::isfinite(scale)) fail("ERR_INVALID_ARG", "loadLora: the scale must be finite");
  auto all = linears(m);
  auto adapter = std::make_shared<flux::LoraAdapter>();
  adapter->name = name, adapter->scale = scale, adapter->trainable = trainable;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::map<flux::Linear*, flux::LoraSlot> slots;
  c10::NoGradGuard noGrad;
  for (auto& s : specs) {
    auto it = all.find(s.target);
    if (it == all.end()) fail("ERR_CHECKPOINT_KEY", "LoRA '" + name + "': no layer '" + s.target + "' in this transformer");
    flux::Linear& l = *it->second;
    const int64_t out = l.w.size(0), in = l.w.size(1);
    flux::LoraPart p;
    p.row = s.row, p.scale = s.scale;
    if (!std::isfinite(s.scale)) fail("ERR_INVALID_ARG", "LoRA '" + name + "' at '" + s.target + "': alpha / rank is not finite");
    if (s.A.defined() != s.B.defined()) fail("ERR_INVALID_ARG", "LoRA '" + name + "' at '" + s.target + "': A and B come together");
    const int64_t rowsLeft = out - s.row;  // rows <= 0: from `row` to the layer's last row
    if (s.A.defined()) {
      const int64_t r = s.A.dim() == 2 ? s.A.size(0) : -1;
      if (s.A.dim() != 2 || s.A.size(1) != in || r <= 0)
        fail("ERR_CHECKPOINT_SHAPE", "LoRA '" + name + "' at '" + s.target + "': A (down) has shape " + shapeString(s.A.sizes()) +
                                         ", expected [rank, " + std::to_string(in) + "]");
      if (s.B.dim() != 2 || s.B.size(1) != r || s.B.size(0) <= 0)
        fail("ERR_CHECKPOINT_SHAPE", "LoRA '" + name + "' at '" + s.target + "': B (up) has shape " + shapeString(s.B.sizes()) +
                                         ", expected [rows, " + std::to_string(r) + "]");
      if (!at::isFloatingType(s.A.scalar_type()) || !at::isFloatingType(s.B.scalar_type()))
        fail("ERR_CHECKPOINT_DTYPE", "LoRA '" + name + "' at '" + s.target + "': weights must be floating point");
      const auto dt = trainable ? at::kFloat : m.dtype();
      p.A = s.A.to(m.device(), dt).contiguous(), p.B = s.B.to(m.device(), dt).contiguous();
      if (p.A.data_ptr() == s.A.data_ptr()) p.A = p.A.clone();  // own copies: fusing or training never writes the caller's
      if (p.B.data_ptr() == s.B.data_ptr()) p.B = p.B.clone();
    } else {
      const int64_t rows = s.rows > 0 ? s.rows : rowsLeft;
      if (s.rank <= 0 || rows <= 0) fail("ERR_INVALID_ARG", "LoRA '" + name + "' at '" + s.target + "': rank and rows must be positive");
      const double bound = 1.0 / std::sqrt(double(in));
      p.A = at::empty({s.rank, in}, at::kFloat).uniform_(-bound, bound, gen).to(m.device());
      p.B = at::zeros({rows, s.rank}, at::TensorOptions().dtype(at::kFloat).device(m.device()));
    }
    if (p.row < 0 || p.row + p.B.size(0) > out)
      fail("ERR_CHECKPOINT_SHAPE", "LoRA '" + name + "' at '" + s.target + "': rows [" + std::to_string(p.row) + ", " +
                                       std::to_string(p.row + p.B.size(0)) + ") outside the layer's " + std::to_string(out) + " rows");
    auto& slot = slots[&l];
    slot.adapter = adapter;
    slot.parts.push_back(std::move(p));
  }
  for (auto& [l, slot] : slots) {
    std::sort(slot.parts.begin(), slot.parts.end(), [](auto& a, auto& b) { return a.row < b.row; });
    for (size_t j = 1; j < slot.parts.size(); ++j)
      if (slot.parts[j].row < slot.parts[j - 1].row + slot.parts[j - 1].B.size(0)) {
        std::string target;
        for (auto& [k, v] : all) if (v == l) target = k;
        fail("ERR_INVALID_ARG", "LoRA '" + name + "' at '" + target + "': two parts cover the same rows (from row " +
                                    std::to_string(slot.parts[j].row) + ")");
      }
  }
  for (auto& [l, slot] : slots) {
    if (trainable)
      for (auto& p : slot.parts) p.A.requires_grad_(true), p.B.requires_grad_(true);
    else
      std::tie(slot.down, slot.up) = flux::lowRank(slot, l->w.size(0), m.dtype());
    l->lora.push_back(std::move(slot));
  }
  m.adapters[name] = adapter;
}

void remove(flux::Model& m, const std::string& name) {
  if (!name.empty() && !m.adapters.count(name))
    fail("ERR_INVALID_ARG", "unloadLora: no adapter '" + name + "' (loaded: " + names(m) + ")");
  std::vector<std::string> gone;
  for (auto& [k, a] : m.adapters)
    if (name.empty() || k == name) gone.push_back(k);
  for (auto& k : gone) {
    auto a = m.adapters.at(k);
    if (a->fusedScale != 0) mergeAdapter(m, a.get(), -a->fusedScale);
    for (auto& [n, l] : linears(m))
      l->lora.erase(std::remove_if(l->lora.begin(), l->lora.end(), [&](auto& s) { return s.adapter == a; }), l->lora.end());
    m.adapters.erase(k);
  }
}

void applyScales(const flux::Model& m, const std::map<std::string, double>& scales) {
  for (auto& [k, v] : scales) {
    auto it = m.adapters.find(k);
    if (it == m.adapters.end()) fail("ERR_INVALID_ARG", "LoRA scale for '" + k + "': no such adapter (loaded: " + names(m) + ")");
    if (!std::isfinite(v)) fail("ERR_INVALID_ARG", "LoRA scale for '" + k + "' must be finite");
    it->second->scale = v;
  }
}

void fuse(flux::Model& m) {
  for (auto& [k, a] : m.adapters) {
    if (a->trainable) fail("ERR_NOT_SUPPORTED", "fuseLora: adapter '" + k + "' is being trained (save it and load it to fuse)");
    if (a->scale != a->fusedScale) mergeAdapter(m, a.get(), a->scale - a->fusedScale);
    a->fusedScale = a->scale;
  }
}

void unfuse(flux::Model& m) {
  for (auto& [k, a] : m.adapters)
    if (a->fusedScale != 0) mergeAdapter(m, a.get(), -a->fusedScale), a->fusedScale = 0;
}

std::vector<NamedPart> parts(flux::Model& m, const std::string& name) {
  auto it = m.adapters.find(name);
  if (it == m.adapters.end()) fail("ERR_INVALID_ARG", "no LoRA adapter '" + name + "' (loaded: " + names(m) + ")");
  std::vector<NamedPart> out;
  for (auto& [target, l] : linears(m))
    for (auto& slot : l->lora)
      if (slot.adapter == it->second)
        for (auto& p : slot.parts) out.push_back({target, &p});
  return out;
}

}  // namespace lora
}  // namespace x2i
