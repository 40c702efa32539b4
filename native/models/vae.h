// FLUX's VAE, diffusers AutoencoderKL (see vae.cc).
#pragma once
#include "core/weights.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace x2i::vae {

struct Config {
  int64_t inChannels, outChannels, latentChannels, groups, layersPerBlock;
  std::vector<int64_t> blockOut;
  bool midAttention;
};
struct Conv {
  at::Tensor w, b;
};
struct Norm {
  at::Tensor w, b;
};
struct Resnet {
  Norm norm1, norm2;
  Conv conv1, conv2, shortcut;  // shortcut: 1×1, when channels change
};
struct Attention {
  Norm norm;
  at::Tensor qw, qb, kw, kb, vw, vb, ow, ob;
};
struct Mid {
  Resnet r0, r1;
  Attention attn;
  bool hasAttn = false;
};
struct Coder {  // encoder or decoder
  Conv convIn, convOut;
  std::vector<std::vector<Resnet>> blocks;
  std::vector<Conv> samplers;  // down- or up-samplers after each block but the last
  Mid mid;
  Norm normOut;
};
struct Inputs {
  at::Tensor x;
  bool encode;
};
struct Outputs {
  at::Tensor y;
};

struct Model {
  Config cfg;
  Coder encoder, decoder;
  bool hasEncoder = false;
};

// Builds the model from named tensors (or, under a RandomInit, random ones); every tensor is name- and shape-checked.
std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> w, const std::string& source);
Outputs forward(const Model& m, const Inputs& in);

}  // namespace x2i::vae
