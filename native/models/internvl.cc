// InternVL2.5 as X2I ships it (InternVLChatModel with X2I's `generate`): InternViT (class token, patch conv,
// position table; pre-LN blocks with layer scale: x += ls1·attn(norm1 x), x += ls2·mlp(norm2 x), exact GELU; no
// final norm), the class token dropped, pixel shuffle (v2) by the downsample ratio, mlp1 (LayerNorm, Linear, GELU,
// Linear); the features replace the <IMG_CONTEXT> tokens and the Qwen2.5 language model runs once with every
// layer's state kept — AlignNet's input.
#include "models/internvl.h"
#include "core/weights.h"

#include <cmath>

namespace x2i::internvl {
namespace {

// [tiles, 3, s, s] → [tiles, 1 + g², C]: class token + patches, plus the position table (bicubic-resized when the
// tiles' patch grid differs from the table's)
at::Tensor embeddings(const Model& m, const at::Tensor& px) {
  at::Tensor p = at::conv2d(px, m.patchW, m.patchB, m.cfg.vision.patch);  // [T, C, h, w]
  const int64_t T = p.size(0), C = p.size(1), h = p.size(2), w = p.size(3);
  at::Tensor x = at::cat({m.cls.expand({T, 1, C}), p.flatten(2).transpose(1, 2)}, 1);
  at::Tensor pos = m.pos;
  const int64_t g = int64_t(std::lround(std::sqrt(double(pos.size(1) - 1))));
  if (g != h || g != w) {
    at::Tensor grid = pos.narrow(1, 1, g * g).reshape({1, g, g, C}).permute({0, 3, 1, 2}).to(at::kFloat);
    grid = at::upsample_bicubic2d(grid, {h, w}, false).to(pos.scalar_type()).reshape({1, C, h * w}).transpose(1, 2);
    pos = at::cat({pos.narrow(1, 0, 1), grid}, 1);
  }
  return x + pos;
}

at::Tensor visionLayer(const Model& m, const VisionLayer& l, const at::Tensor& x) {
  const auto& v = m.cfg.vision;
  const int64_t T = x.size(0), N = x.size(1), C = x.size(2), hd = C / v.heads;
  const at::Tensor h = at::layer_norm(x, {C}, l.norm1W, l.norm1B, v.eps);
  at::Tensor qkv = at::linear(h, l.qkvW, l.qkvB).view({T, N, 3, v.heads, hd}).permute({2, 0, 3, 1, 4});
  at::Tensor a = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape({T, N, C});
  at::Tensor y = x + at::linear(a, l.projW, l.projB) * l.ls1;
  const at::Tensor h2 = at::layer_norm(y, {C}, l.norm2W, l.norm2B, v.eps);
  return y + at::linear(at::gelu(at::linear(h2, l.fc1W, l.fc1B)), l.fc2W, l.fc2B) * l.ls2;
}

// InternVL's pixel_shuffle (v2) of [T, g, g, C] by ratio r → [T, g·r, g·r, C/r²]
at::Tensor pixelShuffle(const at::Tensor& x, double r) {
  const int64_t n = x.size(0), w = x.size(1), h = x.size(2), c = x.size(3);
  const int64_t hs = int64_t(std::lround(double(h) * r)), ws = int64_t(std::lround(double(w) * r));
  at::Tensor y = x.reshape({n, w, hs, int64_t(std::lround(double(c) / r))}).permute({0, 2, 1, 3}).contiguous();
  y = y.view({n, hs, ws, int64_t(std::lround(double(c) / (r * r)))});
  return y.permute({0, 2, 1, 3}).contiguous();
}

}  // namespace

std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  const auto& v = c.vision;
  if (v.hidden % v.heads) fail("ERR_CONFIG", "InternVLEncoder: vision hidden_size must be a multiple of num_attention_heads");
  const double inv = 1.0 / c.downsample;
  const int64_t mult = int64_t(std::lround(inv * inv));
  if (std::abs(inv * inv - double(mult)) > 1e-9 || mult < 1)
    fail("ERR_CONFIG", "InternVLEncoder: downsample_ratio must be 1/k for an integer k, found " + std::to_string(c.downsample));
  // the language model's tensors go to the Qwen loader under its own names
  std::map<std::string, at::Tensor> llm, rest;
  for (auto& [k, t] : weights) {
    if (k.rfind("language_model.", 0) == 0) llm[k.substr(15)] = t;
    else rest[k] = t;
  }
  WeightMap w(std::move(rest), "InternVLEncoder", source);
  auto m = std::make_shared<Model>();
  m->cfg = c;
  const int64_t C = v.hidden, g = v.imageSize / v.patch, H = c.llm.text.hidden, Cm = C * mult;
  m->cls = w.take("vision_model.embeddings.class_embedding", {1, 1, C});
  m->patchW = w.take("vision_model.embeddings.patch_embedding.weight", {C, v.channels, v.patch, v.patch});
  m->patchB = w.take("vision_model.embeddings.patch_embedding.bias", {C});
  m->pos = w.take("vision_model.embeddings.position_embedding", {1, 1 + g * g, C});
  auto norm = [&](const std::string& n, int64_t d) {  // weight, then bias (the draw order under a RandomInit)
    at::Tensor weight = w.take(n + ".weight", {d});
    return std::make_pair(weight, w.take(n + ".bias", {d}));
  };
  for (int64_t i = 0; i < v.layers; ++i) {
    const std::string p = "vision_model.encoder.layers." + std::to_string(i) + ".";
    VisionLayer l;
    std::tie(l.norm1W, l.norm1B) = norm(p + "norm1", C);
    std::tie(l.qkvW, l.qkvB) = w.linear(p + "attn.qkv", 3 * C, C);
    std::tie(l.projW, l.projB) = w.linear(p + "attn.proj", C, C);
    l.ls1 = w.take(p + "ls1", {C});
    std::tie(l.norm2W, l.norm2B) = norm(p + "norm2", C);
    std::tie(l.fc1W, l.fc1B) = w.linear(p + "mlp.fc1", v.intermediate, C);
    std::tie(l.fc2W, l.fc2B) = w.linear(p + "mlp.fc2", C, v.intermediate);
    l.ls2 = w.take(p + "ls2", {C});
    m->layers.push_back(std::move(l));
  }
  std::tie(m->lnW, m->lnB) = norm("mlp1.0", Cm);
  std::tie(m->fc1W, m->fc1B) = w.linear("mlp1.1", H, Cm);
  std::tie(m->fc2W, m->fc2B) = w.linear("mlp1.3", H, H);
  w.finish();
  qwen::FullConfig lc = c.llm;
  lc.vision.present = false;
  m->llm = qwen::load(lc, std::move(llm), source);
  return m;
}

at::Tensor imageEmbeds(const Model& m, const at::Tensor& pixelValues) {
  const auto& v = m.cfg.vision;
  const auto dt = m.patchW.scalar_type();
  if (!pixelValues.defined() || pixelValues.dim() != 4 || pixelValues.size(1) != v.channels || pixelValues.size(0) == 0 ||
      pixelValues.size(2) % v.patch || pixelValues.size(3) != pixelValues.size(2) || pixelValues.size(2) == 0)
    fail("ERR_SHAPE_MISMATCH", "InternVLEncoder.forward: pixelValues has shape " +
                                   (pixelValues.defined() ? shapeString(pixelValues.sizes()) : std::string("(none)")) +
                                   ", expected [tiles, " + std::to_string(v.channels) + ", s, s] with s a multiple of " +
                                   std::to_string(v.patch));
  const int64_t g = pixelValues.size(2) / v.patch, gs = int64_t(std::lround(double(g) * m.cfg.downsample));
  if (std::abs(double(g) * m.cfg.downsample - double(gs)) > 1e-9)
    fail("ERR_SHAPE_MISMATCH", "InternVLEncoder.forward: a tile of " + std::to_string(g) + "×" + std::to_string(g) +
                                   " patches does not shuffle by " + std::to_string(m.cfg.downsample));
  at::Tensor x = embeddings(m, pixelValues.to(m.patchW.device(), dt));
  for (const auto& l : m.layers) x = visionLayer(m, l, x);
  x = x.narrow(1, 1, g * g).reshape({x.size(0), g, g, -1});  // the class token dropped
  x = pixelShuffle(x, m.cfg.downsample).reshape({x.size(0), gs * gs, -1});
  x = at::layer_norm(x, {x.size(-1)}, m.lnW, m.lnB, 1e-5);
  return at::linear(at::gelu(at::linear(x, m.fc1W, m.fc1B)), m.fc2W, m.fc2B);
}

Outputs forward(const Model& m, const Inputs& in) {
  qwen::Inputs q;
  q.ids = in.ids, q.mask = in.mask, q.capture = in.capture;
  q.positions = "arange", q.padRule = "x2i";
  if (in.pixelValues.defined()) {
    const at::Tensor e = imageEmbeds(m, in.pixelValues);
    if (in.embedsOnly) return Outputs{e, {}, {}};
    q.embeds = e.reshape({-1, e.size(-1)});
    q.embedsTokenId = m.cfg.imgContextId;
  } else if (in.embedsOnly) {
    fail("ERR_INVALID_ARG", "InternVLEncoder.encodeImages: pixelValues are required");
  }
  return qwen::forward(*m.llm, q);
}

}  // namespace x2i::internvl
