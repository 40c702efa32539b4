// X2I LightControl (see lightcontrol.cc): one ControlNeXt branch per FLUX double-stream block, each turning a
// hint image and the timestep into residual tokens for the image stream.
#pragma once
#include "core/dtype.h"

#include <array>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace x2i::lightcontrol {

// ControlNeXtModel's constructor arguments and the widths the official class hard-codes; the defaults are the
// official ones (FLUX.1: 19 branches, D = 3072).
struct Config {
  std::array<int64_t, 2> inChannels{128, 128}, outChannels{128, 256}, groups{4, 8};
  int64_t timeEmbedDim = 256;
  int64_t finalOutChannels = 320;  // ignored by the official class (kept for the config's round trip)
  std::array<int64_t, 3> embeddingChannels{64, 64, 128};
  int64_t embeddingNormGroups = 2, midNormGroups = 8;
  int64_t controlOutChannels = 3072;  // D, FLUX's inner dim
  int64_t timeProjChannels = 128;
  int64_t numBranches = 19;
};

struct Affine {  // a Linear, a Conv2d or a GroupNorm: weight and bias
  at::Tensor w, b;
};
struct ResnetBlock {  // diffusers ResnetBlock2D
  Affine norm1, conv1, timeEmbProj, norm2, conv2, convShortcut;  // convShortcut: only where in ≠ out
};
struct Branch {  // one ControlNeXtModel
  Affine timeLinear1, timeLinear2;   // time_embedding.linear_1/2
  std::array<Affine, 3> embConv, embNorm;  // embedding.0/3/6 and .1/4/7
  std::array<ResnetBlock, 2> downRes;
  std::array<Affine, 2> downSample;  // down_sample.i.conv
  Affine midConv1, midNorm1, midConv2, midNorm2;  // mid_convs.0.0/2/3/4
  Affine outConv;                    // mid_convs.1
};

struct Model {
  Config cfg;
  std::vector<Branch> branches;
};

// Takes the official names `<i>.<param>` (the `module.` prefix already stripped); every tensor is name- and
// shape-checked; under a RandomInit missing tensors are drawn. ERR_CONFIG for an inconsistent config.
std::shared_ptr<Model> load(const Config& cfg, std::map<std::string, at::Tensor> weights, const std::string& source);
// A model of cfg with random weights (RandomInit's rules), drawn on device.
std::shared_ptr<Model> random(const Config& cfg, c10::Device device, at::ScalarType dtype, uint64_t seed);
// hint [B, 3, 16h, 16w] in [−1, 1], timestep [B] or a scalar (FLUX's 0..1 value; the branches see 1000·t) →
// [B, numBranches, h·w, D], tokens row-major. Plain ATen ops, in computeDtype (parameters are cast inside), so
// that it is differentiable w.r.t. parameters that require grad.
at::Tensor forward(const Model& m, const at::Tensor& hint, const at::Tensor& timestep, at::ScalarType computeDtype);
// The weights under their official names (the tensors themselves, not copies).
std::map<std::string, at::Tensor> weights(const Model& m);
// Every parameter by its official name (pointers into the model, so that updates land in place).
std::vector<std::pair<std::string, at::Tensor*>> parameters(Model& m);
// The number of parameter elements.
int64_t parameterCount(const Model& m);

}  // namespace x2i::lightcontrol
