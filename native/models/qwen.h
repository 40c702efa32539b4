// Qwen2.5-VL language model as X2I's multimodal encoder (see qwen.cc).
#pragma once
#include "core/weights.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <array>

namespace x2i::qwen {

struct Config {
  int64_t vocab, hidden, intermediate, layers, heads, kvHeads;
  double eps, theta;
  std::array<int64_t, 3> mropeSection;
};
struct Layer {
  at::Tensor inLn, qkvW, qkvB, ow, postLn, gateUp, down;  // q, k, v stacked (weights and biases); gate over up
};
struct VisionConfig {
  bool present = false;
  int64_t depth = 0, hidden = 0, heads = 0, intermediate = 0, outHidden = 0, patch = 14, merge = 2, temporalPatch = 2,
          windowSize = 112, inChannels = 3;
  double tokensPerSecond = 2;
  std::vector<int64_t> fullAttBlocks;
  int64_t imageTokenId = -1, videoTokenId = -1, visionStartId = -1;
};
struct VisionBlock {
  at::Tensor norm1, qkvW, qkvB, projW, projB, norm2, gateW, gateB, upW, upB, downW, downB;
};
struct Vision {
  at::Tensor patchEmbed;  // [hidden, C·T·P·P]
  std::vector<VisionBlock> blocks;
  at::Tensor lnQ, mlp0W, mlp0B, mlp2W, mlp2B;
};

struct Inputs {
  at::Tensor ids, mask;
  at::Tensor pixelValues, imageGridThw, pixelValuesVideos, videoGridThw;
  double secondPerGridT = 1.0;  // videos: seconds per temporal patch (temporal_patch_size / fps)
  std::string padRule;    // "x2i" (default) or "mask"
  std::string positions;  // "mrope" (default: get_rope_index's t/h/w ids), "sequential" or "arange" (0..S−1, pads too)
  at::Tensor embeds;            // [n, H] rows that replace the `embedsTokenId` tokens, in order (other students' vision)
  int64_t embedsTokenId = -1;
  at::Tensor embedsRows;        // or: the rows (int64 [n], of the flattened [B·S]) they replace, in order
  bool capture = true;    // every layer's output; false: only the last (normed) one, [B, 1, S, H]
  int64_t maxNewTokens = 0;     // > 0: greedy generation after the prefill (the answer mode)
  std::vector<int64_t> eosIds;  // generation stops after one of these
};
struct Outputs {
  at::Tensor hidden;               // [B, L+1, S, H]
  at::Tensor answer;               // generation: the fed-back tokens' states [1, L+1, n, H]
  std::vector<int64_t> tokens;     // generation: the generated ids
};

struct FullConfig {  // the language model and (optionally) its vision tower
  Config text;
  VisionConfig vision;
};

struct Model {
  Config cfg;
  VisionConfig vcfg;
  at::Tensor embed, norm, lmHead;  // lmHead undefined: tied to embed
  std::vector<Layer> layers;
  Vision vision;

};

// Builds the model from named tensors (or, under a RandomInit, random ones); every tensor is name- and shape-checked.
std::shared_ptr<Model> load(const FullConfig& c, std::map<std::string, at::Tensor> w, const std::string& source);
Outputs forward(const Model& m, const Inputs& in);

// get_rope_index's [3, B, S] M-RoPE position ids of inputIds [B, S] (int64) with their images' and videos'
// grids [n, 3] (t, h, w; undefined when absent): text tokens count up on all three axes, vision tokens take
// their (t·tokensPerSecond·secondPerGridT, h, w) places after the merge.
struct RopeIndexOptions {
  int64_t imageTokenId = -1, videoTokenId = -1, merge = 2;
  double tokensPerSecond = 2, secondPerGridT = 1.0;
};
at::Tensor ropeIndex(const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& imageGrid,
                     const at::Tensor& videoGrid, const RopeIndexOptions& o);

}  // namespace x2i::qwen
