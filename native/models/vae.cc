// FLUX's VAE as diffusers' AutoencoderKL: GroupNorm + SiLU ResNet blocks, a
// single-head attention in the middle, stride-2 convolutions down and nearest ×2 + convolution up, no quant
// convs. encode() returns the posterior mean, decode() the raw decoder output (the pipeline applies
// scaling 0.3611 and shift 0.1159).
#include "models/vae.h"
#include "models/group_norm.h"

#include <set>

namespace x2i::vae {
namespace {

constexpr double kEps = 1e-6;

Conv conv(WeightMap& w, const std::string& p, int64_t out, int64_t in, int64_t k) {
  return {w.take(p + ".weight", {out, in, k, k}), w.take(p + ".bias", {out})};
}
Norm norm(WeightMap& w, const std::string& p, int64_t c) { return {w.take(p + ".weight", {c}), w.take(p + ".bias", {c})}; }

Resnet resnet(WeightMap& w, const std::string& p, int64_t in, int64_t out, const std::set<std::string>& keys) {
  Resnet r;
  r.norm1 = norm(w, p + ".norm1", in);
  r.conv1 = conv(w, p + ".conv1", out, in, 3);
  r.norm2 = norm(w, p + ".norm2", out);
  r.conv2 = conv(w, p + ".conv2", out, out, 3);
  if (in != out || keys.count(p + ".conv_shortcut.weight")) r.shortcut = conv(w, p + ".conv_shortcut", out, in, 1);
  return r;
}

Mid mid(WeightMap& w, const std::string& p, int64_t c, bool attn) {
  Mid m;
  const std::set<std::string> none;
  m.r0 = resnet(w, p + ".resnets.0", c, c, none);
  m.r1 = resnet(w, p + ".resnets.1", c, c, none);
  m.hasAttn = attn;
  if (attn) {
    const std::string a = p + ".attentions.0.";
    m.attn.norm = norm(w, a + "group_norm", c);
    std::tie(m.attn.qw, m.attn.qb) = w.linear(a + "to_q", c, c);
    std::tie(m.attn.kw, m.attn.kb) = w.linear(a + "to_k", c, c);
    std::tie(m.attn.vw, m.attn.vb) = w.linear(a + "to_v", c, c);
    std::tie(m.attn.ow, m.attn.ob) = w.linear(a + "to_out.0", c, c);
  }
  return m;
}

at::Tensor gn(const at::Tensor& x, const Norm& n, int64_t groups) { return groupNorm(x, groups, n.w, n.b, kEps); }

at::Tensor runResnet(const Resnet& r, const at::Tensor& x, int64_t groups) {
  at::Tensor h = at::conv2d(at::silu(gn(x, r.norm1, groups)), r.conv1.w, r.conv1.b, 1, 1);
  h = at::conv2d(at::silu(gn(h, r.norm2, groups)), r.conv2.w, r.conv2.b, 1, 1);
  const at::Tensor s = r.shortcut.w.defined() ? at::conv2d(x, r.shortcut.w, r.shortcut.b) : x;
  return s + h;
}

at::Tensor runAttention(const Attention& a, const at::Tensor& x, int64_t groups) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor h = gn(x, a.norm, groups).view({B, C, H * W}).transpose(1, 2);  // [B, HW, C]
  auto head = [&](const at::Tensor& w, const at::Tensor& b) { return at::linear(h, w, b).unsqueeze(1); };  // one head
  at::Tensor o = at::scaled_dot_product_attention(head(a.qw, a.qb), head(a.kw, a.kb), head(a.vw, a.vb)).squeeze(1);
  o = at::linear(o, a.ow, a.ob).transpose(1, 2).reshape({B, C, H, W});
  return x + o;
}

at::Tensor runMid(const Mid& m, at::Tensor x, int64_t groups) {
  x = runResnet(m.r0, x, groups);
  if (m.hasAttn) x = runAttention(m.attn, x, groups);
  return runResnet(m.r1, x, groups);
}

}  // namespace


std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source) {
  std::set<std::string> keys;
  bool encoder = false;
  for (auto& [k, v] : weights) keys.insert(k), encoder = encoder || k.rfind("encoder.", 0) == 0;
  encoder = encoder || RandomInit::active();  // random weights: both halves
  WeightMap w(std::move(weights), "AutoencoderKL", source);
  auto m = std::make_shared<Model>();
  m->cfg = c;
  const auto& bo = c.blockOut;
  const size_t n = bo.size();
  if (encoder) {  // decoder-only files are fine: encode() then says so
    m->hasEncoder = true;
    Coder& e = m->encoder;
    e.convIn = conv(w, "encoder.conv_in", bo[0], c.inChannels, 3);
    int64_t ch = bo[0];
    for (size_t i = 0; i < n; ++i) {
      std::vector<Resnet> rs;
      for (int64_t j = 0; j < c.layersPerBlock; ++j) {
        rs.push_back(resnet(w, "encoder.down_blocks." + std::to_string(i) + ".resnets." + std::to_string(j), ch, bo[i], keys));
        ch = bo[i];
      }
      e.blocks.push_back(std::move(rs));
      if (i + 1 < n) e.samplers.push_back(conv(w, "encoder.down_blocks." + std::to_string(i) + ".downsamplers.0.conv", ch, ch, 3));
    }
    e.mid = mid(w, "encoder.mid_block", ch, c.midAttention);
    e.normOut = norm(w, "encoder.conv_norm_out", ch);
    e.convOut = conv(w, "encoder.conv_out", 2 * c.latentChannels, ch, 3);
  }
  Coder& d = m->decoder;
  int64_t ch = bo[n - 1];
  d.convIn = conv(w, "decoder.conv_in", ch, c.latentChannels, 3);
  d.mid = mid(w, "decoder.mid_block", ch, c.midAttention);
  for (size_t i = 0; i < n; ++i) {  // up blocks run from the widest to the narrowest
    const int64_t out = bo[n - 1 - i];
    std::vector<Resnet> rs;
    for (int64_t j = 0; j <= c.layersPerBlock; ++j) {
      rs.push_back(resnet(w, "decoder.up_blocks." + std::to_string(i) + ".resnets." + std::to_string(j), ch, out, keys));
      ch = out;
    }
    d.blocks.push_back(std::move(rs));
    if (i + 1 < n) d.samplers.push_back(conv(w, "decoder.up_blocks." + std::to_string(i) + ".upsamplers.0.conv", ch, ch, 3));
  }
  d.normOut = norm(w, "decoder.conv_norm_out", ch);
  d.convOut = conv(w, "decoder.conv_out", c.outChannels, ch, 3);
  w.finish();
  return m;
}


Outputs forward(const Model& m, const Inputs& in) {
  const auto& c = m.cfg;
  const int64_t G = c.groups;
  const int64_t want = in.encode ? c.inChannels : c.latentChannels;
  if (in.x.dim() != 4 || in.x.size(1) != want)
    fail("ERR_SHAPE_MISMATCH", std::string("AutoencoderKL.") + (in.encode ? "encode: image" : "decode: latents") + " has shape " +
                                   shapeString(in.x.sizes()) + ", expected [B, " + std::to_string(want) + ", H, W]");
  const Coder& k = in.encode ? m.encoder : m.decoder;
  if (in.encode && !m.hasEncoder) fail("ERR_NOT_SUPPORTED", "AutoencoderKL.encode: this checkpoint has no encoder");
  at::Tensor x = in.x.to(k.convIn.w.device(), k.convIn.w.scalar_type());
  if (in.encode) {
    const int64_t f = int64_t(1) << (c.blockOut.size() - 1);
    if (x.size(2) % f || x.size(3) % f)
      fail("ERR_SHAPE_MISMATCH", "AutoencoderKL.encode: height and width must be multiples of " + std::to_string(f));
  }
  const std::vector<int64_t> stride2{2, 2}, noPad{0, 0};
  x = at::conv2d(x, k.convIn.w, k.convIn.b, 1, 1);
  if (!in.encode) x = runMid(k.mid, x, G);
  for (size_t i = 0; i < k.blocks.size(); ++i) {
    for (const Resnet& r : k.blocks[i]) x = runResnet(r, x, G);
    if (i < k.samplers.size()) {
      if (in.encode) {  // pad right and bottom by one, then a stride-2 convolution
        x = at::conv2d(at::constant_pad_nd(x, {0, 1, 0, 1}, 0), k.samplers[i].w, k.samplers[i].b,
                       at::IntArrayRef(stride2), at::IntArrayRef(noPad));
      } else {  // nearest ×2, then a convolution
        x = at::conv2d(at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}), k.samplers[i].w, k.samplers[i].b, 1, 1);
      }
    }
  }
  if (in.encode) x = runMid(k.mid, x, G);
  x = at::conv2d(at::silu(gn(x, k.normOut, G)), k.convOut.w, k.convOut.b, 1, 1);
  if (in.encode) x = x.narrow(1, 0, c.latentChannels).contiguous();  // the posterior mean
  syncDevice(x);
  return {x};
}


}  // namespace x2i::vae
