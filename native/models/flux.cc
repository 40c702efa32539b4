// FLUX.1 MM-DiT: embedders, 3-axis RoPE, double-stream and single-stream blocks, AdaLN modulation,
// final layer. Op order and precision follow the BFL reference (black-forest-labs/flux): every
// elementwise step is its own op in the model dtype; RoPE angles in float64, rotations in float32;
// norm statistics in float32.
#include "models/flux.h"
#include "core/weights.h"
#include "models/fp8.h"
#include "models/lora.h"
#ifdef X2I_CUDA_KERNELS
#include "kernels/kernels.h"
#endif

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>

namespace x2i::flux {
namespace {

// float32 for half-precision models (the references' fp32 islands), the model's own type otherwise
at::ScalarType acc(at::ScalarType t) { return at::promote_types(at::kFloat, t); }

// ---------------------------------------------------------------- loading
// the config the expected shapes come from, for loading errors
std::string describe(const Config& c) {
  std::ostringstream o;
  o << "for the config (hidden " << c.hidden << ", heads " << c.heads << ", in " << c.inChannels << ", out "
    << c.outChannels << ", joint " << c.jointDim << ", pooled " << c.pooledDim << ", " << c.depth << " double + "
    << c.depthSingle << " single blocks, guidance " << (c.guidance ? "yes" : "no") << ")";
  return o.str();
}

// Rows stacked from several tensors (diffusers' split q/k/v → BFL's fused qkv).
at::Tensor rows(WeightMap& w, const std::vector<std::string>& names, const std::vector<int64_t>& rowsEach, int64_t cols) {
  std::vector<at::Tensor> parts;
  for (size_t i = 0; i < names.size(); ++i)
    parts.push_back(cols < 0 ? w.take(names[i], {rowsEach[i]}) : w.take(names[i], {rowsEach[i], cols}));
  return at::cat(parts, 0);
}

Linear linear(WeightMap& w, const std::string& name, int64_t out, int64_t in) {
  auto [W, b] = w.linear(name, out, in);
  if (W.scalar_type() != at::kFloat8_e4m3fn) return {W, b};
  Linear l;  // quantized already (random init with fp8): its row scales beside it
  l.w8 = W, l.w8Scale = w.take(name + ".weight_scale", {out}), l.b = b;
  return l;
}

// rows [0, h) <-> [h, 2h): diffusers' norm_out is (scale, shift), BFL's final modulation (shift, scale)
at::Tensor swapHalves(const at::Tensor& t) {
  const int64_t h = t.size(0) / 2;
  return at::cat({t.narrow(0, h, h), t.narrow(0, 0, h)}, 0);
}

void loadBfl(Model& m, WeightMap& w) {
  const auto& c = m.cfg;
  const int64_t h = c.hidden, hd = c.headDim(), f = 4 * h;
  m.imgIn = linear(w, "img_in", h, c.inChannels);
  m.txtIn = linear(w, "txt_in", h, c.jointDim);
  m.timeIn1 = linear(w, "time_in.in_layer", h, 256);
  m.timeIn2 = linear(w, "time_in.out_layer", h, h);
  if (c.guidance) {
    m.guidanceIn1 = linear(w, "guidance_in.in_layer", h, 256);
    m.guidanceIn2 = linear(w, "guidance_in.out_layer", h, h);
  }
  m.vectorIn1 = linear(w, "vector_in.in_layer", h, c.pooledDim);
  m.vectorIn2 = linear(w, "vector_in.out_layer", h, h);
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string p = "double_blocks." + std::to_string(i) + ".";
    DoubleBlock b;
    for (auto [s, side] : {std::pair<Stream*, std::string>{&b.img, "img"}, {&b.txt, "txt"}}) {
      s->mod = linear(w, p + side + "_mod.lin", 6 * h, h);
      s->qkv = linear(w, p + side + "_attn.qkv", 3 * h, h);
      s->qNorm = w.take(p + side + "_attn.norm.query_norm.scale", {hd});
      s->kNorm = w.take(p + side + "_attn.norm.key_norm.scale", {hd});
      s->proj = linear(w, p + side + "_attn.proj", h, h);
      s->mlp0 = linear(w, p + side + "_mlp.0", f, h);
      s->mlp2 = linear(w, p + side + "_mlp.2", h, f);
    }
    m.doubles.push_back(std::move(b));
  }
  for (int64_t i = 0; i < c.depthSingle; ++i) {
    const std::string p = "single_blocks." + std::to_string(i) + ".";
    SingleBlock b;
    b.linear1 = linear(w, p + "linear1", 3 * h + f, h);
    b.linear2 = linear(w, p + "linear2", h, h + f);
    b.qNorm = w.take(p + "norm.query_norm.scale", {hd});
    b.kNorm = w.take(p + "norm.key_norm.scale", {hd});
    b.mod = linear(w, p + "modulation.lin", 3 * h, h);
    m.singles.push_back(std::move(b));
  }
  m.finalLinear = linear(w, "final_layer.linear", c.outChannels, h);
  m.finalMod = linear(w, "final_layer.adaLN_modulation.1", 2 * h, h);
}

void loadDiffusers(Model& m, WeightMap& w) {
  const auto& c = m.cfg;
  const int64_t h = c.hidden, hd = c.headDim(), f = 4 * h;
  m.imgIn = linear(w, "x_embedder", h, c.inChannels);
  m.txtIn = linear(w, "context_embedder", h, c.jointDim);
  m.timeIn1 = linear(w, "time_text_embed.timestep_embedder.linear_1", h, 256);
  m.timeIn2 = linear(w, "time_text_embed.timestep_embedder.linear_2", h, h);
  if (c.guidance) {
    m.guidanceIn1 = linear(w, "time_text_embed.guidance_embedder.linear_1", h, 256);
    m.guidanceIn2 = linear(w, "time_text_embed.guidance_embedder.linear_2", h, h);
  }
  m.vectorIn1 = linear(w, "time_text_embed.text_embedder.linear_1", h, c.pooledDim);
  m.vectorIn2 = linear(w, "time_text_embed.text_embedder.linear_2", h, h);
  auto fused = [&](const std::vector<std::string>& names, const std::vector<int64_t>& sizes) {
    std::vector<std::string> ws, bs;
    for (auto& n : names) ws.push_back(n + ".weight"), bs.push_back(n + ".bias");
    return Linear{rows(w, ws, sizes, h), rows(w, bs, sizes, -1)};
  };
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string p = "transformer_blocks." + std::to_string(i) + ".";
    DoubleBlock b;
    b.img.mod = linear(w, p + "norm1.linear", 6 * h, h);
    b.txt.mod = linear(w, p + "norm1_context.linear", 6 * h, h);
    b.img.qkv = fused({p + "attn.to_q", p + "attn.to_k", p + "attn.to_v"}, {h, h, h});
    b.txt.qkv = fused({p + "attn.add_q_proj", p + "attn.add_k_proj", p + "attn.add_v_proj"}, {h, h, h});
    b.img.qNorm = w.take(p + "attn.norm_q.weight", {hd});
    b.img.kNorm = w.take(p + "attn.norm_k.weight", {hd});
    b.txt.qNorm = w.take(p + "attn.norm_added_q.weight", {hd});
    b.txt.kNorm = w.take(p + "attn.norm_added_k.weight", {hd});
    b.img.proj = linear(w, p + "attn.to_out.0", h, h);
    b.txt.proj = linear(w, p + "attn.to_add_out", h, h);
    b.img.mlp0 = linear(w, p + "ff.net.0.proj", f, h);
    b.img.mlp2 = linear(w, p + "ff.net.2", h, f);
    b.txt.mlp0 = linear(w, p + "ff_context.net.0.proj", f, h);
    b.txt.mlp2 = linear(w, p + "ff_context.net.2", h, f);
    m.doubles.push_back(std::move(b));
  }
  for (int64_t i = 0; i < c.depthSingle; ++i) {
    const std::string p = "single_transformer_blocks." + std::to_string(i) + ".";
    SingleBlock b;
    b.mod = linear(w, p + "norm.linear", 3 * h, h);
    b.linear1 = fused({p + "attn.to_q", p + "attn.to_k", p + "attn.to_v", p + "proj_mlp"}, {h, h, h, f});
    b.qNorm = w.take(p + "attn.norm_q.weight", {hd});
    b.kNorm = w.take(p + "attn.norm_k.weight", {hd});
    b.linear2 = linear(w, p + "proj_out", h, h + f);
    m.singles.push_back(std::move(b));
  }
  Linear fm = linear(w, "norm_out.linear", 2 * h, h);
  m.finalMod = {swapHalves(fm.w), swapHalves(fm.b)};
  m.finalLinear = linear(w, "proj_out", c.outChannels, h);
}

void checkConfig(const Config& c) {
  auto bad = [](const std::string& m) { fail("ERR_CONFIG", "FluxTransformer config: " + m); };
  if (c.hidden <= 0 || c.heads <= 0 || c.hidden % c.heads) bad("hidden size " + std::to_string(c.hidden) +
                                                               " is not a multiple of the head count " + std::to_string(c.heads));
  int64_t sum = 0;
  for (auto a : c.axes) {
    if (a <= 0 || a % 2) bad("axes_dims_rope entries must be positive and even");
    sum += a;
  }
  if (sum != c.headDim())
    bad("axes_dims_rope sum to " + std::to_string(sum) + " but the head dim is " + std::to_string(c.headDim()) +
        " (pass config.axes_dims_rope)");
  if (c.depth < 0 || c.depthSingle < 0 || c.inChannels <= 0 || c.outChannels <= 0 || c.jointDim <= 0 || c.pooledDim <= 0)
    bad("sizes must be positive");
}

// ---------------------------------------------------------------- the model's parts
// exp(−ln(10000)·i/128), i < 128, on the CPU
at::Tensor timestepFrequencies(int64_t half = 128) {
  return at::exp(at::arange(half, at::kFloat) * (-std::log(10000.0) / double(half)));
}

// Sinusoidal embedding of t (already ×1000), 256 channels, cos first.
at::Tensor timestepEmbedding(const at::Tensor& t, const at::Tensor& freqs) {
  at::Tensor args = t.to(acc(t.scalar_type())).unsqueeze(1) * freqs.unsqueeze(0);
  return at::cat({at::cos(args), at::sin(args)}, -1);
}

at::Tensor mlpEmbedder(const Linear& in, const Linear& out, const at::Tensor& x) { return out(at::silu(in(x))); }

// The rotation tables: cos and sin [L, hd/2], and (fast mode) the same as unit complex numbers.
struct Rope {
  at::Tensor cos, sin, cis;
};

// RoPE tables for ids [L, 3]: angles in float64, cos/sin [L, headDim/2] in float32 (float64 models: float64).
Rope ropeTables(const Config& c, const at::Tensor& ids, at::ScalarType dt) {
  std::vector<at::Tensor> angles;
  const at::Tensor pos = ids.to(at::kDouble);
  for (size_t a = 0; a < c.axes.size(); ++a) {
    const int64_t d = c.axes[a];
    at::Tensor omega = 1.0 / at::pow(c.theta, at::arange(0, d, 2, pos.options()) / double(d));
    angles.push_back(pos.select(1, int64_t(a)).unsqueeze(1) * omega.unsqueeze(0));
  }
  at::Tensor ang = at::cat(angles, -1);
  Rope r{at::cos(ang).to(acc(dt)), at::sin(ang).to(acc(dt)), at::Tensor()};
  if (c.fast) r.cis = at::complex(r.cos, r.sin);
  return r;
}


// Rotates adjacent channel pairs (2m, 2m+1) of x [B, H, L, hd] in float32, rounds once.
at::Tensor applyRope(const at::Tensor& x, const Rope& r) {
  at::Tensor xf = x.to(acc(x.scalar_type())).unflatten(-1, {-1, 2});
  if (r.cis.defined())  // (x0 + i·x1)·(cos + i·sin): the same rotation as one complex multiply
    return at::view_as_real(at::view_as_complex(xf) * r.cis).flatten(-2).to(x.scalar_type());
  at::Tensor x0 = xf.select(-1, 0), x1 = xf.select(-1, 1);
  return at::stack({x0 * r.cos - x1 * r.sin, x0 * r.sin + x1 * r.cos}, -1).flatten(-2).to(x.scalar_type());
}

// QK-RMSNorm over the head dim: normalise in float32, round, then the learned scale (fast: one kernel,
// one rounding).
at::Tensor rmsNorm(const at::Tensor& x, const at::Tensor& scale, bool fast) {
  if (fast) return at::rms_norm(x, {x.size(-1)}, scale, 1e-6);
  at::Tensor xf = x.to(acc(x.scalar_type()));
  return (xf * at::rsqrt(xf.pow(2).mean(-1, true) + 1e-6)).to(x.scalar_type()) * scale;
}

// AdaLN: (1 + scale) · LayerNorm(x) + shift, LayerNorm without affine, eps 1e-6, as separate ops (fast: the
// modulation is LayerNorm's own affine, per sample).
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, bool fast) {
  const int64_t D = x.size(-1);
  if (fast) {
    if (x.size(0) == 1) return at::layer_norm(x, {D}, (1 + scale).reshape({D}), shift.reshape({D}), 1e-6);
    std::vector<at::Tensor> parts;
    for (int64_t b = 0; b < x.size(0); ++b)
      parts.push_back(at::layer_norm(x[b], {D}, (1 + scale[b]).reshape({D}), shift[b].reshape({D}), 1e-6));
    return at::stack(parts, 0);
  }
  at::Tensor ln = at::layer_norm(x, {D}, {}, {}, 1e-6);
  return (1 + scale) * ln + shift;
}

// x + gate · y (fast: one kernel)
at::Tensor gated(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, bool fast) {
  return fast ? at::addcmul(x, gate, y) : x + gate * y;
}

// res + gate · l(x): an adapter's low-rank term and the gated residual in one pass where they can be (lora.cc)
at::Tensor gatedLinear(const Linear& l, const at::Tensor& x, const at::Tensor& res, const at::Tensor& gate, bool fast) {
  return l(x, {{Epilogue::Gated, 0, -1, res, gate}}, fast)[0];
}

// [B, L, 3·hidden] → q, k, v [B, heads, L, hd]
std::array<at::Tensor, 3> splitHeads(const at::Tensor& qkv, int64_t heads) {
  at::Tensor t = qkv.unflatten(-1, {3, heads, -1}).permute({2, 0, 3, 1, 4});
  return {t[0], t[1], t[2]};
}

// The attention output's gradient reaches SDPA's backward in the output's own layout. A single block's output
// gradient is a row-strided slice of linear2's input gradient (rows of hidden + MLP width), a double block's a
// dense tensor, with the same shapes and q, k, v layout; with both, cuDNN's attention backward failed
// (mha_graph.execute, then an illegal memory access), likely one cached graph serving both layouts; with the
// gradient in one layout it runs (bench/RESULTS.md, issue 13). A copy only where the layouts differ.
// out (optional, not for autograd): [B, L, hidden] to write the result into (rows may be strided)
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out = {}) {
  at::Tensor o = at::scaled_dot_product_attention(q, k, v);  // [B, H, L, hd]
  if (out.defined()) {
    out.unflatten(2, {o.size(1), o.size(3)}).copy_(o.transpose(1, 2));
    return out;
  }
  if (o.requires_grad()) {
    std::vector<int64_t> strides = o.strides().vec();
    o.register_hook([strides](const at::Tensor& g) {
      return g.strides() == at::IntArrayRef(strides) ? g : at::empty_strided(g.sizes(), strides, g.options()).copy_(g);
    });
  }
  return o.transpose(1, 2).flatten(2);                      // [B, L, hidden]
}

// ---------------------------------------------------------------- fused QKV heads (CUDA)
// QKV split + QK-RMSNorm + RoPE as one kernel forward and one backward (kernels/qkv_rope.cu), for the fast
// precision on CUDA; X2I_NO_KERNELS=1 falls back to the LibTorch composition.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

[[maybe_unused]] bool useKernels(const Model& m, const at::Tensor& x) {
#ifdef X2I_CUDA_KERNELS
  return m.cfg.fast && x.is_cuda() && x.scalar_type() != at::kDouble && std::getenv("X2I_NO_KERNELS") == nullptr;
#else
  return false;
#endif
}

#ifdef X2I_CUDA_KERNELS
// Autograd nodes over the kernel (tensor arguments must be named one by one to be tracked): one segment
// (single block) or two (double block: text, then image). Outputs q, k, v [B, H, L, hd].
variable_list fusedForward(AutogradContext* ctx, variable_list saved, int n, int64_t heads) {
  ctx->save_for_backward(saved);
  ctx->saved_data["heads"] = heads;
  ctx->saved_data["n"] = int64_t(n);
  std::vector<kernels::QkvSegment> segs;
  for (int i = 0; i < n; ++i) segs.push_back({saved[3 * i], saved[3 * i + 1], saved[3 * i + 2]});
  auto r = kernels::qkvRopeForward(segs, saved[3 * n], saved[3 * n + 1], heads, 1e-6);
  return {r[0], r[1], r[2]};
}
variable_list fusedBackward(AutogradContext* ctx, const variable_list& g) {
  auto s = ctx->get_saved_variables();
  const int n = int(ctx->saved_data["n"].toInt());
  std::vector<kernels::QkvSegment> segs;
  for (int i = 0; i < n; ++i) segs.push_back({s[3 * i], s[3 * i + 1], s[3 * i + 2]});
  auto d = kernels::qkvRopeBackward(segs, s[3 * n], s[3 * n + 1], ctx->saved_data["heads"].toInt(), 1e-6, g[0], g[1], g[2]);
  variable_list out;
  for (int i = 0; i < n; ++i) out.push_back(d[size_t(i)]), out.push_back({}), out.push_back({});
  out.push_back({}), out.push_back({}), out.push_back({});  // cos, sin, heads
  return out;
}
struct FusedQkv1 : torch::autograd::Function<FusedQkv1> {
  static variable_list forward(AutogradContext* ctx, at::Tensor qkv, at::Tensor qs, at::Tensor ks, at::Tensor cos,
                               at::Tensor sin, int64_t heads) {
    return fusedForward(ctx, {qkv, qs, ks, cos, sin}, 1, heads);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) { return fusedBackward(ctx, g); }
};
struct FusedQkv2 : torch::autograd::Function<FusedQkv2> {
  static variable_list forward(AutogradContext* ctx, at::Tensor qkvA, at::Tensor qsA, at::Tensor ksA, at::Tensor qkvB,
                               at::Tensor qsB, at::Tensor ksB, at::Tensor cos, at::Tensor sin, int64_t heads) {
    return fusedForward(ctx, {qkvA, qsA, ksA, qkvB, qsB, ksB, cos, sin}, 2, heads);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) { return fusedBackward(ctx, g); }
};
#endif

// q, k, v [B, H, L, hd] from segments of qkv projections (text first), normed and rotated.
std::array<at::Tensor, 3> qkvHeads(const Model& m, const std::vector<std::array<at::Tensor, 3>>& segs, const Rope& rope) {
#ifdef X2I_CUDA_KERNELS
  if (useKernels(m, segs[0][0])) {
    auto o = segs.size() == 1
                 ? FusedQkv1::apply(segs[0][0], segs[0][1], segs[0][2], rope.cos, rope.sin, m.cfg.heads)
                 : FusedQkv2::apply(segs[0][0], segs[0][1], segs[0][2], segs[1][0], segs[1][1], segs[1][2], rope.cos,
                                    rope.sin, m.cfg.heads);
    return {o[0], o[1], o[2]};
  }
#endif
  std::vector<at::Tensor> qs, ks, vs;
  for (auto& [qkv, qScale, kScale] : segs) {
    auto [q, k, v] = splitHeads(qkv.narrow(-1, 0, 3 * m.cfg.hidden), m.cfg.heads);
    qs.push_back(rmsNorm(q, qScale, m.cfg.fast));
    ks.push_back(rmsNorm(k, kScale, m.cfg.fast));
    vs.push_back(v);
  }
  auto cat = [](const std::vector<at::Tensor>& t) { return t.size() == 1 ? t[0] : at::cat(t, 2); };
  return {applyRope(cat(qs), rope), applyRope(cat(ks), rope), cat(vs)};
}

std::pair<at::Tensor, at::Tensor> doubleBlock(const Model& m, const DoubleBlock& b, int64_t index, at::Tensor img,
                                              at::Tensor txt, const at::Tensor& sv, const Rope& rope,
                                              const TapHook& tap) {
  const int64_t T = txt.size(1);
  const bool fast = m.cfg.fast;
  auto im = b.img.mod(sv).unsqueeze(1).chunk(6, -1), tm = b.txt.mod(sv).unsqueeze(1).chunk(6, -1);
  auto [q, k, v] = qkvHeads(m, {{b.txt.qkv(modulate(txt, tm[0], tm[1], fast)), b.txt.qNorm, b.txt.kNorm},  // text first
                                 {b.img.qkv(modulate(img, im[0], im[1], fast)), b.img.qNorm, b.img.kNorm}}, rope);
  at::Tensor a = attention(q, k, v);
  auto parts = a.split_with_sizes({T, a.size(1) - T}, 1);  // backward: one concatenation
  at::Tensor aTxt = parts[0], aImg = parts[1];
  if (tap) {
    at::Tensor pImg = b.img.proj(aImg), pTxt = b.txt.proj(aTxt);
    tap(Tap::DoubleImg, index, pImg);
    tap(Tap::DoubleTxt, index, pTxt);
    img = gated(img, im[2], pImg, fast);
    txt = gated(txt, tm[2], pTxt, fast);
  } else {
    img = gatedLinear(b.img.proj, aImg, img, im[2], fast);
    txt = gatedLinear(b.txt.proj, aTxt, txt, tm[2], fast);
  }
  auto mlp = [&](const Stream& s, const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                 const at::Tensor& gate) {
    return gatedLinear(s.mlp2, s.mlp0(modulate(x, shift, scale, fast), {{Epilogue::GeluTanh}}, fast)[0], x, gate, fast);
  };
  img = mlp(b.img, img, im[3], im[4], im[5]);
  txt = mlp(b.txt, txt, tm[3], tm[4], tm[5]);
  return {img, txt};
}

at::Tensor singleBlock(const Model& m, const SingleBlock& b, int64_t index, const at::Tensor& x, const at::Tensor& sv,
                       const Rope& rope, const TapHook& tap) {
  const int64_t h = m.cfg.hidden;
  const bool fast = m.cfg.fast;
  auto mod = b.mod(sv).unsqueeze(1).chunk(3, -1);  // shift, scale, gate
  // inference: the attention and the MLP's activations are written side by side into linear2's input (no
  // concatenation); with taps or autograd they stay tensors of their own
  const bool inPlace = fast && !tap && !at::GradMode::is_enabled();
  const int64_t f = b.linear1.outFeatures() - 3 * h;
  const at::Tensor in2 = inPlace ? at::empty({x.size(0), x.size(1), h + f}, x.options()) : at::Tensor();
  auto u = b.linear1(modulate(x, mod[0], mod[1], fast),
                     {{Epilogue::None, 0, 3 * h}, {Epilogue::GeluTanh, 3 * h, -1, {}, {}, inPlace ? in2.narrow(-1, h, f) : at::Tensor()}},
                     fast);
  auto [q, k, v] = qkvHeads(m, {{u[0], b.qNorm, b.kNorm}}, rope);  // u: qkv, gelu(mlp)
  if (inPlace) {
    attention(q, k, v, in2.narrow(-1, 0, h));
    return gatedLinear(b.linear2, in2, x, mod[2], fast);
  }
  at::Tensor a = attention(q, k, v);
  if (tap) tap(Tap::Single, index, a);
  return gatedLinear(b.linear2, at::cat({a, u[1]}, -1), x, mod[2], fast);
}

at::Tensor finalLayer(const Model& m, const at::Tensor& img, const at::Tensor& sv) {
  auto mod = m.finalMod(sv).unsqueeze(1).chunk(2, -1);  // shift, scale
  return m.finalLinear(modulate(img, mod[0], mod[1], m.cfg.fast));
}

// ---------------------------------------------------------------- activation checkpointing
// A block as one autograd node: its forward keeps only the block's inputs; its backward runs the block again
// with grad on and back-propagates through that recomputation. Outputs: the block's outputs, then its taps.

const Model* modelOf(AutogradContext* ctx) { return reinterpret_cast<const Model*>(ctx->saved_data["model"].toInt()); }
Rope ropeOf(AutogradContext* ctx) {
  Rope r{ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor(), at::Tensor()};
  if (ctx->saved_data.count("cis")) r.cis = ctx->saved_data["cis"].toTensor();
  return r;
}
void saveCommon(AutogradContext* ctx, const Model& m, int64_t index, const Rope& rope) {
  ctx->saved_data["model"] = int64_t(reinterpret_cast<intptr_t>(&m));
  ctx->saved_data["index"] = index;
  ctx->saved_data["cos"] = rope.cos;
  ctx->saved_data["sin"] = rope.sin;
  if (rope.cis.defined()) ctx->saved_data["cis"] = rope.cis;
}

// The trainable LoRA parts of a block's layers (their gradients come from the recomputation).
variable_list trainableLeaves(const std::vector<const Linear*>& layers) {
  variable_list out;
  for (const Linear* l : layers)
    for (auto& slot : l->lora)
      if (slot.adapter->trainable)
        for (auto& p : slot.parts) out.push_back(p.A), out.push_back(p.B);
  return out;
}
variable_list leavesOf(const DoubleBlock& b) {
  std::vector<const Linear*> ls;
  for (const Stream* s : {&b.img, &b.txt}) ls.insert(ls.end(), {&s->mod, &s->qkv, &s->proj, &s->mlp0, &s->mlp2});
  return trainableLeaves(ls);
}
variable_list leavesOf(const SingleBlock& b) { return trainableLeaves({&b.mod, &b.linear1, &b.linear2}); }

// Recomputes outs = f(inputs) with grad and returns d⟨grads, outs⟩/d inputs (undefined where unused); trainable
// leaves used inside f (`leaves`) get their gradients accumulated into .grad, as a backward pass without
// checkpointing would.
variable_list recompute(const variable_list& saved, const variable_list& grads,
                        const std::function<variable_list(const variable_list&)>& f, const variable_list& leaves = {}) {
  variable_list ins;
  for (auto& t : saved) ins.push_back(t.detach().requires_grad_(true));
  variable_list outs;
  {
    c10::AutoGradMode enable(true);
    outs = f(ins);
  }
  variable_list o, g;
  for (size_t i = 0; i < outs.size(); ++i)
    if (grads[i].defined()) o.push_back(outs[i]), g.push_back(grads[i]);
  if (o.empty()) return variable_list(ins.size());
  if (leaves.empty())
    return torch::autograd::grad(o, ins, g, /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
  variable_list targets = ins;
  targets.insert(targets.end(), leaves.begin(), leaves.end());
  torch::autograd::backward(o, g, /*retain_graph=*/false, /*create_graph=*/false, targets);
  variable_list out;
  for (auto& t : ins) out.push_back(t.grad());
  return out;
}

struct CheckpointedDouble : torch::autograd::Function<CheckpointedDouble> {
  static variable_list run(const Model& m, int64_t index, const variable_list& x, const Rope& rope) {
    variable_list taps;
    TapHook keep = [&](Tap, int64_t, const at::Tensor& t) { taps.push_back(t); };
    auto [img, txt] = doubleBlock(m, m.doubles[size_t(index)], index, x[0], x[1], x[2], rope, keep);
    return {img, txt, taps[0], taps[1]};
  }
  static variable_list forward(AutogradContext* ctx, at::Tensor img, at::Tensor txt, at::Tensor sv, const Model* m,
                               int64_t index, const Rope* rope) {
    saveCommon(ctx, *m, index, *rope);
    ctx->save_for_backward({img, txt, sv});
    return run(*m, index, {img, txt, sv}, *rope);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Model& m = *modelOf(ctx);
    const int64_t index = ctx->saved_data["index"].toInt();
    const Rope rope = ropeOf(ctx);
    auto g = recompute(ctx->get_saved_variables(), grads, [&](const variable_list& x) { return run(m, index, x, rope); },
                       leavesOf(m.doubles[size_t(index)]));
    return {g[0], g[1], g[2], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct CheckpointedSingle : torch::autograd::Function<CheckpointedSingle> {
  static variable_list run(const Model& m, int64_t index, const variable_list& x, const Rope& rope) {
    at::Tensor tap;
    TapHook keep = [&](Tap, int64_t, const at::Tensor& t) { tap = t; };
    at::Tensor y = singleBlock(m, m.singles[size_t(index)], index, x[0], x[1], rope, keep);
    return {y, tap};
  }
  static variable_list forward(AutogradContext* ctx, at::Tensor x, at::Tensor sv, const Model* m, int64_t index,
                               const Rope* rope) {
    saveCommon(ctx, *m, index, *rope);
    ctx->save_for_backward({x, sv});
    return run(*m, index, {x, sv}, *rope);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Model& m = *modelOf(ctx);
    const int64_t index = ctx->saved_data["index"].toInt();
    const Rope rope = ropeOf(ctx);
    auto g = recompute(ctx->get_saved_variables(), grads, [&](const variable_list& x) { return run(m, index, x, rope); },
                       leavesOf(m.singles[size_t(index)]));
    return {g[0], g[1], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

void expectShape(const char* name, const at::Tensor& t, std::vector<int64_t> shape) {
  if (!t.defined()) fail("ERR_INVALID_ARG", std::string("FluxTransformer.forward: missing input ") + name);
  bool ok = t.dim() == int64_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || t.size(int64_t(i)) == shape[i];
  if (!ok) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    fail("ERR_SHAPE_MISMATCH", std::string("FluxTransformer.forward: ") + name + " has shape " + shapeString(t.sizes()) +
                                   ", expected " + s + "]");
  }
}

}  // namespace

std::shared_ptr<Model> load(const Config& cfg, std::map<std::string, at::Tensor> weights, const std::string& layout,
                            const std::string& source, std::optional<c10::Device> device) {
  checkConfig(cfg);
  // ComfyUI-style single files carry a prefix
  const std::string prefix = "model.diffusion_model.";
  if (!weights.empty() && std::all_of(weights.begin(), weights.end(), [&](auto& kv) { return kv.first.rfind(prefix, 0) == 0; })) {
    std::map<std::string, at::Tensor> stripped;
    for (auto& [k, v] : weights) stripped[k.substr(prefix.size())] = v;
    weights = std::move(stripped);
  }
  auto m = std::make_shared<Model>();
  m->cfg = cfg;
  WeightMap w(std::move(weights), "FluxTransformer", source, describe(cfg));
  if (layout == "bfl") loadBfl(*m, w);
  else if (layout == "diffusers") loadDiffusers(*m, w);
  else fail("ERR_INVALID_ARG", "unknown FLUX checkpoint layout '" + layout + "' (expected 'bfl' or 'diffusers')");
  w.finish();
  // one device and dtype for all weights
  const auto dev = device.value_or(m->imgIn.w.device());
  const auto dt = m->imgIn.w.scalar_type();
  if (!at::isFloatingType(dt) || at::isFloat8Type(dt))
    fail("ERR_CHECKPOINT_DTYPE", "FluxTransformer (" + source + "): weights are " + dtypeName(dt));
  // Config::fp8 quantizes every block's linear layers (the embedders and the final layer stay in the model dtype)
  m->forEachBlockLinear([&](Linear& l) {
    if (cfg.fp8) fp8::quantize(l, dev);  // one layer at a time, on the device
    if (l.w8.defined()) l.w8 = l.w8.to(dev), l.w8Scale = l.w8Scale.to(dev, at::kFloat), m->cfg.fp8 = true;
    if (l.w8.defined() && cfg.fp8Transposed) fp8::keepTransposed(l, dt);
  });
  auto fix = [&](at::Tensor& t) {
    if (t.defined() && at::isFloat8Type(t.scalar_type()))
      fail("ERR_CHECKPOINT_DTYPE", "FluxTransformer (" + source + "): a " + dtypeName(t.scalar_type()) + " tensor of shape " +
                                       shapeString(t.sizes()) + " outside the block layers (only those may be FP8)");
    if (t.defined() && (t.device() != dev || t.scalar_type() != dt)) t = t.to(dev, dt);
  };
  m->forEachParameter(fix);
  m->timeFreqs = timestepFrequencies().to(dev);
  return m;
}

std::shared_ptr<Model> random(const Config& cfg, c10::Device device, at::ScalarType dtype, uint64_t seed) {
  checkConfig(cfg);
  at::Generator gen = device.is_cpu() ? at::detail::createCPUGenerator(seed) : at::globalContext().defaultGenerator(device);
  if (!device.is_cpu()) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  auto opts = at::TensorOptions().device(device).dtype(at::kFloat);
  const int64_t h = cfg.hidden, f = 4 * h, hd = cfg.headDim();
  std::map<std::string, at::Tensor> w;
  auto lin = [&](const std::string& name, int64_t out, int64_t in) {
    const double b = 1.0 / std::sqrt(double(in));
    at::Tensor W = at::empty({out, in}, opts).uniform_(-b, b, gen).to(dtype);
    if (cfg.fp8 && name.find("_blocks.") != std::string::npos)  // quantized as drawn (from the same model-dtype values)
      std::tie(W, w[name + ".weight_scale"]) = fp8::quantizeWeight(W, device);
    w[name + ".weight"] = W;
    w[name + ".bias"] = at::empty({out}, opts).uniform_(-b, b, gen).to(dtype);
  };
  auto ones = [&](const std::string& name) { w[name] = at::ones({hd}, opts.dtype(dtype)); };
  lin("img_in", h, cfg.inChannels);
  lin("txt_in", h, cfg.jointDim);
  lin("time_in.in_layer", h, 256);
  lin("time_in.out_layer", h, h);
  if (cfg.guidance) lin("guidance_in.in_layer", h, 256), lin("guidance_in.out_layer", h, h);
  lin("vector_in.in_layer", h, cfg.pooledDim);
  lin("vector_in.out_layer", h, h);
  for (int64_t i = 0; i < cfg.depth; ++i)
    for (std::string side : {"img", "txt"}) {
      const std::string p = "double_blocks." + std::to_string(i) + "." + side;
      lin(p + "_mod.lin", 6 * h, h);
      lin(p + "_attn.qkv", 3 * h, h);
      ones(p + "_attn.norm.query_norm.scale");
      ones(p + "_attn.norm.key_norm.scale");
      lin(p + "_attn.proj", h, h);
      lin(p + "_mlp.0", f, h);
      lin(p + "_mlp.2", h, f);
    }
  for (int64_t i = 0; i < cfg.depthSingle; ++i) {
    const std::string p = "single_blocks." + std::to_string(i) + ".";
    lin(p + "linear1", 3 * h + f, h);
    lin(p + "linear2", h, h + f);
    ones(p + "norm.query_norm.scale");
    ones(p + "norm.key_norm.scale");
    lin(p + "modulation.lin", 3 * h, h);
  }
  lin("final_layer.linear", cfg.outChannels, h);
  lin("final_layer.adaLN_modulation.1", 2 * h, h);
  return load(cfg, std::move(w), "bfl", "random init, seed " + std::to_string(seed));
}

Inputs prepare(const Model& m, Inputs in) {
  const auto& c = m.cfg;
  expectShape("hiddenStates", in.hiddenStates, {-1, -1, c.inChannels});
  const int64_t B = in.hiddenStates.size(0), N = in.hiddenStates.size(1);
  expectShape("encoderHiddenStates", in.encoderHiddenStates, {B, -1, c.jointDim});
  const int64_t T = in.encoderHiddenStates.size(1);
  expectShape("pooledProjections", in.pooledProjections, {B, c.pooledDim});
  if (in.timestep.defined() && in.timestep.dim() == 0) in.timestep = in.timestep.expand({B});
  expectShape("timestep", in.timestep, {B});
  if (c.guidance) {
    if (!in.guidance.defined())
      fail("ERR_INVALID_ARG", "FluxTransformer.forward: this checkpoint has a guidance embedder (FLUX.1-dev style): pass guidance");
    if (in.guidance.dim() == 0) in.guidance = in.guidance.expand({B});
    expectShape("guidance", in.guidance, {B});
  }
  for (auto* ids : {&in.imgIds, &in.txtIds})
    if (ids->defined() && ids->dim() == 3) *ids = ids->select(0, 0);  // [B, n, 3] (BFL) → [n, 3]
  expectShape("imgIds", in.imgIds, {N, 3});
  expectShape("txtIds", in.txtIds, {T, 3});
  const auto dev = m.device();
  const auto dt = m.dtype();
  for (at::Tensor* t : {&in.hiddenStates, &in.encoderHiddenStates, &in.pooledProjections})
    if (!at::isFloatingType(t->scalar_type()))
      fail("ERR_INVALID_DTYPE", "FluxTransformer.forward: inputs must be floating point, found " + dtypeName(t->scalar_type()));
  for (at::Tensor* t : {&in.hiddenStates, &in.encoderHiddenStates, &in.pooledProjections})
    if (t->defined()) *t = t->to(dev, dt);
  const at::ScalarType tdt = m.cfg.exactTimesteps ? acc(dt) : dt;  // the sinusoids' input: exact or as the reference
  for (at::Tensor* t : {&in.timestep, &in.guidance})
    if (t->defined()) *t = t->to(dev, tdt);
  in.imgIds = in.imgIds.to(dev, at::kFloat);
  in.txtIds = in.txtIds.to(dev, at::kFloat);
  if (in.controlResiduals.defined()) {
    expectShape("controlResiduals", in.controlResiduals, {B, -1, N, c.hidden});
    if (in.controlResiduals.size(1) > int64_t(m.doubles.size()))
      fail("ERR_SHAPE_MISMATCH", "FluxTransformer.forward: controlResiduals has " + std::to_string(in.controlResiduals.size(1)) +
                                     " branches, the model " + std::to_string(m.doubles.size()) + " double blocks");
    if (!at::isFloatingType(in.controlResiduals.scalar_type()))
      fail("ERR_INVALID_DTYPE", "FluxTransformer.forward: controlResiduals must be floating point");
    in.controlResiduals = in.controlResiduals.to(dev, dt);
  }
  lora::applyScales(m, in.loraScales);
  return in;
}

// X2I_PROFILE=1: synchronise and print the time of each phase of the forward to stderr.
struct PhaseTimer {
  bool on = std::getenv("X2I_PROFILE") != nullptr;
  c10::Device dev;
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  void operator()(const char* phase) {
    if (!on) return;
    syncDevice(dev);
    auto now = std::chrono::steady_clock::now();
    std::fprintf(stderr, "x2i flux %-10s %8.3f ms\n", phase, std::chrono::duration<double, std::milli>(now - t).count());
    t = now;
  }
};

at::Tensor forward(const Model& m, const Inputs& in, const TapHook& tap, bool checkpoint) {
  if (c10::GradMode::is_enabled()) m.stepGraph.reset();  // training: the denoising step's graph pool is not kept
  checkpoint = checkpoint && c10::GradMode::is_enabled();
  const auto dt = m.dtype();
  PhaseTimer phase{std::getenv("X2I_PROFILE") != nullptr, m.device()};
  phase("start");
  // conditioning vector: ((t + g) + y), the sinusoids of t·1000 and g·1000 (in the model dtype, or float32 with
  // exactTimesteps)
  at::Tensor vec = mlpEmbedder(m.timeIn1, m.timeIn2, timestepEmbedding(in.timestep * 1000, m.timeFreqs).to(dt));
  if (m.cfg.guidance) vec = vec + mlpEmbedder(m.guidanceIn1, m.guidanceIn2, timestepEmbedding(in.guidance * 1000, m.timeFreqs).to(dt));
  vec = vec + mlpEmbedder(m.vectorIn1, m.vectorIn2, in.pooledProjections);
  const at::Tensor sv = at::silu(vec);
  phase("vec");
  at::Tensor img = m.imgIn(in.hiddenStates), txt = m.txtIn(in.encoderHiddenStates);
  phase("embed");
  const Rope rope = ropeTables(m.cfg, at::cat({in.txtIds, in.imgIds}, 0), dt);  // text first
  phase("rope");
  for (size_t i = 0; i < m.doubles.size(); ++i) {
    if (checkpoint) {
      auto o = CheckpointedDouble::apply(img, txt, sv, &m, int64_t(i), &rope);
      img = o[0], txt = o[1];
      if (tap) tap(Tap::DoubleImg, int64_t(i), o[2]), tap(Tap::DoubleTxt, int64_t(i), o[3]);
    } else {
      std::tie(img, txt) = doubleBlock(m, m.doubles[i], int64_t(i), img, txt, sv, rope, tap);
    }
    if (in.controlResiduals.defined() && int64_t(i) < in.controlResiduals.size(1))  // LightControl's branch i
      img = img + in.controlResiduals.select(1, int64_t(i)) * in.controlScale;
  }
  const int64_t T = txt.size(1);
  at::Tensor x = at::cat({txt, img}, 1);
  for (size_t i = 0; i < m.singles.size(); ++i) {
    if (checkpoint) {
      auto o = CheckpointedSingle::apply(x, sv, &m, int64_t(i), &rope);
      x = o[0];
      if (tap) tap(Tap::Single, int64_t(i), o[1]);
    } else {
      x = singleBlock(m, m.singles[i], int64_t(i), x, sv, rope, tap);
    }
  }
  phase("blocks");
  at::Tensor out = finalLayer(m, x.narrow(1, T, x.size(1) - T), sv);
  phase("final");
  return out;
}

}  // namespace x2i::flux
