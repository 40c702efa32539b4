// T5 v1.1 encoder (FLUX's text_encoder_2, as transformers' T5EncoderModel): RMS norms without mean or
// bias, unscaled attention with a relative-position bias computed once (block 0's table, shared by all
// blocks), gated-GELU (tanh) feed-forward. Hidden states of every layer are written into one preallocated
// [B, L+1, S, d] buffer. q, k and v are stacked at load into one weight, and so are wi_0 and wi_1: one GEMM each
// (at 512 tokens, T5-XXL's 4096-wide GEMMs alone fill half of an H100's SMs).
#include "models/t5.h"

#include "core/streams.h"

#include <cmath>

namespace x2i::t5 {
namespace {

// T5LayerNorm: normalise in float32 and round to the model dtype (at::rms_norm without a weight: one fused kernel
// where LibTorch has it), then the weight in the model dtype
at::Tensor rmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return at::rms_norm(x, {x.size(-1)}, std::nullopt, eps).to(w.scalar_type()) * w;
}

// Bidirectional relative-position buckets [S, S] as transformers computes them (float32 log, truncation).
at::Tensor buckets(int64_t S, int64_t numBuckets, int64_t maxDistance, c10::Device dev) {
  at::Tensor pos = at::arange(S, at::TensorOptions().dtype(at::kLong).device(dev));
  at::Tensor rel = pos.unsqueeze(0) - pos.unsqueeze(1);  // key − query
  const int64_t n = numBuckets / 2, maxExact = n / 2;
  at::Tensor ret = (rel > 0).to(at::kLong) * n;
  at::Tensor a = rel.abs();
  at::Tensor large = maxExact + (at::log(a.to(at::kFloat) / double(maxExact)) / std::log(double(maxDistance) / double(maxExact)) *
                                 double(n - maxExact)).to(at::kLong);
  large = at::minimum(large, at::full_like(large, n - 1));
  return ret + at::where(a < maxExact, a, large);
}

// softmax(q kᵀ + bias) v, unscaled, the softmax in float32 (transformers' T5Attention): SDPA would take its float32
// math path for the [1, heads, S, S] bias
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias) {
  const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) + bias;  // [B, heads, S, S]
  return at::matmul(at::softmax(scores, -1, at::promote_types(at::kFloat, scores.scalar_type())).to(v.scalar_type()), v);
}

}  // namespace


std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  auto m = std::make_shared<Model>();
  m->cfg = c;
  WeightMap w(std::move(weights), "T5Encoder", source);
  const int64_t inner = c.heads * c.dKv;
  m->embed = w.take(std::vector<std::string>{"shared.weight", "encoder.embed_tokens.weight"}, {c.vocab, c.dModel});
  w.drop("encoder.embed_tokens.weight");  // the tied alias, when both are stored
  w.drop("lm_head.weight");
  m->relBias = w.take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {c.buckets, c.heads});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "encoder.block." + std::to_string(i) + ".layer.";
    Layer l;
    l.ln0 = w.take(p + "0.layer_norm.weight", {c.dModel});
    l.qkv = at::cat({w.take(p + "0.SelfAttention.q.weight", {inner, c.dModel}), w.take(p + "0.SelfAttention.k.weight", {inner, c.dModel}),
                     w.take(p + "0.SelfAttention.v.weight", {inner, c.dModel})});
    l.o = w.take(p + "0.SelfAttention.o.weight", {c.dModel, inner});
    l.ln1 = w.take(p + "1.layer_norm.weight", {c.dModel});
    if (c.gated) {
      l.wi = at::cat({w.take(p + "1.DenseReluDense.wi_0.weight", {c.dFf, c.dModel}), w.take(p + "1.DenseReluDense.wi_1.weight", {c.dFf, c.dModel})});
    } else {
      l.wi = w.take(p + "1.DenseReluDense.wi.weight", {c.dFf, c.dModel});
    }
    l.wo = w.take(p + "1.DenseReluDense.wo.weight", {c.dModel, c.dFf});
    m->layers.push_back(std::move(l));
  }
  m->finalLn = w.take("encoder.final_layer_norm.weight", {c.dModel});
  w.finish();
  return m;
}


Outputs forward(const Model& m, const Inputs& in) {
  const auto& c = m.cfg;
  if (in.ids.dim() != 2 || at::isFloatingType(in.ids.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "T5Encoder.forward: inputIds must be integer ids [B, S], found " +
                                   dtypeName(in.ids.scalar_type()) + " " + shapeString(in.ids.sizes()));
  const int64_t B = in.ids.size(0), S = in.ids.size(1);
  const auto dev = m.embed.device();
  SideStream side(dev, "t5");  // beside CLIP and the MLLM
  at::Tensor ids = in.ids.to(dev, at::kLong);
  if (ids.numel() && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= c.vocab))
    fail("ERR_INVALID_ARG", "T5Encoder.forward: token ids must be in [0, " + std::to_string(c.vocab) + ")");
  // position bias [1, H, S, S] (+ the padding mask), computed once
  at::Tensor bias = at::embedding(m.relBias, buckets(S, c.buckets, c.maxDistance, dev)).permute({2, 0, 1}).unsqueeze(0);
  bias = bias.to(at::promote_types(at::kFloat, m.embed.scalar_type()));
  if (in.mask.defined()) {
    if (in.mask.sizes() != in.ids.sizes())
      fail("ERR_SHAPE_MISMATCH", "T5Encoder.forward: attentionMask has shape " + shapeString(in.mask.sizes()) +
                                     ", expected " + shapeString(in.ids.sizes()));
    at::Tensor keep = in.mask.to(dev).to(bias.scalar_type()).view({B, 1, 1, S});
    bias = bias + (1 - keep) * std::numeric_limits<float>::lowest();
  }
  bias = bias.to(m.embed.scalar_type());
  Outputs out;
  out.hidden = at::empty({B, c.layers + 1, S, c.dModel}, m.embed.options());
  at::Tensor x = at::embedding(m.embed, ids);
  out.hidden.select(1, 0).copy_(x);
  for (int64_t i = 0; i < c.layers; ++i) {
    const Layer& l = m.layers[size_t(i)];
    at::Tensor h = rmsNorm(x, l.ln0, c.eps);
    at::Tensor qkv = at::linear(h, l.qkv).view({B, S, 3, c.heads, c.dKv}).permute({2, 0, 3, 1, 4});  // [3, B, heads, S, dKv]
    at::Tensor a = attention(qkv[0], qkv[1], qkv[2], bias);
    x = x + at::linear(a.transpose(1, 2).reshape({B, S, c.heads * c.dKv}), l.o);
    h = rmsNorm(x, l.ln1, c.eps);
    at::Tensor f;
    if (c.gated) {
      at::Tensor gu = at::linear(h, l.wi);  // [B, S, 2·dFf]: the gate's and the up-projection's halves
      at::Tensor g = gu.narrow(-1, 0, c.dFf);
      g = c.act == "relu" ? at::relu(g) : at::gelu(g, c.act == "gelu" ? "none" : "tanh");
      f = g * gu.narrow(-1, c.dFf, c.dFf);
    } else {
      f = at::relu(at::linear(h, l.wi));
    }
    x = x + at::linear(f, l.wo);
    if (i + 1 < c.layers) out.hidden.select(1, i + 1).copy_(x);
  }
  out.last = rmsNorm(x, m.finalLn, c.eps);
  out.hidden.select(1, c.layers).copy_(out.last);  // the last entry is after the final norm
  side.finish({&out.last, &out.hidden});
  return out;
}


}  // namespace x2i::t5
