#include "models/lora.h"
#include "models/fp8.h"

#include <ATen/CPUGeneratorImpl.h>
#ifdef X2I_CUDA_KERNELS
#include "kernels/kernels.h"
#endif
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

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

// x [.., in] → y [.., out], composed from LibTorch ops (the path for autograd, trainable adapters and CPUs). With
// active adapters, their low-rank terms are computed first, on top of the bias (u = x·downᵀ, then b + k·u·upᵀ: two
// GEMMs of rank width), and the frozen GEMM accumulates into that (addmm with β = 1: the sum is read in the big
// GEMM's epilogue, not in a pass of its own).
at::Tensor composed(const Linear& l, const at::Tensor& x) {
  bool active = false;
  for (const auto& slot : l.lora) active = active || slot.adapter->scale != slot.adapter->fusedScale;
  if (!active) return l.w8.defined() ? fp8::linear(l, x) : at::linear(x, l.w, l.b);
  const int64_t out = l.outFeatures();
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  // FP8 layers: the quantized GEMM with its bias first, the low-rank terms accumulated onto it
  at::Tensor acc = l.w8.defined() ? fp8::linear(l, x2) : at::Tensor();  // [M, out]
  for (const auto& slot : l.lora) {
    const double k = slot.adapter->scale - slot.adapter->fusedScale;
    if (k == 0) continue;
    auto [down, up] = slot.down.defined() && !slot.adapter->trainable ? std::make_pair(slot.down, slot.up)
                                                                       : lowRank(slot, out, x.scalar_type());
    const at::Tensor u = at::mm(x2, down.t());  // [M, Σr]
    if (acc.defined()) acc = at::addmm(acc, u, up.t(), 1, k);
    else if (l.b.defined()) acc = at::addmm(l.b, u, up.t(), 1, k);
    else acc = at::mm(u, up.t()) * k;
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return (l.w8.defined() ? acc : at::addmm(acc, x2, l.w.t())).view(shape);
}

namespace {

// The active adapters (scale ≠ fused scale), when the stacked path serves them all: CUDA kernels built, the
// stack intact, frozen adapters only, nothing that autograd must see. Empty otherwise.
std::vector<const LoraSlot*> stackedSlots(const Linear& l, const at::Tensor& x) {
  std::vector<const LoraSlot*> active;
#ifdef X2I_CUDA_KERNELS
  if (!l.stack.defined() || !x.is_cuda() || x.scalar_type() == at::kDouble || x.scalar_type() != l.w.scalar_type() ||
      l.w.data_ptr() != l.stack.data_ptr() || x.device() != l.stack.device() || std::getenv("X2I_NO_KERNELS"))
    return {};
  if (l.b.defined() && l.b.data_ptr() != l.stackBias.data_ptr()) return {};
  if (at::GradMode::is_enabled() && (x.requires_grad() || l.w.requires_grad() || (l.b.defined() && l.b.requires_grad())))
    return {};
  for (const auto& s : l.lora) {
    if (s.adapter->scale == s.adapter->fusedScale) continue;
    if (s.adapter->trainable || !s.down.defined() || s.down.data_ptr() == nullptr) return {};
    active.push_back(&s);
  }
#endif
  return active;
}

#ifdef X2I_CUDA_KERNELS
// the tanh GELU by the row kernel, forward and backward (its input a column range of the layer's output)
struct GeluTanhRows : torch::autograd::Function<GeluTanhRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    ctx->save_for_backward({x});
    return kernels::geluTanhRows(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    if (!g[0].defined()) return {at::Tensor()};
    return {kernels::geluTanhRowsBackward(g[0], ctx->get_saved_variables()[0])};
  }
};
#endif

// gelu(y, tanh) (into out where given): in the fast precision on CUDA the row kernel (kernels/gelu.cu), which keeps
// 16-byte accesses on a strided column range; else LibTorch
at::Tensor geluTanh(const at::Tensor& y, const at::Tensor& out, bool fast) {
#ifdef X2I_CUDA_KERNELS
  const bool outFits = !out.defined() || (kernels::geluTanhRowsTakes(out) && out.scalar_type() == y.scalar_type() &&
                                           out.sizes() == y.sizes());
  if (fast && outFits && kernels::geluTanhRowsTakes(y) && std::getenv("X2I_NO_KERNELS") == nullptr)
    return out.defined() ? kernels::geluTanhRows(y, out) : GeluTanhRows::apply(y);
#endif
  (void)fast;
  if (out.defined()) {
    at::Tensor o = out;
    return at::gelu_out(o, y, "tanh");
  }
  return at::gelu(y, "tanh");
}

at::Tensor epilogueComposite(const at::Tensor& y, const Epilogue& e, bool fast) {
  if (e.out.defined()) {  // written where the caller wants it (not for autograd)
    at::Tensor o = e.out;
    if (e.kind == Epilogue::GeluTanh) return geluTanh(y, o, fast);
    if (e.kind == Epilogue::Gated) return fast ? at::addcmul_out(o, e.res, e.gate, y) : o.copy_(e.res + e.gate * y);
    return o.copy_(y);
  }
  if (e.kind == Epilogue::GeluTanh) return geluTanh(y, {}, fast);
  if (e.kind == Epilogue::Gated) return fast ? at::addcmul(e.res, e.gate, y) : e.res + e.gate * y;
  return y;
}

// One GEMM over the stack gives [W x + b | u_1 | u_2 ...]; each column range then gets every active adapter's
// low-rank term and its epilogue in one pass per adapter (kernels::lowRankAdd).
std::vector<at::Tensor> stackedForward(const Linear& l, const at::Tensor& x, const std::vector<const LoraSlot*>& active,
                                       const std::vector<Epilogue>& ranges) {
  std::vector<at::Tensor> outs;
#ifdef X2I_CUDA_KERNELS
  const int64_t out = l.w.size(0);
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  const int64_t M = x2.size(0);
  const at::Tensor ya = at::addmm(l.stackBias, x2, l.stack.t());  // [M, out + Σr]
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  for (const auto& e : ranges) {
    const int64_t n = e.n < 0 ? out - e.from : e.n;
    at::Tensor o = e.out.defined() ? e.out.view({M, n}) : at::empty({M, n}, ya.options()), res, gate;
    if (e.kind == Epilogue::Gated) res = e.res.reshape({M, n}), gate = e.gate.reshape({-1, n});
    for (size_t i = 0; i < active.size(); ++i) {
      const LoraSlot& s = *active[i];
      const bool last = i + 1 == active.size();
      const bool tiled = s.mask.defined() && e.from % 64 == 0;
      const auto kind = !last ? kernels::LowRankEpilogue::None
                        : e.kind == Epilogue::GeluTanh ? kernels::LowRankEpilogue::GeluTanh
                        : e.kind == Epilogue::Gated    ? kernels::LowRankEpilogue::Gated
                                                       : kernels::LowRankEpilogue::None;
      kernels::lowRankAdd(i == 0 ? ya.narrow(1, e.from, n) : o, ya.narrow(1, s.column, s.down.size(0)),
                          s.up.narrow(0, e.from, n), tiled ? s.mask : at::Tensor(), tiled ? e.from / 64 : 0,
                          s.adapter->scale - s.adapter->fusedScale, kind, res, gate,
                          gate.defined() ? M / gate.size(0) : 1, o);
    }
    shape.back() = n;
    outs.push_back(e.out.defined() ? e.out : o.view(shape));
  }
#endif
  return outs;
}

}  // namespace

at::Tensor Linear::operator()(const at::Tensor& x) const {
  auto active = stackedSlots(*this, x);
  return active.empty() ? composed(*this, x) : stackedForward(*this, x, active, {Epilogue{}})[0];
}

std::vector<at::Tensor> Linear::operator()(const at::Tensor& x, const std::vector<Epilogue>& ranges, bool fast) const {
  auto active = stackedSlots(*this, x);
  bool kernelEpilogues = fast;  // the reference precision rounds the layer's output before its epilogue
  for (const auto& e : ranges)
    if (e.kind == Epilogue::Gated && at::GradMode::is_enabled() && (e.res.requires_grad() || e.gate.requires_grad()))
      kernelEpilogues = false;
  if (!active.empty() && kernelEpilogues) return stackedForward(*this, x, active, ranges);
  const at::Tensor y = (*this)(x);
  // ranges that tile the output in order: y itself for one, else one split, whose backward concatenates the ranges'
  // gradients (narrowed views would each zero-fill y's shape, and autograd would sum them). The split's outputs are
  // views of one op: none of their consumers may change them in place under autograd.
  std::vector<int64_t> sizes;
  int64_t end = 0;
  for (const auto& e : ranges) {
    if (e.from != end) break;
    sizes.push_back(e.n < 0 ? y.size(-1) - e.from : e.n);
    end += sizes.back();
  }
  const bool tiles = sizes.size() == ranges.size() && end == y.size(-1);
  const auto parts = !tiles ? std::vector<at::Tensor>{} : ranges.size() == 1 ? std::vector<at::Tensor>{y} : at::split_with_sizes(y, sizes, -1);
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto& e = ranges[i];
    outs.push_back(epilogueComposite(tiles ? parts[i] : y.narrow(-1, e.from, e.n < 0 ? y.size(-1) - e.from : e.n), e, fast));
  }
  return outs;
}

}  // namespace flux

namespace lora {
namespace {


// k · ΔW of one adapter's parts at one layer, added to W in float32.
void merge(flux::Linear& l, const flux::LoraSlot& slot, double k) {
  if (l.w8.defined())
    fail("ERR_NOT_SUPPORTED", "fuseLora: this transformer's block weights are FP8 (quantize: 'fp8'); adapters run "
                              "unfused on them");
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

}  // namespace

at::Tensor chunkMask(const at::Tensor& up) {
  const int64_t out = up.size(0), R = up.size(1);
  if (R > 512) return {};
  const at::Tensor nz = up.ne(0).to(at::kCPU).contiguous();
  const bool* p = nz.data_ptr<bool>();
  std::vector<uint32_t> bits(size_t((out + 63) / 64), 0u);
  for (int64_t j = 0; j < out; ++j)
    for (int64_t r = 0; r < R; ++r)
      if (p[j * R + r]) bits[size_t(j / 64)] |= 1u << (r / 16);
  at::Tensor m = at::empty({int64_t(bits.size())}, at::kInt);
  std::memcpy(m.data_ptr<int>(), bits.data(), bits.size() * sizeof(uint32_t));
  return m.to(up.device());
}

namespace {

// W, then every frozen adapter's down-projection, in one storage (flux::Linear::stack): w, b and the slots' downs
// become views of it, so fusing (which writes w in place) and the plain GEMM over w see the same weights. Without
// frozen adapters the layer gets compact weights of its own again.
void restack(flux::Linear& l) {
  if (l.w8.defined()) return;  // FP8 layers: the low-rank terms are composed on top of the FP8 GEMM
  c10::NoGradGuard noGrad;
  const int64_t out = l.w.size(0);
  std::vector<at::Tensor> rows{l.w};
  for (auto& s : l.lora)
    if (!s.adapter->trainable) rows.push_back(s.down);
  if (rows.size() == 1) {
    if (l.stack.defined()) {
      l.w = l.w.clone();
      if (l.b.defined()) l.b = l.b.clone();
      l.stack = l.stackBias = at::Tensor();
    }
    return;
  }
  at::Tensor stack = at::cat(rows, 0), bias = at::zeros({stack.size(0)}, stack.options());
  if (l.b.defined()) bias.narrow(0, 0, out).copy_(l.b);
  int64_t column = out;
  for (auto& s : l.lora) {
    if (s.adapter->trainable) continue;
    const int64_t r = s.down.size(0);
    s.down = stack.narrow(0, column, r);
    s.column = column;
    if (!s.mask.defined()) s.mask = chunkMask(s.up);
    column += r;
  }
  l.w = stack.narrow(0, 0, out);
  if (l.b.defined()) l.b = bias.narrow(0, 0, out);
  l.stack = stack, l.stackBias = bias;
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
  ++m.weightsVersion;  // first: a failure part way has moved storage too
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
    const int64_t out = l.outFeatures(), in = l.inFeatures();
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
      std::tie(slot.down, slot.up) = flux::lowRank(slot, l->outFeatures(), m.dtype());
    l->lora.push_back(std::move(slot));
    if (!trainable) restack(*l);
  }
  m.adapters[name] = adapter;
}

void remove(flux::Model& m, const std::string& name) {
  if (!name.empty() && !m.adapters.count(name))
    fail("ERR_INVALID_ARG", "unloadLora: no adapter '" + name + "' (loaded: " + names(m) + ")");
  ++m.weightsVersion;
  std::vector<std::string> gone;
  for (auto& [k, a] : m.adapters)
    if (name.empty() || k == name) gone.push_back(k);
  for (auto& k : gone) {
    auto a = m.adapters.at(k);
    if (a->fusedScale != 0) mergeAdapter(m, a.get(), -a->fusedScale);
    for (auto& [n, l] : linears(m)) {
      const size_t before = l->lora.size();
      l->lora.erase(std::remove_if(l->lora.begin(), l->lora.end(), [&](auto& s) { return s.adapter == a; }), l->lora.end());
      if (l->lora.size() != before && !a->trainable) restack(*l);
    }
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
  // all refusals before anything merges: an adapter half merged would count twice
  const auto all = linears(m);
  for (auto& [k, a] : m.adapters) {
    if (a->trainable) fail("ERR_NOT_SUPPORTED", "fuseLora: adapter '" + k + "' is being trained (save it and load it to fuse)");
    if (a->scale != a->fusedScale)
      for (auto& [n, l] : all)
        for (auto& slot : l->lora)
          if (slot.adapter == a && l->w8.defined())
            fail("ERR_NOT_SUPPORTED", "fuseLora: adapter '" + k + "' has parts on '" + n + "', whose weights are FP8 (quantize: "
                                      "'fp8'); adapters run unfused on FP8 layers");
  }
  ++m.weightsVersion;
  for (auto& [k, a] : m.adapters) {
    if (a->scale != a->fusedScale) mergeAdapter(m, a.get(), a->scale - a->fusedScale);
    a->fusedScale = a->scale;
  }
}

void unfuse(flux::Model& m) {
  ++m.weightsVersion;
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

at::Tensor lowRankComposite(const at::Tensor& y, const at::Tensor& u, const at::Tensor& up, double k,
                            const flux::Epilogue& e, int64_t rowsPerGate) {
  const auto f = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor v = y.to(f) + k * at::mm(u.to(f), up.to(f).t());
  if (e.kind == flux::Epilogue::GeluTanh) v = at::gelu(v, "tanh");
  if (e.kind == flux::Epilogue::Gated)
    v = e.res.to(f) + e.gate.to(f).repeat_interleave(rowsPerGate, 0) * v;
  return v.to(y.scalar_type());
}

}  // namespace lora
}  // namespace x2i
