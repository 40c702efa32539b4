// MiniCPM-o 2.6 as X2I runs it (modeling_minicpmo.py's get_vllm_embedding, get_audio_embedding and
// get_omni_embedding, then `llm` on the merged embeddings with every hidden state returned):
//   vision: SigLIP NaViT on each slice's patch strip (positions bucketised onto the checkpoint's
//     image_size/patch grid), post_layernorm; the resampler: learned queries attend to the projected patches with a
//     2-D sin-cos position added to the keys (nn.MultiheadAttention), ln_post, @ proj; the queries fill image_bound.
//   audio: Whisper's encoder (conv1 + GELU, conv2 stride 2 + GELU, learned positions, pre-LN layers, final
//     LayerNorm) under an additive mask — keys at positions ≥ the mel length (as the reference compares them), and
//     outside the query's 50-frame chunk and those before it — then Linear, ReLU, Linear, average pooling by
//     poolStep; each audio's first N tokens, in order, fill audio_bounds.
#include "models/minicpm.h"
#include "core/weights.h"

#include <cmath>
#include <limits>

namespace x2i::minicpm {
namespace {

at::Tensor ln(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  return at::layer_norm(x, {x.size(-1)}, w, b, eps);
}

// multi-head attention of q [B, Lq, D] over k, v [B, Lk, D] (already projected), additive mask or none
at::Tensor heads(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t h, const at::Tensor& mask = {}) {
  const int64_t B = q.size(0), Lq = q.size(1), Lk = k.size(1), D = q.size(2), hd = D / h;
  auto split = [&](const at::Tensor& t, int64_t L) { return t.view({B, L, h, hd}).transpose(1, 2); };
  at::Tensor o = mask.defined() ? at::scaled_dot_product_attention(split(q, Lq), split(k, Lk), split(v, Lk), mask)
                                 : at::scaled_dot_product_attention(split(q, Lq), split(k, Lk), split(v, Lk));
  return o.transpose(1, 2).reshape({B, Lq, D});
}

// ---------------------------------------------------------------- vision: SigLIP NaViT + resampler
// position ids of a slice's h×w patches on the checkpoint's g×g table (the reference's bucketize)
at::Tensor patchPositions(int64_t h, int64_t w, int64_t g, const c10::Device& dev) {
  const at::Tensor bounds = at::arange(1.0 / double(g), 1.0, 1.0 / double(g), at::kFloat);
  const at::Tensor fh = at::arange(0.0, 1.0 - 1e-6, 1.0 / double(h), at::kFloat), fw = at::arange(0.0, 1.0 - 1e-6, 1.0 / double(w), at::kFloat);
  const at::Tensor bh = at::bucketize(fh, bounds, false, true), bw = at::bucketize(fw, bounds, false, true);
  return (bh.unsqueeze(1) * g + bw.unsqueeze(0)).flatten().to(dev);
}

at::Tensor sliceFeatures(const Model& m, const at::Tensor& strip, int64_t h, int64_t w) {
  const auto& v = m.cfg.vcfg;
  at::Tensor x = at::conv2d(strip.unsqueeze(0), m.patchW, m.patchB, v.patch).flatten(2).transpose(1, 2);  // [1, n, C]
  x = x + at::embedding(m.posEmbed, patchPositions(h, w, v.imageSize / v.patch, x.device())).unsqueeze(0);
  for (const auto& l : m.vlayers) {
    const at::Tensor a = ln(x, l.ln1W, l.ln1B, v.eps);
    x = x + at::linear(heads(at::linear(a, l.qW, l.qB), at::linear(a, l.kW, l.kB), at::linear(a, l.vW, l.vB), v.heads), l.oW, l.oB);
    x = x + at::linear(at::gelu(at::linear(ln(x, l.ln2W, l.ln2B, v.eps), l.fc1W, l.fc1B), "tanh"), l.fc2W, l.fc2B);
  }
  return ln(x, m.postW, m.postB, v.eps);  // [1, n, C]
}

// get_2d_sincos_pos_embed for an h×w grid: [h·w, E] = cat(sincos(col), sincos(row)), each half sin then cos
at::Tensor sincos2d(int64_t E, int64_t h, int64_t w, const at::TensorOptions& o) {
  const int64_t q = E / 4;
  const at::Tensor omega = 1.0 / at::pow(10000.0, at::arange(q, at::kDouble) / double(q));
  auto one = [&](const at::Tensor& pos) {
    const at::Tensor out = pos.unsqueeze(-1) * omega;  // [h, w, q]
    return at::cat({at::sin(out), at::cos(out)}, -1);
  };
  const at::Tensor rows = at::arange(h, at::kDouble).unsqueeze(1).expand({h, w}), cols = at::arange(w, at::kDouble).unsqueeze(0).expand({h, w});
  return at::cat({one(cols), one(rows)}, -1).reshape({h * w, E}).to(o);
}

at::Tensor resample(const Model& m, const at::Tensor& x, int64_t h, int64_t w) {
  const int64_t E = m.query.size(1), nh = std::max<int64_t>(E / 128, 1);
  const at::Tensor kv = ln(at::linear(x, m.kvProj), m.lnKvW, m.lnKvB, 1e-6);  // [1, n, E]
  const at::Tensor q = ln(m.query, m.lnQW, m.lnQB, 1e-6).unsqueeze(0);         // [1, Q, E]
  const auto W = m.inProjW.chunk(3, 0), b = m.inProjB.chunk(3, 0);
  const at::Tensor pos = sincos2d(E, h, w, kv.options()).unsqueeze(0);
  at::Tensor o = heads(at::linear(q, W[0], b[0]), at::linear(kv + pos, W[1], b[1]), at::linear(kv, W[2], b[2]), nh);
  o = ln(at::linear(o, m.outW, m.outB), m.lnPostW, m.lnPostB, 1e-6);
  return at::matmul(o, m.proj).squeeze(0);  // [Q, E]
}

// ---------------------------------------------------------------- audio: Whisper encoder + projection + pooling
at::Tensor whisper(const Model& m, const at::Tensor& feats, const at::Tensor& lens) {
  const auto& a = m.cfg.acfg;
  at::Tensor x = at::gelu(at::conv1d(feats, m.conv1W, m.conv1B, 1, 1));
  x = at::gelu(at::conv1d(x, m.conv2W, m.conv2B, 2, 1)).transpose(1, 2);  // [B, C, d]
  const int64_t B = x.size(0), C = x.size(1);
  if (C > m.audioPos.size(0))
    fail("ERR_SHAPE_MISMATCH", "MiniCPMOEncoder: " + std::to_string(feats.size(2)) + " mel frames give " + std::to_string(C) +
                                   " positions, more than the encoder's " + std::to_string(m.audioPos.size(0)) + " (30 s)");
  x = x + m.audioPos.narrow(0, 0, C).unsqueeze(0);
  // masked keys: position ≥ the audio's mel length (the reference compares post-conv positions with mel lengths),
  // or beyond the end of the query's chunk
  const int64_t chunk = int64_t(m.cfg.chunkLength * 50);
  const at::Tensor pos = at::arange(C, at::TensorOptions().dtype(at::kLong).device(x.device()));
  at::Tensor hide = pos.view({1, 1, C}) >= lens.to(x.device(), at::kLong).view({B, 1, 1});  // [B, 1(q), C(k)]
  if (chunk > 0) hide = hide | (pos.view({1, C, 1}).div(chunk, "floor").add(1).mul(chunk) <= pos.view({1, 1, C}));
  const at::Tensor mask = at::zeros({B, 1, C, C}, x.options()).masked_fill(hide.unsqueeze(1), -std::numeric_limits<double>::infinity());
  for (const auto& l : m.alayers) {
    const at::Tensor h = ln(x, l.lnW, l.lnB, 1e-5);
    x = x + at::linear(heads(at::linear(h, l.qW, l.qB), at::linear(h, l.kW), at::linear(h, l.vW, l.vB), a.heads, mask), l.oW, l.oB);
    x = x + at::linear(at::gelu(at::linear(ln(x, l.ln2W, l.ln2B, 1e-5), l.fc1W, l.fc1B)), l.fc2W, l.fc2B);
  }
  return ln(x, m.audioLnW, m.audioLnB, 1e-5);  // [B, C, d]
}

}  // namespace

std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  std::map<std::string, at::Tensor> llm, rest;
  for (auto& [k, t] : weights) {
    if (k.rfind("llm.", 0) == 0) llm[k.substr(4)] = t;
    else if (k.rfind("tts.", 0) != 0) rest[k] = t;  // the speech decoder is not X2I's
  }
  WeightMap w(std::move(rest), "MiniCPMOEncoder", source);
  auto m = std::make_shared<Model>();
  m->cfg = c;
  const int64_t H = c.llm.text.hidden;
  auto norm = [&](const std::string& n, int64_t d) {
    at::Tensor weight = w.take(n + ".weight", {d});
    return std::make_pair(weight, w.take(n + ".bias", {d}));
  };
  if (c.vision) {
    const auto& v = c.vcfg;
    const int64_t D = v.hidden, g = v.imageSize / v.patch;
    m->patchW = w.take("vpm.embeddings.patch_embedding.weight", {D, v.channels, v.patch, v.patch});
    m->patchB = w.take("vpm.embeddings.patch_embedding.bias", {D});
    m->posEmbed = w.take("vpm.embeddings.position_embedding.weight", {g * g, D});
    for (int64_t i = 0; i < v.layers; ++i) {
      const std::string p = "vpm.encoder.layers." + std::to_string(i) + ".";
      SiglipLayer l;
      std::tie(l.ln1W, l.ln1B) = norm(p + "layer_norm1", D);
      std::tie(l.qW, l.qB) = w.linear(p + "self_attn.q_proj", D, D);
      std::tie(l.kW, l.kB) = w.linear(p + "self_attn.k_proj", D, D);
      std::tie(l.vW, l.vB) = w.linear(p + "self_attn.v_proj", D, D);
      std::tie(l.oW, l.oB) = w.linear(p + "self_attn.out_proj", D, D);
      std::tie(l.ln2W, l.ln2B) = norm(p + "layer_norm2", D);
      std::tie(l.fc1W, l.fc1B) = w.linear(p + "mlp.fc1", v.intermediate, D);
      std::tie(l.fc2W, l.fc2B) = w.linear(p + "mlp.fc2", D, v.intermediate);
      m->vlayers.push_back(std::move(l));
    }
    std::tie(m->postW, m->postB) = norm("vpm.post_layernorm", D);
    m->query = w.take("resampler.query", {c.queryNum, H});
    m->kvProj = w.take("resampler.kv_proj.weight", {H, D});
    m->inProjW = w.take("resampler.attn.in_proj_weight", {3 * H, H});
    m->inProjB = w.take("resampler.attn.in_proj_bias", {3 * H});
    std::tie(m->outW, m->outB) = w.linear("resampler.attn.out_proj", H, H);
    std::tie(m->lnQW, m->lnQB) = norm("resampler.ln_q", H);
    std::tie(m->lnKvW, m->lnKvB) = norm("resampler.ln_kv", H);
    std::tie(m->lnPostW, m->lnPostB) = norm("resampler.ln_post", H);
    m->proj = w.take("resampler.proj", {H, H});
  }
  if (c.audio) {
    const auto& a = c.acfg;
    const int64_t d = a.dModel;
    m->conv1W = w.take("apm.conv1.weight", {d, a.mels, 3});
    m->conv1B = w.take("apm.conv1.bias", {d});
    m->conv2W = w.take("apm.conv2.weight", {d, d, 3});
    m->conv2B = w.take("apm.conv2.bias", {d});
    m->audioPos = w.take("apm.embed_positions.weight", {a.maxPositions, d});
    for (int64_t i = 0; i < a.layers; ++i) {
      const std::string p = "apm.layers." + std::to_string(i) + ".";
      WhisperLayer l;
      std::tie(l.lnW, l.lnB) = norm(p + "self_attn_layer_norm", d);
      std::tie(l.qW, l.qB) = w.linear(p + "self_attn.q_proj", d, d);
      l.kW = w.take(p + "self_attn.k_proj.weight", {d, d});  // Whisper's k_proj has no bias
      std::tie(l.vW, l.vB) = w.linear(p + "self_attn.v_proj", d, d);
      std::tie(l.oW, l.oB) = w.linear(p + "self_attn.out_proj", d, d);
      std::tie(l.ln2W, l.ln2B) = norm(p + "final_layer_norm", d);
      std::tie(l.fc1W, l.fc1B) = w.linear(p + "fc1", a.ffn, d);
      std::tie(l.fc2W, l.fc2B) = w.linear(p + "fc2", d, a.ffn);
      m->alayers.push_back(std::move(l));
    }
    std::tie(m->audioLnW, m->audioLnB) = norm("apm.layer_norm", d);
    std::tie(m->proj1W, m->proj1B) = w.linear("audio_projection_layer.linear1", H, a.ffn / 4);
    std::tie(m->proj2W, m->proj2B) = w.linear("audio_projection_layer.linear2", H, H);
    if (a.ffn / 4 != d)
      fail("ERR_CONFIG", "MiniCPMOEncoder (" + source + "): the audio projection reads encoder_ffn_dim / 4 = " +
                             std::to_string(a.ffn / 4) + " channels but d_model is " + std::to_string(d));
  }
  w.finish();
  qwen::FullConfig lc = c.llm;
  lc.vision.present = false;
  m->llm = qwen::load(lc, std::move(llm), source);
  return m;
}

at::Tensor imageEmbeds(const Model& m, const std::vector<at::Tensor>& pixelValues, const at::Tensor& tgtSizes) {
  if (!m.cfg.vision) fail("ERR_NOT_SUPPORTED", "MiniCPMOEncoder: this checkpoint has no vision tower (init_vision false)");
  const auto& v = m.cfg.vcfg;
  const int64_t n = int64_t(pixelValues.size());
  if (!tgtSizes.defined() || tgtSizes.dim() != 2 || tgtSizes.size(0) != n || tgtSizes.size(1) != 2)
    fail("ERR_SHAPE_MISMATCH", "MiniCPMOEncoder: tgtSizes must be [" + std::to_string(n) + ", 2] (one patch grid per slice), found " +
                                   (tgtSizes.defined() ? shapeString(tgtSizes.sizes()) : std::string("(none)")));
  const at::Tensor tg = tgtSizes.to(at::kCPU, at::kLong).contiguous();
  const auto dev = m.patchW.device();
  const auto dt = m.patchW.scalar_type();
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = tg[i][0].item<int64_t>(), w = tg[i][1].item<int64_t>();
    const at::Tensor& px = pixelValues[size_t(i)];
    if (h < 1 || w < 1 || !px.defined() || px.dim() != 3 || px.size(0) != v.channels || px.size(1) != v.patch ||
        px.size(2) != h * w * v.patch)
      fail("ERR_SHAPE_MISMATCH", "MiniCPMOEncoder: slice " + std::to_string(i) + " has pixel values " +
                                     (px.defined() ? shapeString(px.sizes()) : std::string("(none)")) + " for a " + std::to_string(h) +
                                     "×" + std::to_string(w) + " patch grid, expected [" + std::to_string(v.channels) + ", " +
                                     std::to_string(v.patch) + ", " + std::to_string(h * w * v.patch) + "]");
    out.push_back(resample(m, sliceFeatures(m, px.to(dev, dt), h, w), h, w));
  }
  return at::stack(out, 0);  // [n, Q, H]
}

at::Tensor audioEmbeds(const Model& m, const at::Tensor& features, const at::Tensor& lens) {
  if (!m.cfg.audio) fail("ERR_NOT_SUPPORTED", "MiniCPMOEncoder: this checkpoint has no audio tower (init_audio false)");
  const auto& a = m.cfg.acfg;
  if (!features.defined() || features.dim() != 3 || features.size(1) != a.mels || features.size(0) == 0 || features.size(2) == 0)
    fail("ERR_SHAPE_MISMATCH", "MiniCPMOEncoder: audioFeatures must be [n, " + std::to_string(a.mels) + ", T], found " +
                                   (features.defined() ? shapeString(features.sizes()) : std::string("(none)")));
  const int64_t B = features.size(0);
  at::Tensor L = lens.defined() ? lens.to(at::kCPU, at::kLong).reshape({-1}) : at::full({B}, features.size(2), at::kLong);
  if (L.size(0) != B || L.min().item<int64_t>() < 1 || L.max().item<int64_t>() > features.size(2))
    fail("ERR_SHAPE_MISMATCH", "MiniCPMOEncoder: audioFeatureLens must hold " + std::to_string(B) + " frame counts in [1, " +
                                   std::to_string(features.size(2)) + "]");
  const auto dev = m.conv1W.device();
  const at::Tensor states = whisper(m, features.to(dev, m.conv1W.scalar_type()), L);
  at::Tensor e = at::linear(at::relu(at::linear(states, m.proj1W, m.proj1B)), m.proj2W, m.proj2B);       // [B, C, H]
  e = at::avg_pool1d(e.transpose(1, 2), {m.cfg.poolStep}, {m.cfg.poolStep}).transpose(1, 2);             // [B, C/p, H]
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t cnn = (L[i].item<int64_t>() - 1) / 2 + 1, n = (cnn - m.cfg.poolStep) / m.cfg.poolStep + 1;
    out.push_back(e[i].narrow(0, 0, std::min(n, e.size(1))));
  }
  return at::cat(out, 0);
}

Outputs forward(const Model& m, const Inputs& in) {
  if (in.only == "image") return Outputs{imageEmbeds(m, in.pixelValues, in.tgtSizes), {}, {}};
  if (in.only == "audio") return Outputs{audioEmbeds(m, in.audioFeatures, in.audioFeatureLens), {}, {}};
  qwen::Inputs q;
  // positions cumsum(mask) − 1, right pads at 1 (the reference's generate); 0..S−1 without padding
  q.ids = in.ids, q.mask = in.mask, q.capture = in.capture, q.positions = "sequential", q.padRule = "x2i";
  const int64_t S = in.ids.dim() == 2 ? in.ids.size(1) : 0;
  std::vector<at::Tensor> feats, rows;
  auto spans = [&](const at::Tensor& bounds, const at::Tensor& f, const char* what) {
    if (!bounds.defined() || bounds.dim() != 2 || bounds.size(1) != 2)
      fail("ERR_SHAPE_MISMATCH", std::string("MiniCPMOEncoder.forward: ") + what + " bounds must be [n, 2] token spans");
    if (in.ids.size(0) != 1) fail("ERR_NOT_SUPPORTED", "MiniCPMOEncoder.forward: image and audio spans need one prompt (inputIds [1, S])");
    const at::Tensor b = bounds.to(at::kCPU, at::kLong).contiguous();
    int64_t total = 0;
    for (int64_t i = 0; i < b.size(0); ++i) {
      const int64_t s = b[i][0].item<int64_t>(), e = b[i][1].item<int64_t>();
      if (s < 0 || e < s || e > S)
        fail("ERR_INVALID_ARG", std::string("MiniCPMOEncoder.forward: ") + what + " span [" + std::to_string(s) + ", " + std::to_string(e) +
                                    ") is not inside the " + std::to_string(S) + " tokens");
      rows.push_back(at::arange(s, e, at::kLong));
      total += e - s;
    }
    if (total != f.size(0))
      fail("ERR_SHAPE_MISMATCH", std::string("MiniCPMOEncoder.forward: ") + std::to_string(f.size(0)) + " " + what + " features for " +
                                     std::to_string(total) + " tokens in its spans");
    feats.push_back(f);
  };
  if (!in.pixelValues.empty()) {
    const at::Tensor e = imageEmbeds(m, in.pixelValues, in.tgtSizes);
    spans(in.imageBound, e.reshape({-1, e.size(-1)}), "image");
  }
  if (in.audioFeatures.defined()) spans(in.audioBounds, audioEmbeds(m, in.audioFeatures, in.audioFeatureLens), "audio");
  if (!feats.empty()) {
    q.embeds = at::cat(feats, 0);
    q.embedsRows = at::cat(rows, 0);
  }
  return qwen::forward(*m.llm, q);
}

}  // namespace x2i::minicpm
