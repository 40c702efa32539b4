// InternVL2.5 (1B / 4B) as an X2I student (see internvl.cc): InternViT, pixel shuffle, the MLP projector and the
// Qwen2.5 language model (models/qwen.cc, 1-D RoPE) with all-layer capture.
#pragma once
#include "models/qwen.h"

namespace x2i::internvl {

struct VisionConfig {
  int64_t hidden = 0, layers = 0, heads = 0, intermediate = 0, imageSize = 448, patch = 14, channels = 3;
  double eps = 1e-6;
};
struct Config {
  VisionConfig vision;
  qwen::FullConfig llm;            // the language model only (no Qwen vision tower), mrope_section {hd/2, 0, 0}
  double downsample = 0.5;         // pixel shuffle: (1/r)² patches per token
  int64_t imgContextId = 151667;   // <IMG_CONTEXT>
};
struct VisionLayer {
  at::Tensor norm1W, norm1B, qkvW, qkvB, projW, projB, ls1, norm2W, norm2B, fc1W, fc1B, fc2W, fc2B, ls2;
};
struct Model {
  Config cfg;
  at::Tensor cls, patchW, patchB, pos;  // embeddings: class token, patch conv, position table [1, 1 + g², C]
  std::vector<VisionLayer> layers;
  at::Tensor lnW, lnB, fc1W, fc1B, fc2W, fc2B;  // mlp1: LayerNorm, Linear, GELU, Linear
  std::shared_ptr<qwen::Model> llm;
};
struct Inputs {
  at::Tensor ids, mask, pixelValues;  // pixelValues [tiles, 3, s, s] (normalised), one image's tiles after another
  bool capture = true;
  bool embedsOnly = false;            // only the image features ([tiles, tokens, H]) in Outputs::hidden
};
using Outputs = qwen::Outputs;

// The original checkpoint names: vision_model.*, mlp1.*, language_model.{model.*, lm_head.weight}.
std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source);
// pixelValues [tiles, 3, s, s] → the image features [tiles, (s/patch · r)², H] that fill the <IMG_CONTEXT> rows.
at::Tensor imageEmbeds(const Model& m, const at::Tensor& pixelValues);
// X2I's InternVL forward: ids embedded, <IMG_CONTEXT> rows replaced by the image features in order, one pass of
// the language model with every layer's state captured ([B, L+1, S, H]); positions 0..S−1 (right pads too).
Outputs forward(const Model& m, const Inputs& in);

}  // namespace x2i::internvl
