// Qwen2.5-VL's language model as X2I's encoder (as transformers' Qwen2_5_VLModel): one prefill that writes the
// embeddings and every layer's output (the last after the final RMSNorm) straight into a preallocated
// [B, L+1, S, H] buffer — AlignNet's input. GQA attention with q/k/v biases, SwiGLU, RMSNorm, M-RoPE
// (half-split rotation; the temporal/height/width sections of the 128 channels), no lm_head (except for the
// answer mode's greedy decoding, `decode`).
// Left padding follows the rule under which X2I computed its AlignNet inputs (transformers 4.49, SDPA on
// CUDA): pads take position 1, and a query row with no visible key (every left pad) attends to all keys.
#include "models/qwen.h"

#include "core/streams.h"

#include <algorithm>
#include <limits>
#include <tuple>

namespace x2i::qwen {
namespace {

// Qwen2RMSNorm: normalise in float32 and round to the model dtype (at::rms_norm without a weight: one fused kernel
// where LibTorch has it), then the weight in the model dtype.
at::Tensor rmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return at::rms_norm(x, {x.size(-1)}, std::nullopt, eps) * w;
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

// finfo(dtype).min: the additive mask of a hidden key
double lowestOf(at::ScalarType dt) {
  return dt == at::kBFloat16 ? -3.3895313892515355e38 : dt == at::kHalf ? -65504.0 : double(std::numeric_limits<float>::lowest());
}

// One decoder layer of x [B, S, H], in three parts shared by the prefill and the decoding: the attention inputs
// (q [B, heads, S, hd], rotated k and v [B, kvHeads, S, hd]); the residual update of attention over keys and
// values (GQA: kv heads repeated; rows in `zeroRows` [B, S, 1], if given, get a zero attention output); SwiGLU.
std::array<at::Tensor, 3> attentionInputs(const Config& c, const Layer& l, const at::Tensor& x, const at::Tensor& cos,
                                          const at::Tensor& sin) {
  const int64_t B = x.size(0), S = x.size(1), hd = c.hidden / c.heads;
  const at::Tensor h = rmsNorm(x, l.inLn, c.eps);
  const auto qkv = at::linear(h, l.qkvW, l.qkvB).split_with_sizes({c.heads * hd, c.kvHeads * hd, c.kvHeads * hd}, -1);
  at::Tensor q = qkv[0].view({B, S, c.heads, hd}).transpose(1, 2);
  at::Tensor k = qkv[1].view({B, S, c.kvHeads, hd}).transpose(1, 2);
  at::Tensor v = qkv[2].view({B, S, c.kvHeads, hd}).transpose(1, 2);
  return {q * cos + rotateHalf(q) * sin, k * cos + rotateHalf(k) * sin, v};
}
at::Tensor attention(const Config& c, const Layer& l, const at::Tensor& q, at::Tensor k, at::Tensor v, const at::Tensor& bias,
                     const at::Tensor& zeroRows = {}) {
  const int64_t g = c.heads / c.kvHeads;
  if (g > 1) k = k.repeat_interleave(g, 1), v = v.repeat_interleave(g, 1);
  // no bias: the plain causal mask, which SDPA's fused kernels take as is_causal (an additive mask may send it to
  // its float32 math path)
  at::Tensor a = at::scaled_dot_product_attention(q, k, v, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt, 0.0,
                                                  /*is_causal=*/!bias.defined());
  if (zeroRows.defined()) a = a.masked_fill(zeroRows.unsqueeze(1), 0);
  return at::linear(a.transpose(1, 2).reshape({q.size(0), q.size(2), c.hidden}), l.ow);
}
at::Tensor mlp(const Config& c, const Layer& l, const at::Tensor& x) {
  const at::Tensor h = rmsNorm(x, l.postLn, c.eps);
  const auto gu = at::linear(h, l.gateUp).chunk(2, -1);  // [B, S, I] each
  return at::linear(at::silu(gu[0]) * gu[1], l.down);
}

// ---------------------------------------------------------------- vision tower
// Per patch (row, col) in the processor's (t, h/2, w/2, 2, 2) order.
at::Tensor visionPositions(const at::Tensor& grid, int64_t merge) {
  std::vector<at::Tensor> pos;
  auto g = grid.to(at::kCPU, at::kLong).contiguous();
  const int64_t* v = g.data_ptr<int64_t>();
  for (int64_t i = 0; i < g.size(0); ++i) {
    const int64_t t = v[3 * i], h = v[3 * i + 1], w = v[3 * i + 2];
    auto o = at::TensorOptions().dtype(at::kLong);
    at::Tensor hp = at::arange(h, o).unsqueeze(1).expand({h, w}).reshape({h / merge, merge, w / merge, merge}).permute({0, 2, 1, 3}).flatten();
    at::Tensor wp = at::arange(w, o).unsqueeze(0).expand({h, w}).reshape({h / merge, merge, w / merge, merge}).permute({0, 2, 1, 3}).flatten();
    pos.push_back(at::stack({hp, wp}, -1).repeat({t, 1}));
  }
  return at::cat(pos, 0);  // [N, 2]
}

// The window order of the merge units and the window boundaries (in patches), as transformers computes them.
std::pair<at::Tensor, std::vector<int64_t>> windowIndex(const at::Tensor& grid, const VisionConfig& v) {
  const int64_t win = v.windowSize / v.merge / v.patch, unit = v.merge * v.merge;
  std::vector<at::Tensor> index;
  std::vector<int64_t> cu{0};
  int64_t base = 0;
  auto g = grid.to(at::kCPU, at::kLong).contiguous();
  const int64_t* gv = g.data_ptr<int64_t>();
  for (int64_t i = 0; i < g.size(0); ++i) {
    const int64_t t = gv[3 * i], lh = gv[3 * i + 1] / v.merge, lw = gv[3 * i + 2] / v.merge;
    at::Tensor idx = at::arange(t * lh * lw, at::kLong).reshape({t, lh, lw});
    const int64_t ph = win - lh % win, pw = win - lw % win, nh = (lh + ph) / win, nw = (lw + pw) / win;
    at::Tensor padded = at::constant_pad_nd(idx, {0, pw, 0, ph}, -100).reshape({t, nh, win, nw, win}).permute({0, 1, 3, 2, 4})
                            .reshape({t, nh * nw, win, win});
    at::Tensor lens = (padded != -100).sum({2, 3}).reshape({-1});
    at::Tensor flat = padded.reshape({-1});
    index.push_back(flat.masked_select(flat != -100) + base);
    at::Tensor ends = lens.cumsum(0) * unit + cu.back();
    for (int64_t k = 0; k < ends.numel(); ++k) {
      const int64_t e = ends[k].item<int64_t>();
      if (e != cu.back()) cu.push_back(e);  // unique_consecutive
    }
    base += t * lh * lw;
  }
  return {at::cat(index), cu};
}

at::Tensor visionForward(const Model& m, const at::Tensor& pixels, const at::Tensor& grid) {
  const auto& v = m.vcfg;
  const auto& V = m.vision;
  const auto dev = V.patchEmbed.device();
  const auto dt = V.patchEmbed.scalar_type();
  const int64_t rowLen = V.patchEmbed.size(1), D = v.hidden, hd = D / v.heads, unit = v.merge * v.merge;
  if (pixels.dim() != 2 || pixels.size(1) != rowLen)
    fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: pixel values have shape " + shapeString(pixels.sizes()) +
                                   ", expected [patches, " + std::to_string(rowLen) + "]");
  if (grid.dim() != 2 || grid.size(1) != 3) fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: grid_thw must be [n, 3]");
  const int64_t N = pixels.size(0);
  if (grid.to(at::kLong).prod(1).sum().item<int64_t>() != N)
    fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: grid_thw describes " + std::to_string(grid.to(at::kLong).prod(1).sum().item<int64_t>()) +
                                   " patches but pixel values hold " + std::to_string(N));
  at::Tensor x = at::linear(pixels.to(dev, dt), V.patchEmbed);  // the Conv3d as a matrix product
  // 2-D rotary of each patch: cat(row·inv_freq, col·inv_freq), dim hd/2
  const int64_t rd = hd / 2;
  at::Tensor invFreq = 1.0 / at::pow(10000.0, at::arange(0, rd, 2, at::kFloat) / double(rd));
  at::Tensor pos = visionPositions(grid, v.merge).to(at::kFloat);
  at::Tensor rot = at::cat({pos.select(1, 0).unsqueeze(1) * invFreq, pos.select(1, 1).unsqueeze(1) * invFreq}, -1);  // [N, rd]
  auto [widx, cuWin] = windowIndex(grid, v);
  widx = widx.to(dev);
  x = x.reshape({N / unit, unit, D}).index_select(0, widx).reshape({N, D});
  rot = rot.to(dev).reshape({N / unit, unit, rd}).index_select(0, widx).reshape({N, rd});
  at::Tensor emb = at::cat({rot, rot}, -1);
  at::Tensor cos = emb.cos().unsqueeze(1), sin = emb.sin().unsqueeze(1);  // [N, 1, hd] float32
  std::vector<int64_t> cuFull{0};
  {
    auto g = grid.to(at::kCPU, at::kLong).contiguous();
    const int64_t* gv = g.data_ptr<int64_t>();
    for (int64_t i = 0; i < g.size(0); ++i)
      for (int64_t t = 0; t < gv[3 * i]; ++t) cuFull.push_back(cuFull.back() + gv[3 * i + 1] * gv[3 * i + 2]);
  }
  for (size_t bi = 0; bi < V.blocks.size(); ++bi) {
    const VisionBlock& b = V.blocks[bi];
    const bool full = std::find(v.fullAttBlocks.begin(), v.fullAttBlocks.end(), int64_t(bi)) != v.fullAttBlocks.end();
    const auto& cu = full ? cuFull : cuWin;
    at::Tensor h = rmsNorm(x, b.norm1, 1e-6);
    at::Tensor qkv = at::linear(h, b.qkvW, b.qkvB).reshape({N, 3, v.heads, hd}).permute({1, 0, 2, 3});
    at::Tensor q = qkv[0], k = qkv[1], vv = qkv[2];
    auto rope = [&](const at::Tensor& t) {
      at::Tensor f = t.to(at::kFloat);
      return (f * cos + rotateHalf(f) * sin).to(t.scalar_type());
    };
    q = rope(q), k = rope(k);
    std::vector<at::Tensor> outs;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {  // attention within each window / frame
      const int64_t a = cu[s], len = cu[s + 1] - cu[s];
      auto seg = [&](const at::Tensor& t) { return t.narrow(0, a, len).transpose(0, 1).unsqueeze(0); };  // [1, heads, len, hd]
      outs.push_back(at::scaled_dot_product_attention(seg(q), seg(k), seg(vv)).squeeze(0).transpose(0, 1).reshape({len, D}));
    }
    x = x + at::linear(at::cat(outs, 0), b.projW, b.projB);
    h = rmsNorm(x, b.norm2, 1e-6);
    x = x + at::linear(at::silu(at::linear(h, b.gateW, b.gateB)) * at::linear(h, b.upW, b.upB), b.downW, b.downB);
  }
  at::Tensor merged = rmsNorm(x, V.lnQ, 1e-6).reshape({N / unit, unit * D});
  merged = at::linear(at::gelu(at::linear(merged, V.mlp0W, V.mlp0B)), V.mlp2W, V.mlp2B);
  return merged.index_select(0, at::argsort(widx));  // undo the window order
}

// M-RoPE position ids [3, B, S] for text with image/video blocks (get_rope_index); pads keep position 1.
at::Tensor ropeIndex(const Model& m, const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& imageGrid,
                     const at::Tensor& videoGrid, double secondPerGridT) {
  const auto& v = m.vcfg;
  const int64_t B = ids.size(0), S = ids.size(1);
  at::Tensor P = at::ones({3, B, S}, at::kLong);
  at::Tensor idsC = ids.to(at::kCPU, at::kLong).contiguous(), maskC = mask.to(at::kCPU, at::kLong).contiguous();
  auto Pa = P.accessor<int64_t, 3>();
  auto idsA = idsC.accessor<int64_t, 2>(), maskA = maskC.accessor<int64_t, 2>();
  at::Tensor ig = imageGrid.defined() ? imageGrid.to(at::kCPU, at::kLong).contiguous() : at::Tensor();
  at::Tensor vg = videoGrid.defined() ? videoGrid.to(at::kCPU, at::kLong).contiguous() : at::Tensor();
  int64_t nextImage = 0, nextVideo = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> tok;
    std::vector<int64_t> where;
    for (int64_t s = 0; s < S; ++s)
      if (maskA[b][s] == 1) tok.push_back(idsA[b][s]), where.push_back(s);
    std::vector<std::array<int64_t, 3>> pos;
    int64_t mx = -1;  // the largest position so far
    auto push = [&](int64_t t, int64_t h, int64_t w) {
      pos.push_back({t, h, w});
      mx = std::max({mx, t, h, w});
    };
    size_t st = 0;
    while (true) {
      size_t ed = st;
      while (ed < tok.size() && tok[ed] != v.imageTokenId && tok[ed] != v.videoTokenId) ++ed;
      const int64_t base = mx + 1;
      for (size_t i = st; i < ed; ++i) { const int64_t p = base + int64_t(i - st); push(p, p, p); }
      if (ed >= tok.size()) break;
      const bool image = tok[ed] == v.imageTokenId;
      const at::Tensor& g = image ? ig : vg;
      int64_t& next = image ? nextImage : nextVideo;
      if (!g.defined() || next >= g.size(0))
        fail("ERR_SHAPE_MISMATCH", std::string("QwenVLEncoder.forward: more ") + (image ? "image" : "video") +
                                       " blocks in inputIds than grids in " + (image ? "imageGridThw" : "videoGridThw"));
      if (g.dim() != 2 || g.size(1) != 3)
        fail("ERR_SHAPE_MISMATCH", std::string("QwenVLEncoder.forward: ") + (image ? "imageGridThw" : "videoGridThw") +
                                       " must be [n, 3] (t, h, w), found " + shapeString(g.sizes()));
      auto gA = g.accessor<int64_t, 2>();
      const int64_t t = gA[next][0], h = gA[next][1] / v.merge, w = gA[next][2] / v.merge;
      ++next;
      const double step = image ? 0.0 : secondPerGridT * v.tokensPerSecond;
      const int64_t start = base + int64_t(ed - st);
      for (int64_t ti = 0; ti < t; ++ti)
        for (int64_t hi = 0; hi < h; ++hi)
          for (int64_t wi = 0; wi < w; ++wi) push(start + int64_t(double(ti) * step), start + hi, start + wi);
      st = ed + size_t(t * h * w);
      if (st > tok.size()) fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: a vision block is cut off by the end of inputIds");
    }
    for (size_t i = 0; i < where.size(); ++i)
      for (int a = 0; a < 3; ++a) Pa[a][b][where[i]] = pos[i][size_t(a)];
  }
  return P;
}

}  // namespace


std::shared_ptr<Model> load(const FullConfig& full, std::map<std::string, at::Tensor> weights, const std::string& source) {
  const Config& c = full.text;
  // released names (model.layers.*, visual.*, lm_head), and the model.language_model.* / model.visual.* re-saves
  std::map<std::string, at::Tensor> w0;
  at::Tensor lmHead;  // absent: tied to the embeddings
  for (auto& [k, v] : weights) {
    std::string n = k;
    if (n.rfind("model.language_model.", 0) == 0) n = "model." + n.substr(21);
    else if (n.rfind("model.visual.", 0) == 0) n = "visual." + n.substr(13);
    if (n == "lm_head.weight") {  // kept aside: only generation (the answer mode) computes logits
      lmHead = v;
      continue;
    }
    if (n.rfind("visual.", 0) == 0 && !full.vision.present) continue;
    w0[n] = v;
  }
  WeightMap w(std::move(w0), "QwenVLEncoder", source);
  auto m = std::make_shared<Model>();
  if (lmHead.defined() && lmHead.sizes() != at::IntArrayRef({c.vocab, c.hidden}))
    fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder (" + source + "): lm_head.weight has shape " + shapeString(lmHead.sizes()) +
                                   ", expected [" + std::to_string(c.vocab) + ", " + std::to_string(c.hidden) + "]");
  m->lmHead = lmHead;
  m->cfg = c;
  const int64_t H = c.hidden, kv = c.kvHeads * (H / c.heads), I = c.intermediate;
  m->embed = w.take("model.embed_tokens.weight", {c.vocab, H});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer l;
    l.inLn = w.take(p + "input_layernorm.weight", {H});
    // q, k and v as one GEMM (their weights and biases stacked), gate and up likewise
    const auto [qw, qb] = w.linear(p + "self_attn.q_proj", H, H);
    const auto [kw, kb] = w.linear(p + "self_attn.k_proj", kv, H);
    const auto [vw, vb] = w.linear(p + "self_attn.v_proj", kv, H);
    l.qkvW = at::cat({qw, kw, vw}), l.qkvB = at::cat({qb, kb, vb});
    l.ow = w.take(p + "self_attn.o_proj.weight", {H, H});
    l.postLn = w.take(p + "post_attention_layernorm.weight", {H});
    l.gateUp = at::cat({w.take(p + "mlp.gate_proj.weight", {I, H}), w.take(p + "mlp.up_proj.weight", {I, H})});
    l.down = w.take(p + "mlp.down_proj.weight", {H, I});
    m->layers.push_back(std::move(l));
  }
  m->norm = w.take("model.norm.weight", {H});
  m->vcfg = full.vision;
  if (full.vision.present) {
    const auto& v = full.vision;
    const int64_t D = v.hidden, F = v.intermediate, M = D * v.merge * v.merge;
    m->vision.patchEmbed = w.take("visual.patch_embed.proj.weight", {D, v.inChannels, v.temporalPatch, v.patch, v.patch}).reshape({D, -1});
    for (int64_t i = 0; i < v.depth; ++i) {
      const std::string p = "visual.blocks." + std::to_string(i) + ".";
      VisionBlock b;
      b.norm1 = w.take(p + "norm1.weight", {D});
      b.norm2 = w.take(p + "norm2.weight", {D});
      std::tie(b.qkvW, b.qkvB) = w.linear(p + "attn.qkv", 3 * D, D);
      std::tie(b.projW, b.projB) = w.linear(p + "attn.proj", D, D);
      std::tie(b.gateW, b.gateB) = w.linear(p + "mlp.gate_proj", F, D);
      std::tie(b.upW, b.upB) = w.linear(p + "mlp.up_proj", F, D);
      std::tie(b.downW, b.downB) = w.linear(p + "mlp.down_proj", D, F);
      m->vision.blocks.push_back(std::move(b));
    }
    m->vision.lnQ = w.take("visual.merger.ln_q.weight", {D});
    std::tie(m->vision.mlp0W, m->vision.mlp0B) = w.linear("visual.merger.mlp.0", M, M);
    std::tie(m->vision.mlp2W, m->vision.mlp2B) = w.linear("visual.merger.mlp.2", v.outHidden, M);
    if (v.outHidden != H) fail("ERR_CONFIG", "QwenVLEncoder (" + source + "): vision out_hidden_size differs from hidden_size");
  }
  w.finish();
  return m;
}


// X2I's answer mode (generate(..., output_hidden_states=True): hidden_states[1:]): greedy decoding after the
// prefill, with the prompt's keys and values cached. Each generated token but the last is fed back; its states
// (embedding, every layer, the last after the final norm) form out.answer [1, L+1, n, H]. Positions continue
// from the prompt's largest M-RoPE id on all three axes (transformers' rope_deltas). Stops at an EOS id.
void decode(const Model& m, const Inputs& in, const at::Tensor& P, const at::Tensor& mask, at::Tensor last,
            std::vector<at::Tensor>& cacheK, std::vector<at::Tensor>& cacheV, Outputs& out) {
  const auto& c = m.cfg;
  const int64_t H = c.hidden;
  const at::Tensor head = m.lmHead.defined() ? m.lmHead : m.embed;  // tied when the checkpoint has no lm_head
  const int64_t next = P.max().item<int64_t>() + 1;
  const auto dt = m.embed.scalar_type();
  at::Tensor keyBias = at::zeros({1, 1, 1, mask.size(1)}, last.options()).masked_fill((mask == 0).view({1, 1, 1, -1}), lowestOf(dt));
  std::vector<at::Tensor> steps;
  for (int64_t step = 0; step < in.maxNewTokens; ++step) {
    const int64_t tok = at::linear(last, head).argmax(-1).item<int64_t>();  // [1, 1, V] → greedy
    out.tokens.push_back(tok);
    if (std::find(in.eosIds.begin(), in.eosIds.end(), tok) != in.eosIds.end() || step + 1 == in.maxNewTokens) break;
    at::Tensor x = at::embedding(m.embed, at::full({1, 1}, tok, mask.options()));  // [1, 1, H]
    std::vector<at::Tensor> states{x};
    auto [cos, sin] = mrope(c, at::full({3, 1, 1}, next + step, mask.options()), dt);
    keyBias = at::cat({keyBias, at::zeros({1, 1, 1, 1}, keyBias.options())}, -1);
    for (int64_t i = 0; i < c.layers; ++i) {
      const Layer& l = m.layers[size_t(i)];
      auto [q, k, v] = attentionInputs(c, l, x, cos, sin);
      cacheK[size_t(i)] = at::cat({cacheK[size_t(i)], k}, 2), cacheV[size_t(i)] = at::cat({cacheV[size_t(i)], v}, 2);
      x = x + attention(c, l, q, cacheK[size_t(i)], cacheV[size_t(i)], keyBias);
      x = x + mlp(c, l, x);
      if (i + 1 < c.layers) states.push_back(x);
    }
    last = rmsNorm(x, m.norm, c.eps);
    states.push_back(last);
    steps.push_back(at::stack(states, 1));  // [1, L+1, 1, H]
  }
  out.answer = steps.empty() ? at::empty({1, c.layers + 1, 0, H}, last.options()) : at::cat(steps, 2);
}

Outputs forward(const Model& m, const Inputs& in) {
  const auto& c = m.cfg;
  if (in.ids.dim() != 2 || at::isFloatingType(in.ids.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: inputIds must be integer ids [B, S], found " +
                                   dtypeName(in.ids.scalar_type()) + " " + shapeString(in.ids.sizes()));
  const int64_t B = in.ids.size(0), S = in.ids.size(1), H = c.hidden;
  if (in.maxNewTokens > 0 && B != 1)
    fail("ERR_NOT_SUPPORTED", "QwenVLEncoder.generate: one prompt at a time (inputIds [1, S]), got " + shapeString(in.ids.sizes()));
  const auto dev = m.embed.device();
  const auto dt = m.embed.scalar_type();
  SideStream side(dev, "mllm");  // beside FLUX's T5 and CLIP
  at::Tensor ids = in.ids.to(dev, at::kLong);
  if (ids.numel() && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= c.vocab))
    fail("ERR_INVALID_ARG", "QwenVLEncoder.forward: token ids must be in [0, " + std::to_string(c.vocab) + ")");
  at::Tensor mask = in.mask.defined() ? in.mask.to(dev, at::kLong) : at::ones({B, S}, ids.options());
  if (mask.sizes() != ids.sizes())
    fail("ERR_SHAPE_MISMATCH", "QwenVLEncoder.forward: attentionMask has shape " + shapeString(mask.sizes()) +
                                   ", expected " + shapeString(ids.sizes()));
  const bool vision = in.pixelValues.defined() || in.pixelValuesVideos.defined();
  if (vision && !m.vcfg.present)
    fail("ERR_NOT_SUPPORTED", "QwenVLEncoder.forward: this checkpoint was loaded without its vision tower");
  // positions: text only — cumsum(mask) − 1 with pads at 1, the same on the three M-RoPE axes; with images or
  // videos — get_rope_index's (t, h, w) ids
  at::Tensor P = vision && in.positions == "mrope"
                     ? ropeIndex(m, ids, mask, in.imageGridThw, in.videoGridThw, in.secondPerGridT).to(dev)
                 : in.positions == "arange" ? at::arange(S, ids.options()).expand({3, B, S})
                                            : at::where(mask == 1, mask.cumsum(-1) - 1, at::ones_like(mask)).unsqueeze(0).expand({3, B, S});
  auto [cos, sin] = mrope(c, P, dt);
  // additive mask: causal and key padding; rows that see no key at all are unmasked (x2i rule). Without padding
  // the mask is the causal one alone: no bias (attention() asks SDPA for is_causal)
  const bool padded = in.mask.defined() && !(mask == 1).all().item<bool>();
  at::Tensor bias, blind;
  if (padded) {
    const auto f = at::TensorOptions().dtype(dt).device(dev);
    at::Tensor causal = at::ones({S, S}, f.dtype(at::kBool)).tril();
    at::Tensor visible = causal.unsqueeze(0) & (mask == 1).unsqueeze(1);  // [B, S(q), S(k)]
    // rows that see no key at all (every left pad): 'x2i' lets them attend to every key; 'mask' gives them a zero
    // attention output (what PyTorch's SDPA returns for a fully masked row, as transformers 5 relies on)
    blind = ~visible.any(-1, true);  // [B, S, 1]
    visible = visible | blind;
    bias = at::zeros({B, 1, S, S}, f).masked_fill(~visible.unsqueeze(1), lowestOf(dt));
  }
  Outputs out;
  // all-layer capture: one [B, L+1, S, H] buffer; each layer's residual sum is computed into its slot (no
  // copy), the embeddings and the final norm are copied in;
  // without capture only the last (normed) state is returned, as [B, 1, S, H]
  if (in.capture) out.hidden = at::empty({B, c.layers + 1, S, H}, m.embed.options());
  at::Tensor x = at::embedding(m.embed, ids);
  // vision features replace the <|image_pad|> / <|video_pad|> rows, in order
  for (auto [px, grid, token, what] : {std::make_tuple(in.pixelValues, in.imageGridThw, m.vcfg.imageTokenId, "image"),
                                       std::make_tuple(in.pixelValuesVideos, in.videoGridThw, m.vcfg.videoTokenId, "video")}) {
    if (!px.defined()) continue;
    if (!grid.defined()) fail("ERR_INVALID_ARG", std::string("QwenVLEncoder.forward: ") + what + " pixel values need their grid_thw");
    at::Tensor feats = visionForward(m, px, grid);
    at::Tensor slots = (ids == token);
    const int64_t n = slots.sum().item<int64_t>();
    if (n != feats.size(0))
      fail("ERR_SHAPE_MISMATCH", std::string("QwenVLEncoder.forward: ") + std::to_string(feats.size(0)) + " " + what +
                                     " features but " + std::to_string(n) + " placeholder tokens in inputIds");
    x = x.index_put({slots}, feats.to(x.scalar_type()));
  }
  if (in.embeds.defined() && in.embedsRows.defined()) {  // other towers' features into given rows (MiniCPM-o's bounds)
    const at::Tensor rows = in.embedsRows.to(dev, at::kLong);
    if (in.embeds.dim() != 2 || in.embeds.size(1) != H || rows.dim() != 1 || rows.size(0) != in.embeds.size(0))
      fail("ERR_SHAPE_MISMATCH", "forward: " + shapeString(in.embeds.sizes()) + " features for " + shapeString(rows.sizes()) +
                                     " rows of width " + std::to_string(H));
    if (rows.numel() && (rows.min().item<int64_t>() < 0 || rows.max().item<int64_t>() >= B * S))
      fail("ERR_INVALID_ARG", "forward: a feature span lies outside the " + std::to_string(S) + " tokens");
    x = x.reshape({B * S, H}).index_put({rows}, in.embeds.to(x.device(), x.scalar_type())).view({B, S, H});
  } else if (in.embeds.defined()) {  // another tower's features (InternVL's images) replace their placeholder tokens
    at::Tensor slots = (ids == in.embedsTokenId);
    const int64_t n = slots.sum().item<int64_t>();
    if (in.embeds.dim() != 2 || in.embeds.size(1) != H || n != in.embeds.size(0))
      fail("ERR_SHAPE_MISMATCH", "forward: " + shapeString(in.embeds.sizes()) + " image features for " + std::to_string(n) +
                                     " placeholder tokens (id " + std::to_string(in.embedsTokenId) + ") of width " + std::to_string(H));
    x = x.index_put({slots}, in.embeds.to(x.device(), x.scalar_type()));
  }
  if (in.capture) out.hidden.select(1, 0).copy_(x);
  std::vector<at::Tensor> cacheK, cacheV;  // generation: every layer's rotated keys and values
  const at::Tensor zeroRows = in.padRule == "mask" ? blind : at::Tensor();
  for (int64_t i = 0; i < c.layers; ++i) {
    const Layer& l = m.layers[size_t(i)];
    auto [q, k, v] = attentionInputs(c, l, x, cos, sin);
    if (in.maxNewTokens > 0) cacheK.push_back(k), cacheV.push_back(v);
    x = x + attention(c, l, q, k, v, bias, zeroRows);
    at::Tensor y = mlp(c, l, x);
    if (in.capture && i + 1 < c.layers) {  // the residual sum is written straight into its slot, and read from there
      at::Tensor slot = out.hidden.select(1, i + 1);
      at::add_out(slot, x, y);
      x = slot;
    } else {
      x = x + y;
    }
  }
  at::Tensor last = rmsNorm(x, m.norm, c.eps);
  if (in.capture) out.hidden.select(1, c.layers).copy_(last);  // the last entry after the final norm
  else out.hidden = last.unsqueeze(1);
  if (in.maxNewTokens > 0) decode(m, in, P, mask, last.select(1, S - 1).unsqueeze(1), cacheK, cacheV, out);
  side.finish({&out.hidden, &out.answer});
  return out;
}

at::Tensor ropeIndex(const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& imageGrid,
                     const at::Tensor& videoGrid, const RopeIndexOptions& o) {
  Model m;
  m.vcfg.imageTokenId = o.imageTokenId;
  m.vcfg.videoTokenId = o.videoTokenId;
  m.vcfg.merge = o.merge;
  m.vcfg.tokensPerSecond = o.tokensPerSecond;
  return ropeIndex(m, ids, mask, imageGrid, videoGrid, o.secondPerGridT);
}


}  // namespace x2i::qwen
