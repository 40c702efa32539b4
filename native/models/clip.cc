// CLIP's two towers, as transformers' CLIPTextModel and CLIPVisionModel.
// Text (FLUX's text_encoder): token + position embeddings, pre-LN blocks with causal attention and quick-GELU
// MLPs, final LayerNorm; the pooled output is the final hidden state at the first EOS (or, for configs with
// eos_token_id 2, at the largest id, as transformers does).
// Vision (CLIP score's image side): patches by a strided convolution, the class token, position embeddings,
// pre-LayerNorm, the same blocks without a mask, the class token's post-LayerNorm as the pooled output.
// Both projections (text_projection, visual_projection) map the pooled outputs into the joint embedding space.
#include "models/clip.h"

#include "core/streams.h"

namespace x2i::clip {
namespace {

// One pre-LN encoder block: x + attn(LN(x)), then x + MLP(LN(x)) (quick_gelu or gelu).
at::Tensor block(const at::Tensor& x, const Layer& l, int64_t heads, double eps, const std::string& act, bool causal) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2), hd = H / heads;
  at::Tensor h = at::layer_norm(x, {H}, l.ln1w, l.ln1b, eps);
  auto split = [&](const at::Tensor& w, const at::Tensor& b) { return at::linear(h, w, b).view({B, S, heads, hd}).transpose(1, 2); };
  at::Tensor a = at::scaled_dot_product_attention(split(l.qw, l.qb), split(l.kw, l.kb), split(l.vw, l.vb), {}, 0.0, causal);
  at::Tensor y = x + at::linear(a.transpose(1, 2).reshape({B, S, H}), l.ow, l.ob);
  h = at::linear(at::layer_norm(y, {H}, l.ln2w, l.ln2b, eps), l.fc1w, l.fc1b);
  h = act == "quick_gelu" ? h * at::sigmoid(1.702 * h) : at::gelu(h);
  return y + at::linear(h, l.fc2w, l.fc2b);
}

Layer takeLayer(WeightMap& w, const std::string& p, int64_t H, int64_t I) {
  Layer l;
  l.ln1w = w.take(p + "layer_norm1.weight", {H});
  l.ln1b = w.take(p + "layer_norm1.bias", {H});
  std::tie(l.qw, l.qb) = w.linear(p + "self_attn.q_proj", H, H);
  std::tie(l.kw, l.kb) = w.linear(p + "self_attn.k_proj", H, H);
  std::tie(l.vw, l.vb) = w.linear(p + "self_attn.v_proj", H, H);
  std::tie(l.ow, l.ob) = w.linear(p + "self_attn.out_proj", H, H);
  l.ln2w = w.take(p + "layer_norm2.weight", {H});
  l.ln2b = w.take(p + "layer_norm2.bias", {H});
  std::tie(l.fc1w, l.fc1b) = w.linear(p + "mlp.fc1", I, H);
  std::tie(l.fc2w, l.fc2b) = w.linear(p + "mlp.fc2", H, I);
  return l;
}

// One tower's weights of a checkpoint: `prefix` stripped (transformers ≥ 5 writes a lone tower without it), the
// other tower's and the joint model's other tensors left out; the tower's projection kept under `projection`.
std::map<std::string, at::Tensor> towerOf(std::map<std::string, at::Tensor> weights, const std::string& prefix,
                                          const std::string& other, const std::string& projection) {
  std::map<std::string, at::Tensor> out;
  for (auto& [k, v] : weights) {
    const bool otherProjection = k != projection && (k == "text_projection.weight" || k == "visual_projection.weight");
    if (k.rfind(other, 0) == 0 || k == "logit_scale" || otherProjection) continue;
    out[k.rfind(prefix, 0) == 0 ? k.substr(prefix.size()) : k] = v;
  }
  return out;
}

}  // namespace


std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  WeightMap w(towerOf(std::move(weights), "text_model.", "vision_model.", "text_projection.weight"), "ClipTextEncoder", source);
  w.drop("embeddings.position_ids");
  auto m = std::make_shared<Model>();
  m->cfg = c;
  const int64_t H = c.hidden, I = c.intermediate;
  m->tokenEmbed = w.take("embeddings.token_embedding.weight", {c.vocab, H});
  m->posEmbed = w.take("embeddings.position_embedding.weight", {c.maxPositions, H});
  for (int64_t i = 0; i < c.layers; ++i) m->layers.push_back(takeLayer(w, "encoder.layers." + std::to_string(i) + ".", H, I));
  m->finalW = w.take("final_layer_norm.weight", {H});
  m->finalB = w.take("final_layer_norm.bias", {H});
  if (c.projectionDim > 0) m->projection = w.take("text_projection.weight", {c.projectionDim, H});
  w.finish();
  return m;
}

Outputs forward(const Model& m, const Inputs& in) {
  const auto& c = m.cfg;
  if (in.ids.dim() != 2 || at::isFloatingType(in.ids.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "ClipTextEncoder.forward: inputIds must be integer ids [B, S], found " +
                                   dtypeName(in.ids.scalar_type()) + " " + shapeString(in.ids.sizes()));
  const int64_t B = in.ids.size(0), S = in.ids.size(1), H = c.hidden;
  if (S > c.maxPositions)
    fail("ERR_SHAPE_MISMATCH", "ClipTextEncoder.forward: " + std::to_string(S) + " tokens, at most " + std::to_string(c.maxPositions));
  const auto dev = m.tokenEmbed.device();
  SideStream side(dev, "clip");  // beside T5 and the MLLM
  at::Tensor ids = in.ids.to(dev, at::kLong);
  if (ids.numel() && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= c.vocab))
    fail("ERR_INVALID_ARG", "ClipTextEncoder.forward: token ids must be in [0, " + std::to_string(c.vocab) + ")");
  Outputs out;
  out.hidden = at::empty({B, c.layers + 1, S, H}, m.tokenEmbed.options());
  at::Tensor x = at::embedding(m.tokenEmbed, ids) + m.posEmbed.narrow(0, 0, S);
  for (int64_t i = 0; i < c.layers; ++i) {
    out.hidden.select(1, i).copy_(x);
    x = block(x, m.layers[size_t(i)], c.heads, c.eps, c.act, /*causal=*/true);
  }
  out.hidden.select(1, c.layers).copy_(x);  // the last entry is before the final norm (as transformers)
  out.last = at::layer_norm(x, {H}, m.finalW, m.finalB, c.eps);
  // pooled: the first EOS; legacy configs (eos_token_id 2) take the largest id's position
  at::Tensor pos = c.eosTokenId == 2 ? ids.argmax(-1) : (ids == c.eosTokenId).to(at::kInt).argmax(-1);
  out.pooled = out.last.index({at::arange(B, ids.options()), pos});
  if (m.projection.defined()) out.embeds = at::linear(out.pooled, m.projection);
  side.finish({&out.last, &out.pooled, &out.hidden, &out.embeds});
  return out;
}

std::shared_ptr<VisionModel> loadVision(const VisionConfig& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  WeightMap w(towerOf(std::move(weights), "vision_model.", "text_model.", "visual_projection.weight"), "ClipVisionEncoder", source);
  w.drop("embeddings.position_ids");
  auto m = std::make_shared<VisionModel>();
  m->cfg = c;
  const int64_t H = c.hidden, I = c.intermediate, P = (c.imageSize / c.patchSize) * (c.imageSize / c.patchSize);
  m->patchW = w.take("embeddings.patch_embedding.weight", {H, c.channels, c.patchSize, c.patchSize});
  m->classEmbed = w.take("embeddings.class_embedding", {H});
  m->posEmbed = w.take("embeddings.position_embedding.weight", {P + 1, H});
  m->preW = w.take("pre_layrnorm.weight", {H});  // transformers' spelling
  m->preB = w.take("pre_layrnorm.bias", {H});
  for (int64_t i = 0; i < c.layers; ++i) m->layers.push_back(takeLayer(w, "encoder.layers." + std::to_string(i) + ".", H, I));
  m->postW = w.take("post_layernorm.weight", {H});
  m->postB = w.take("post_layernorm.bias", {H});
  if (c.projectionDim > 0) m->projection = w.take("visual_projection.weight", {c.projectionDim, H});
  w.finish();
  return m;
}

VisionOutputs forwardVision(const VisionModel& m, const at::Tensor& pixelValues) {
  const auto& c = m.cfg;
  if (pixelValues.dim() != 4 || pixelValues.size(1) != c.channels || pixelValues.size(2) != c.imageSize ||
      pixelValues.size(3) != c.imageSize || !at::isFloatingType(pixelValues.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "ClipVisionEncoder.forward: pixelValues must be floating [B, " + std::to_string(c.channels) + ", " +
                                   std::to_string(c.imageSize) + ", " + std::to_string(c.imageSize) + "], found " +
                                   dtypeName(pixelValues.scalar_type()) + " " + shapeString(pixelValues.sizes()));
  const int64_t B = pixelValues.size(0), H = c.hidden;
  at::Tensor px = pixelValues.to(m.patchW.device(), m.patchW.scalar_type());
  at::Tensor patches = at::conv2d(px, m.patchW, {}, c.patchSize).flatten(2).transpose(1, 2);  // [B, P, H]
  at::Tensor x = at::cat({m.classEmbed.view({1, 1, H}).expand({B, 1, H}), patches}, 1) + m.posEmbed;
  x = at::layer_norm(x, {H}, m.preW, m.preB, c.eps);
  for (const Layer& l : m.layers) x = block(x, l, c.heads, c.eps, c.act, /*causal=*/false);
  VisionOutputs out;
  out.last = x;
  out.pooled = at::layer_norm(x.select(1, 0), {H}, m.postW, m.postB, c.eps);
  if (m.projection.defined()) out.embeds = at::linear(out.pooled, m.projection);
  syncDevice(out.last);
  return out;
}


}  // namespace x2i::clip
