// CLIP's text and vision towers (see clip.cc).
#pragma once
#include "core/weights.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace x2i::clip {

struct Config {
  int64_t vocab, hidden, intermediate, heads, layers, maxPositions, eosTokenId;
  int64_t projectionDim = 0;  // > 0: the checkpoint's text_projection [projectionDim, hidden] is loaded
  double eps;
  std::string act;
};
struct Layer {
  at::Tensor ln1w, ln1b, qw, qb, kw, kb, vw, vb, ow, ob, ln2w, ln2b, fc1w, fc1b, fc2w, fc2b;
};
struct Inputs {
  at::Tensor ids;
};
struct Outputs {
  at::Tensor last, pooled, hidden;  // [B, S, H], [B, H], [B, L+1, S, H]
  at::Tensor embeds;                // [B, D]: pooled · text_projectionᵀ (CLIPModel checkpoints; undefined otherwise)
};

struct Model {
  Config cfg;
  at::Tensor tokenEmbed, posEmbed, finalW, finalB;
  at::Tensor projection;  // text_projection [D, H] when the checkpoint is a whole CLIPModel
  std::vector<Layer> layers;
};

// Builds the model from named tensors (or, under a RandomInit, random ones); every tensor is name- and shape-checked.
// A whole CLIPModel checkpoint is accepted: its vision tower is left out, its text_projection kept.
std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> w, const std::string& source);
Outputs forward(const Model& m, const Inputs& in);

// ---- the vision tower (transformers' CLIPVisionModel / CLIPVisionModelWithProjection, e.g. ViT-L/14)
struct VisionConfig {
  int64_t hidden, intermediate, heads, layers, imageSize, patchSize, channels;
  int64_t projectionDim = 0;  // > 0: visual_projection [projectionDim, hidden] is loaded
  double eps;
  std::string act;
};
struct VisionModel {
  VisionConfig cfg;
  at::Tensor patchW, classEmbed, posEmbed, preW, preB, postW, postB;  // patchW [H, C, p, p], posEmbed [P + 1, H]
  at::Tensor projection;                                             // visual_projection [D, H] (optional)
  std::vector<Layer> layers;
};
struct VisionOutputs {
  at::Tensor last, pooled, embeds;  // [B, P + 1, H], [B, H] (post-LayerNorm class token), [B, D] (with a projection)
};
// From a CLIPVisionModel, CLIPVisionModelWithProjection or whole CLIPModel checkpoint (its text tower left out).
std::shared_ptr<VisionModel> loadVision(const VisionConfig& c, std::map<std::string, at::Tensor> w, const std::string& source);
// pixelValues [B, C, imageSize, imageSize], normalised as CLIPImageProcessor does.
VisionOutputs forwardVision(const VisionModel& m, const at::Tensor& pixelValues);

}  // namespace x2i::clip
