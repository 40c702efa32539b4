// X2I LightControl (OPPO-Mente-Lab/X2I, lightcontrol/lightcontrol_flux.py): an nn.ModuleList of ControlNeXtModel,
// one branch per FLUX double-stream block. A branch embeds the timestep (sinusoidal 128 → MLP), the hint image
// (three convs, stride 2), runs two diffusers ResnetBlock2D + Downsample2D stages, a residual mid block and a
// 2×2 stride-2 output conv: total stride 16, one D-wide token per 16×16 hint pixels, added to the image stream
// after double block i. Each step is the official module's op chain, in the compute dtype.
#include "models/lightcontrol.h"
#include "core/weights.h"
#include "models/group_norm.h"

#include <cmath>
#include <sstream>

namespace x2i::lightcontrol {
namespace {

constexpr double kResnetEps = 1e-6;  // diffusers ResnetBlock2D
constexpr double kNormEps = 1e-5;    // nn.GroupNorm's default (embedding, mid block)

// ---------------------------------------------------------------- parameters
// Every parameter of one branch: fn(official name without the branch prefix, the tensor, its shape), in the
// official module order. The one list that load, weights and parameters share.
template <class B, class F>
void layout(B& b, const Config& c, F&& fn) {
  auto affine = [&](const std::string& n, auto& a, std::vector<int64_t> shape) {
    fn(n + ".weight", a.w, shape);
    fn(n + ".bias", a.b, std::vector<int64_t>{shape[0]});
  };
  const int64_t T = c.timeEmbedDim;
  affine("time_embedding.linear_1", b.timeLinear1, {T, c.timeProjChannels});
  affine("time_embedding.linear_2", b.timeLinear2, {T, T});
  int64_t in = 3;
  for (int i = 0; i < 3; ++i) {
    const int64_t e = c.embeddingChannels[i];
    affine("embedding." + std::to_string(3 * i), b.embConv[i], {e, in, 3, 3});
    affine("embedding." + std::to_string(3 * i + 1), b.embNorm[i], {e});
    in = e;
  }
  for (int i = 0; i < 2; ++i) {
    const int64_t ci = c.inChannels[i], co = c.outChannels[i];
    const std::string p = "down_res." + std::to_string(i) + ".";
    auto& r = b.downRes[i];
    affine(p + "norm1", r.norm1, {ci});
    affine(p + "conv1", r.conv1, {co, ci, 3, 3});
    affine(p + "time_emb_proj", r.timeEmbProj, {co, T});
    affine(p + "norm2", r.norm2, {co});
    affine(p + "conv2", r.conv2, {co, co, 3, 3});
    if (ci != co) affine(p + "conv_shortcut", r.convShortcut, {co, ci, 1, 1});
    affine("down_sample." + std::to_string(i) + ".conv", b.downSample[i], {co, co, 3, 3});
  }
  const int64_t C = c.outChannels[1];
  affine("mid_convs.0.0", b.midConv1, {C, C, 3, 3});
  affine("mid_convs.0.2", b.midNorm1, {C});
  affine("mid_convs.0.3", b.midConv2, {C, C, 3, 3});
  affine("mid_convs.0.4", b.midNorm2, {C});
  affine("mid_convs.1", b.outConv, {c.controlOutChannels, C, 2, 2});
}

std::string describe(const Config& c) {
  std::ostringstream o;
  o << "for the config (in_channels [" << c.inChannels[0] << ", " << c.inChannels[1] << "], out_channels ["
    << c.outChannels[0] << ", " << c.outChannels[1] << "], time_embed_dim " << c.timeEmbedDim << ", embedding_channels ["
    << c.embeddingChannels[0] << ", " << c.embeddingChannels[1] << ", " << c.embeddingChannels[2]
    << "], control_out_channels " << c.controlOutChannels << ", time_proj_channels " << c.timeProjChannels << ", "
    << c.numBranches << " branches)";
  return o.str();
}

void validate(const Config& c) {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) fail("ERR_CONFIG", "LightControl config: " + msg);
  };
  auto s = [](int64_t v) { return std::to_string(v); };
  for (int64_t v : {c.inChannels[0], c.inChannels[1], c.outChannels[0], c.outChannels[1], c.groups[0], c.groups[1],
                    c.timeEmbedDim, c.embeddingChannels[0], c.embeddingChannels[1], c.embeddingChannels[2],
                    c.embeddingNormGroups, c.midNormGroups, c.controlOutChannels, c.timeProjChannels, c.numBranches})
    need(v >= 1, "every size must be a positive integer, found " + s(v));
  need(c.timeProjChannels % 2 == 0, "time_proj_channels (" + s(c.timeProjChannels) + ") must be even");
  need(c.embeddingChannels[2] == c.inChannels[0], "embedding_channels[2] (" + s(c.embeddingChannels[2]) +
                                                      ") must equal in_channels[0] (" + s(c.inChannels[0]) + ")");
  need(c.outChannels[0] == c.inChannels[1],
       "in_channels[1] (" + s(c.inChannels[1]) + ") must equal out_channels[0] (" + s(c.outChannels[0]) + ")");
  for (int i = 0; i < 2; ++i)
    need(c.inChannels[i] % c.groups[i] == 0 && c.outChannels[i] % c.groups[i] == 0,
         "groups[" + s(i) + "] (" + s(c.groups[i]) + ") must divide in_channels[" + s(i) + "] (" + s(c.inChannels[i]) +
             ") and out_channels[" + s(i) + "] (" + s(c.outChannels[i]) + ")");
  for (int i = 0; i < 3; ++i)
    need(c.embeddingChannels[i] % c.embeddingNormGroups == 0,
         "embedding_norm_groups (" + s(c.embeddingNormGroups) + ") must divide embedding_channels[" + s(i) + "] (" +
             s(c.embeddingChannels[i]) + ")");
  need(c.outChannels[1] % c.midNormGroups == 0,
       "mid_norm_groups (" + s(c.midNormGroups) + ") must divide out_channels[1] (" + s(c.outChannels[1]) + ")");
}

// ---------------------------------------------------------------- forward
// The layers, each in the compute dtype t (parameters cast inside: differentiable w.r.t. float32 leaves).
at::Tensor linear(const Affine& a, const at::Tensor& x, at::ScalarType t) { return at::linear(x, a.w.to(t), a.b.to(t)); }
at::Tensor conv(const Affine& a, const at::Tensor& x, at::ScalarType t, int64_t stride = 1, int64_t pad = 1) {
  return at::conv2d(x, a.w.to(t), a.b.to(t), stride, pad);
}
at::Tensor norm(const Affine& a, const at::Tensor& x, int64_t groups, double eps, at::ScalarType t) {
  return groupNorm(x, groups, a.w.to(t), a.b.to(t), eps);
}

// diffusers Timesteps(P, flip_sin_to_cos=True, downscale_freq_shift=0) (float32) → TimestepEmbedding: [B, T]
at::Tensor timeEmbedding(const Branch& b, const Config& c, const at::Tensor& tprime, at::ScalarType t) {
  const int64_t half = c.timeProjChannels / 2;
  at::Tensor exponent = at::arange(half, tprime.options().dtype(at::kFloat)) * (-std::log(10000.0)) / double(half);
  at::Tensor arg = tprime.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
  at::Tensor temb0 = at::cat({at::cos(arg), at::sin(arg)}, -1).to(t);
  return linear(b.timeLinear2, at::silu(linear(b.timeLinear1, temb0, t)), t);
}

// embedding: (Conv3×3 [stride 2 for the first], GroupNorm, ReLU) × 3 → [B, e2, H/2, W/2]
at::Tensor hintEmbedding(const Branch& b, const Config& c, at::Tensor x, at::ScalarType t) {
  for (int i = 0; i < 3; ++i) x = at::relu(norm(b.embNorm[i], conv(b.embConv[i], x, t, i == 0 ? 2 : 1), c.embeddingNormGroups, kNormEps, t));
  return x;
}

// diffusers ResnetBlock2D; temb is SiLU(time embedding), as the block applies it
at::Tensor resnetBlock(const ResnetBlock& r, const at::Tensor& x, const at::Tensor& temb, int64_t groups, at::ScalarType t) {
  at::Tensor h = conv(r.conv1, at::silu(norm(r.norm1, x, groups, kResnetEps, t)), t);
  h = h + linear(r.timeEmbProj, temb, t).unsqueeze(-1).unsqueeze(-1);
  h = conv(r.conv2, at::silu(norm(r.norm2, h, groups, kResnetEps, t)), t);
  return (r.convShortcut.w.defined() ? conv(r.convShortcut, x, t, 1, 0) : x) + h;
}

// diffusers Downsample2D(use_conv=True, padding=1)
at::Tensor downsample(const Affine& a, const at::Tensor& x, at::ScalarType t) { return conv(a, x, t, 2, 1); }

// mid_convs.0, added residually: Conv, ReLU, GroupNorm, Conv, GroupNorm
at::Tensor midBlock(const Branch& b, const Config& c, const at::Tensor& x, at::ScalarType t) {
  at::Tensor h = norm(b.midNorm1, at::relu(conv(b.midConv1, x, t)), c.midNormGroups, kNormEps, t);
  return norm(b.midNorm2, conv(b.midConv2, h, t), c.midNormGroups, kNormEps, t) + x;
}

// [B, D, h, w] → [B, h·w, D] (token = row·w + col, as FLUX's img_ids)
at::Tensor toTokens(const at::Tensor& x) { return x.flatten(2).transpose(1, 2); }

at::Tensor runBranch(const Branch& b, const Config& c, const at::Tensor& hint, const at::Tensor& tprime, at::ScalarType t) {
  const at::Tensor temb = at::silu(timeEmbedding(b, c, tprime, t));
  at::Tensor x = hintEmbedding(b, c, hint, t);
  for (int i = 0; i < 2; ++i) x = downsample(b.downSample[i], resnetBlock(b.downRes[i], x, temb, c.groups[i], t), t);
  x = midBlock(b, c, x, t);
  return toTokens(conv(b.outConv, x, t, 2, 0));  // mid_convs.1: Conv2×2 stride 2
}

}  // namespace

std::shared_ptr<Model> load(const Config& cfg, std::map<std::string, at::Tensor> weights, const std::string& source) {
  validate(cfg);
  WeightMap w(std::move(weights), "LightControl", source, describe(cfg));
  auto m = std::make_shared<Model>();
  m->cfg = cfg;
  m->branches.resize(size_t(cfg.numBranches));
  for (int64_t i = 0; i < cfg.numBranches; ++i) {
    const std::string p = std::to_string(i) + ".";
    layout(m->branches[size_t(i)], cfg, [&](const std::string& n, at::Tensor& t, const std::vector<int64_t>& shape) {
      t = w.take(p + n, shape);
    });
  }
  w.finish();
  return m;
}

std::shared_ptr<Model> random(const Config& cfg, c10::Device device, at::ScalarType dtype, uint64_t seed) {
  RandomInit init(device, dtype, seed);
  return load(cfg, {}, "random weights, seed " + std::to_string(seed));
}

at::Tensor forward(const Model& m, const at::Tensor& hint, const at::Tensor& timestep, at::ScalarType computeDtype) {
  if (!hint.defined() || hint.dim() != 4 || hint.size(1) != 3 || hint.size(2) % 16 != 0 || hint.size(3) % 16 != 0 ||
      hint.numel() == 0)
    fail("ERR_SHAPE_MISMATCH", "LightControl.forward: hint has shape " +
                                   (hint.defined() ? shapeString(hint.sizes()) : std::string("(none)")) +
                                   ", expected [B, 3, H, W] with H and W positive multiples of 16 (one token per 16×16 pixels)");
  const int64_t B = hint.size(0);
  if (!timestep.defined() || !(timestep.numel() == 1 || (timestep.dim() == 1 && timestep.size(0) == B)))
    fail("ERR_SHAPE_MISMATCH", "LightControl.forward: timestep has shape " +
                                   (timestep.defined() ? shapeString(timestep.sizes()) : std::string("(none)")) +
                                   ", expected [" + std::to_string(B) + "] or a scalar");
  const c10::Device device = m.branches.at(0).timeLinear1.w.device();
  const at::ScalarType t = computeDtype;
  const at::Tensor x = hint.to(device, t);
  // FLUX's ×1000 timestep: cast to the compute dtype first, as the transformer does
  const at::Tensor tprime = timestep.reshape({-1}).to(device, t).expand({B}) * 1000;
  std::vector<at::Tensor> out;
  for (const Branch& b : m.branches) out.push_back(runBranch(b, m.cfg, x, tprime, t));
  return at::stack(out, 1);
}

std::map<std::string, at::Tensor> weights(const Model& m) {
  std::map<std::string, at::Tensor> w;
  for (size_t i = 0; i < m.branches.size(); ++i)
    layout(m.branches[i], m.cfg, [&](const std::string& n, const at::Tensor& t, const std::vector<int64_t>&) {
      w[std::to_string(i) + "." + n] = t;
    });
  return w;
}

std::vector<std::pair<std::string, at::Tensor*>> parameters(Model& m) {
  std::vector<std::pair<std::string, at::Tensor*>> p;
  for (size_t i = 0; i < m.branches.size(); ++i)
    layout(m.branches[i], m.cfg, [&](const std::string& n, at::Tensor& t, const std::vector<int64_t>&) {
      p.push_back({std::to_string(i) + "." + n, &t});
    });
  return p;
}

int64_t parameterCount(const Model& m) {
  int64_t n = 0;
  for (auto& [k, t] : weights(m)) n += t.numel();
  return n;
}

}  // namespace x2i::lightcontrol
