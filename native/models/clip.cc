// CLIP text encoder (FLUX's text_encoder, as transformers' CLIPTextModel): token + position embeddings,
// pre-LN blocks with causal attention and quick-GELU MLPs, final LayerNorm; the pooled output is the final
// hidden state at the first EOS (or, for configs with eos_token_id 2, at the largest id, as transformers does).
#include "models/clip.h"

namespace x2i::clip {


std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  // transformers ≥ 5 writes the text tower without the `text_model.` prefix: accept both
  std::map<std::string, at::Tensor> w0;
  for (auto& [k, v] : weights) w0[k.rfind("text_model.", 0) == 0 ? k.substr(11) : k] = v;
  WeightMap w(std::move(w0), "ClipTextEncoder", source);
  w.drop("embeddings.position_ids");
  auto m = std::make_shared<Model>();
  m->cfg = c;
  const int64_t H = c.hidden, I = c.intermediate;
  m->tokenEmbed = w.take("embeddings.token_embedding.weight", {c.vocab, H});
  m->posEmbed = w.take("embeddings.position_embedding.weight", {c.maxPositions, H});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "encoder.layers." + std::to_string(i) + ".";
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
    m->layers.push_back(std::move(l));
  }
  m->finalW = w.take("final_layer_norm.weight", {H});
  m->finalB = w.take("final_layer_norm.bias", {H});
  w.finish();
  return m;
}


Outputs forward(const Model& m, const Inputs& in) {
  const auto& c = m.cfg;
  if (in.ids.dim() != 2 || at::isFloatingType(in.ids.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "ClipTextEncoder.forward: inputIds must be integer ids [B, S], found " +
                                   dtypeName(in.ids.scalar_type()) + " " + shapeString(in.ids.sizes()));
  const int64_t B = in.ids.size(0), S = in.ids.size(1), H = c.hidden, hd = H / c.heads;
  if (S > c.maxPositions)
    fail("ERR_SHAPE_MISMATCH", "ClipTextEncoder.forward: " + std::to_string(S) + " tokens, at most " + std::to_string(c.maxPositions));
  const auto dev = m.tokenEmbed.device();
  at::Tensor ids = in.ids.to(dev, at::kLong);
  if (ids.numel() && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= c.vocab))
    fail("ERR_INVALID_ARG", "ClipTextEncoder.forward: token ids must be in [0, " + std::to_string(c.vocab) + ")");
  Outputs out;
  out.hidden = at::empty({B, c.layers + 1, S, H}, m.tokenEmbed.options());
  at::Tensor x = at::embedding(m.tokenEmbed, ids) + m.posEmbed.narrow(0, 0, S);
  for (int64_t i = 0; i < c.layers; ++i) {
    out.hidden.select(1, i).copy_(x);
    const Layer& l = m.layers[size_t(i)];
    at::Tensor h = at::layer_norm(x, {H}, l.ln1w, l.ln1b, c.eps);
    auto heads = [&](const at::Tensor& w, const at::Tensor& b) { return at::linear(h, w, b).view({B, S, c.heads, hd}).transpose(1, 2); };
    at::Tensor a = at::scaled_dot_product_attention(heads(l.qw, l.qb), heads(l.kw, l.kb), heads(l.vw, l.vb), {}, 0.0, /*is_causal=*/true);
    x = x + at::linear(a.transpose(1, 2).reshape({B, S, H}), l.ow, l.ob);
    h = at::linear(at::layer_norm(x, {H}, l.ln2w, l.ln2b, c.eps), l.fc1w, l.fc1b);
    h = c.act == "quick_gelu" ? h * at::sigmoid(1.702 * h) : at::gelu(h);
    x = x + at::linear(h, l.fc2w, l.fc2b);
  }
  out.hidden.select(1, c.layers).copy_(x);  // the last entry is before the final norm (as transformers)
  out.last = at::layer_norm(x, {H}, m.finalW, m.finalB, c.eps);
  // pooled: the first EOS; legacy configs (eos_token_id 2) take the largest id's position
  at::Tensor pos = c.eosTokenId == 2 ? ids.argmax(-1) : (ids == c.eosTokenId).to(at::kInt).argmax(-1);
  out.pooled = out.last.index({at::arange(B, ids.options()), pos});
  syncDevice(out.last);
  return out;
}


}  // namespace x2i::clip
