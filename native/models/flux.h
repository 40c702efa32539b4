// The FLUX.1 MM-DiT (black-forest-labs/flux's reference model, followed op for op in flux.cc). Weights live
// in the BFL layout (fused qkv and linear1, final modulation as (shift, scale)); diffusers checkpoints are
// mapped on load.
#pragma once
#include "core/dtype.h"

#include <functional>
#include <map>

namespace x2i::flux {

struct Config {
  int64_t inChannels = 64, outChannels = 64, hidden = 3072, heads = 24, jointDim = 4096, pooledDim = 768;
  int64_t depth = 19, depthSingle = 38;
  bool guidance = true;
  std::vector<int64_t> axes{16, 56, 56};
  double theta = 10000;
  // 'fast': fused LibTorch kernels (LayerNorm with the modulation as its affine, fused RMSNorm, RoPE as one
  // complex multiply, gate·x + residual in one op), rounding once where the reference rounds per op;
  // 'reference': the BFL op chain, one rounding per op, as the reference.
  bool fast = true;
  int64_t headDim() const { return hidden / heads; }
};

struct Linear {
  at::Tensor w, b;
  at::Tensor operator()(const at::Tensor& x) const { return at::linear(x, w, b); }
};
struct Stream {  // one side (img or txt) of a double-stream block
  Linear mod, qkv, proj, mlp0, mlp2;
  at::Tensor qNorm, kNorm;
};
struct DoubleBlock {
  Stream img, txt;
};
struct SingleBlock {
  Linear mod, linear1, linear2;
  at::Tensor qNorm, kNorm;
};

struct Model {
  Config cfg;
  Linear imgIn, txtIn, timeIn1, timeIn2, guidanceIn1, guidanceIn2, vectorIn1, vectorIn2, finalMod, finalLinear;
  std::vector<DoubleBlock> doubles;
  std::vector<SingleBlock> singles;
  at::Tensor timeFreqs;  // the 128 sinusoid frequencies, computed once on the CPU (as BFL does), on the device
  c10::Device device() const { return imgIn.w.device(); }
  at::ScalarType dtype() const { return imgIn.w.scalar_type(); }

  // Calls fn(at::Tensor&) on every parameter (undefined ones too: the absent guidance embedder).
  template <class F>
  void forEachParameter(F&& fn) {
    for (Linear* l : {&imgIn, &txtIn, &timeIn1, &timeIn2, &guidanceIn1, &guidanceIn2, &vectorIn1, &vectorIn2, &finalMod,
                      &finalLinear})
      fn(l->w), fn(l->b);
    for (auto& b : doubles)
      for (Stream* s : {&b.img, &b.txt}) {
        for (Linear* l : {&s->mod, &s->qkv, &s->proj, &s->mlp0, &s->mlp2}) fn(l->w), fn(l->b);
        fn(s->qNorm), fn(s->kNorm);
      }
    for (auto& b : singles) {
      for (Linear* l : {&b.mod, &b.linear1, &b.linear2}) fn(l->w), fn(l->b);
      fn(b.qNorm), fn(b.kNorm);
    }
  }
};

// Builds a model from named tensors in either layout ("bfl" or "diffusers"); every key is checked against
// the config: missing, unexpected and wrongly shaped tensors are errors naming the tensor and both shapes.
std::shared_ptr<Model> load(const Config& cfg, std::map<std::string, at::Tensor> weights, const std::string& layout,
                            const std::string& source);

// A model of the config's shapes with PyTorch's default Linear init (uniform ±1/√fan_in; QK-norm scales 1),
// drawn in float32 on the target device from `seed`, then cast: for benchmarks, tests and demos.
std::shared_ptr<Model> random(const Config& cfg, c10::Device device, at::ScalarType dtype, uint64_t seed);

struct Inputs {
  at::Tensor hiddenStates, encoderHiddenStates, pooledProjections, timestep, guidance, imgIds, txtIds;
};

// The X2I distillation taps, produced in order while the forward runs. A hook may replace the tap it is
// given (the training step passes each student tap through its loss node); the forward goes on with it.
enum class Tap { DoubleImg, DoubleTxt, Single };
using TapHook = std::function<void(Tap, int64_t block, at::Tensor&)>;

// Checks shapes against the model and casts/moves the inputs to the model's device and dtype.
Inputs prepare(const Model& m, Inputs in);
// The velocity [B, N, out]; taps (if any) go to the hook as they are produced. With `checkpoint` (and grad
// mode on), each block keeps only its inputs and is recomputed during the backward pass.
at::Tensor forward(const Model& m, const Inputs& in, const TapHook& tap = nullptr, bool checkpoint = false);

}  // namespace x2i::flux
