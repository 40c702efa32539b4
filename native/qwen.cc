// Qwen2.5-VL's language model as X2I's encoder (shared/docs/encoders-spec.md §1): one prefill that writes the
// embeddings and every layer's output (the last after the final RMSNorm) straight into a preallocated
// [B, L+1, S, H] buffer — AlignNet's input. GQA attention with q/k/v biases, SwiGLU, RMSNorm, M-RoPE
// (half-split rotation; the temporal/height/width sections of the 128 channels), no lm_head.
// Left padding follows the rule under which X2I computed its AlignNet inputs (transformers 4.49, SDPA on
// CUDA): pads take position 1, and a query row with no visible key (every left pad) attends to all keys.
#include "qwen.h"

#include <limits>

namespace x2i::qwen {
namespace {

at::Tensor rmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::promote_types(at::kFloat, x.scalar_type()));
  return (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type()) * w;
}

at::Tensor rotateHalf(const at::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// cos, sin [B, 1, S, hd] from position ids P [3, B, S]: channel chunks (mrope_section, twice) take the
// temporal, height and width ids in turn.
std::pair<at::Tensor, at::Tensor> mrope(const Config& c, const at::Tensor& P, at::ScalarType dt) {
  const int64_t hd = c.hidden / c.heads;
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(P.device());
  at::Tensor invFreq = 1.0 / at::pow(c.theta, at::arange(0, hd, 2, f32) / double(hd));  // [hd/2]
  at::Tensor freqs = P.to(at::kFloat).unsqueeze(-1) * invFreq;                          // [3, B, S, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                                         // [3, B, S, hd]
  std::vector<at::Tensor> parts;
  int64_t off = 0;
  for (int rep = 0; rep < 2; ++rep)
    for (int a = 0; a < 3; ++a) {
      parts.push_back(emb[a].narrow(-1, off, c.mropeSection[size_t(a)]));
      off += c.mropeSection[size_t(a)];
    }
  at::Tensor sel = at::cat(parts, -1).unsqueeze(1);  // [B, 1, S, hd]
  return {at::cos(sel).to(dt), at::sin(sel).to(dt)};
}

}  // namespace

Config Model::parseConfig(const Napi::Object& o) {
  Config c;
  const char* n = "QwenVLEncoder";
  c.vocab = configInt(o, "vocabSize", n);
  c.hidden = configInt(o, "hiddenSize", n);
  c.intermediate = configInt(o, "intermediateSize", n);
  c.layers = configInt(o, "numHiddenLayers", n);
  c.heads = configInt(o, "numAttentionHeads", n);
  c.kvHeads = configInt(o, "numKeyValueHeads", n);
  c.eps = o.Get("rmsNormEps").As<Napi::Number>().DoubleValue();
  c.theta = o.Get("ropeTheta").As<Napi::Number>().DoubleValue();
  auto s = o.Get("mropeSection").As<Napi::Array>();
  if (s.Length() != 3) fail("ERR_CONFIG", "QwenVLEncoder config: mrope_section must have 3 entries");
  for (uint32_t i = 0; i < 3; ++i) c.mropeSection[i] = Napi::Value(s[i]).As<Napi::Number>().Int64Value();
  if (c.hidden % c.heads || c.heads % c.kvHeads)
    fail("ERR_CONFIG", "QwenVLEncoder config: hidden_size, num_attention_heads and num_key_value_heads do not divide");
  if (2 * (c.mropeSection[0] + c.mropeSection[1] + c.mropeSection[2]) != c.hidden / c.heads)
    fail("ERR_CONFIG", "QwenVLEncoder config: 2 × sum(mrope_section) must equal the head dim " + std::to_string(c.hidden / c.heads));
  return c;
}

std::shared_ptr<Model> Model::load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  // released names (model.layers.*, visual.*, lm_head), and the model.language_model.* / model.visual.* re-saves
  std::map<std::string, at::Tensor> w0;
  for (auto& [k, v] : weights) {
    std::string n = k;
    if (n.rfind("model.language_model.", 0) == 0) n = "model." + n.substr(21);
    else if (n.rfind("model.visual.", 0) == 0) n = "visual." + n.substr(13);
    if (n.rfind("visual.", 0) == 0 || n == "lm_head.weight") continue;  // the vision tower is not used by text prompts
    w0[n] = v;
  }
  WeightMap w(std::move(w0), "QwenVLEncoder", source);
  auto m = std::make_shared<Model>();
  m->cfg = c;
  const int64_t H = c.hidden, kv = c.kvHeads * (H / c.heads), I = c.intermediate;
  m->embed = w.take("model.embed_tokens.weight", {c.vocab, H});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer l;
    l.inLn = w.take(p + "input_layernorm.weight", {H});
    l.qw = w.take(p + "self_attn.q_proj.weight", {H, H});
    l.qb = w.take(p + "self_attn.q_proj.bias", {H});
    l.kw = w.take(p + "self_attn.k_proj.weight", {kv, H});
    l.kb = w.take(p + "self_attn.k_proj.bias", {kv});
    l.vw = w.take(p + "self_attn.v_proj.weight", {kv, H});
    l.vb = w.take(p + "self_attn.v_proj.bias", {kv});
    l.ow = w.take(p + "self_attn.o_proj.weight", {H, H});
    l.postLn = w.take(p + "post_attention_layernorm.weight", {H});
    l.gate = w.take(p + "mlp.gate_proj.weight", {I, H});
    l.up = w.take(p + "mlp.up_proj.weight", {I, H});
    l.down = w.take(p + "mlp.down_proj.weight", {H, I});
    m->layers.push_back(std::move(l));
  }
  m->norm = w.take("model.norm.weight", {H});
  w.finish();
  return m;
}

Inputs Model::parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "QwenVLEncoder.forward expects { inputIds, attentionMask? }");
  auto o = info[0].As<Napi::Object>();
  Inputs in;
  in.ids = TensorWrap::Get(o.Get("inputIds"), "inputIds");
  if (!o.Get("attentionMask").IsUndefined() && !o.Get("attentionMask").IsNull())
    in.mask = TensorWrap::Get(o.Get("attentionMask"), "attentionMask");
  in.padRule = o.Get("padRule").IsString() ? o.Get("padRule").ToString().Utf8Value() : "x2i";
  if (in.padRule != "x2i" && in.padRule != "mask")
    fail("ERR_INVALID_ARG", "QwenVLEncoder.forward: padRule must be 'x2i' or 'mask'");
  return in;
}

Outputs Model::run(const Model& m, const Inputs& in) {
  const auto& c = m.cfg;
  if (in.ids.dim() != 2 || at::isFloatingType(in.ids.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: inputIds must be integer ids [B, S], found " +
                                   dtypeName(in.ids.scalar_type()) + " " + shapeString(in.ids.sizes()));
  const int64_t B = in.ids.size(0), S = in.ids.size(1), H = c.hidden, hd = H / c.heads;
  const auto dev = m.embed.device();
  const auto dt = m.embed.scalar_type();
  at::Tensor ids = in.ids.to(dev, at::kLong);
  if (ids.numel() && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= c.vocab))
    fail("ERR_INVALID_ARG", "QwenVLEncoder.forward: token ids must be in [0, " + std::to_string(c.vocab) + ")");
  at::Tensor mask = in.mask.defined() ? in.mask.to(dev, at::kLong) : at::ones({B, S}, ids.options());
  if (mask.sizes() != ids.sizes())
    fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: attentionMask has shape " + shapeString(mask.sizes()) +
                                   ", expected " + shapeString(ids.sizes()));
  // text positions: cumsum(mask) − 1, pads at 1 (the same on all three M-RoPE axes)
  at::Tensor pos = at::where(mask == 1, mask.cumsum(-1) - 1, at::ones_like(mask));
  auto [cos, sin] = mrope(c, pos.unsqueeze(0).expand({3, B, S}), dt);
  // additive mask: causal and key padding; rows that see no key at all are unmasked (x2i rule)
  const auto f = at::TensorOptions().dtype(dt).device(dev);
  at::Tensor causal = at::ones({S, S}, f.dtype(at::kBool)).tril();
  at::Tensor visible = causal.unsqueeze(0) & (mask == 1).unsqueeze(1);  // [B, S(q), S(k)]
  // rows that see no key at all (every left pad): 'x2i' lets them attend to every key; 'mask' gives them a zero
  // attention output (what PyTorch's SDPA returns for a fully masked row, as transformers 5 relies on)
  const at::Tensor blind = ~visible.any(-1, true);  // [B, S, 1]
  visible = visible | blind;
  const double lowest = dt == at::kBFloat16 ? -3.3895313892515355e38 : dt == at::kHalf ? -65504.0
                                                                      : double(std::numeric_limits<float>::lowest());
  at::Tensor bias = at::zeros({B, 1, S, S}, f).masked_fill(~visible.unsqueeze(1), lowest);  // finfo(dtype).min
  Outputs out;
  out.hidden = at::empty({B, c.layers + 1, S, H}, m.embed.options());
  at::Tensor x = at::embedding(m.embed, ids);
  out.hidden.select(1, 0).copy_(x);
  const int64_t g = c.heads / c.kvHeads;
  for (int64_t i = 0; i < c.layers; ++i) {
    const Layer& l = m.layers[size_t(i)];
    at::Tensor h = rmsNorm(x, l.inLn, c.eps);
    at::Tensor q = at::linear(h, l.qw, l.qb).view({B, S, c.heads, hd}).transpose(1, 2);
    at::Tensor k = at::linear(h, l.kw, l.kb).view({B, S, c.kvHeads, hd}).transpose(1, 2);
    at::Tensor v = at::linear(h, l.vw, l.vb).view({B, S, c.kvHeads, hd}).transpose(1, 2);
    q = q * cos + rotateHalf(q) * sin;
    k = k * cos + rotateHalf(k) * sin;
    if (g > 1) k = k.repeat_interleave(g, 1), v = v.repeat_interleave(g, 1);
    at::Tensor a = at::scaled_dot_product_attention(q, k, v, bias);
    if (in.padRule == "mask") a = a.masked_fill(blind.unsqueeze(1), 0);
    x = x + at::linear(a.transpose(1, 2).reshape({B, S, H}), l.ow);
    h = rmsNorm(x, l.postLn, c.eps);
    x = x + at::linear(at::silu(at::linear(h, l.gate)) * at::linear(h, l.up), l.down);
    if (i + 1 < c.layers) out.hidden.select(1, i + 1).copy_(x);
  }
  out.hidden.select(1, c.layers).copy_(rmsNorm(x, m.norm, c.eps));  // the last entry after the final norm
  if (x.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(x.device().index());
  return out;
}

Napi::Value Model::toJs(Napi::Env env, Outputs& o) {
  auto r = Napi::Object::New(env);
  r.Set("hiddenStates", TensorWrap::Wrap(env, o.hidden));
  return r;
}

}  // namespace x2i::qwen
