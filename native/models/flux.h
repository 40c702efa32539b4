// The FLUX.1 MM-DiT (black-forest-labs/flux's reference model, followed op for op in flux.cc). Weights live
// in the BFL layout (fused qkv and linear1, final modulation as (shift, scale)); diffusers checkpoints are
// mapped on load.
#pragma once
#include "core/dtype.h"

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

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
  // t·1000 and guidance·1000 into the sinusoids in float32 (true) or first rounded to the model dtype (false, the
  // default: diffusers' and BFL's parity; bf16 holds 752 for 750 and 3504 for 3500)
  bool exactTimesteps = false;
  // the block layers' weights in FP8 e4m3 with per-row scales, their GEMMs in FP8 (models/fp8.h)
  bool fp8 = false;
  // each FP8 weight also kept transposed, the input gradient's operand (no transposition per backward; twice the
  // FP8 weights' memory)
  bool fp8Transposed = false;
  int64_t headDim() const { return hidden / heads; }
};

// LoRA adapters on the frozen linear layers (models/lora.h has the operations on them). An adapter's parts each
// cover a block of output rows: a fused layer (qkv, linear1) holds one part per diffusers module (to_q, to_k,
// to_v, proj_mlp) or one part over all its rows (kohya's fused adapters).
struct LoraAdapter {
  std::string name;
  double scale = 1;       // the user's scale (0: off)
  double fusedScale = 0;  // the scale merged into the weights by fuse (0: not fused)
  bool trainable = false; // parts are float32 leaves trained by train/finetune.cc
};
struct LoraPart {
  int64_t row = 0;  // first output row
  at::Tensor A, B;  // A [r, in], B [rows, r]
  double scale = 1; // alpha / r
};
struct LoraSlot {
  std::shared_ptr<LoraAdapter> adapter;
  std::vector<LoraPart> parts;
  // the parts as one down-projection [Σr, in] and one block-diagonal up-projection [out, Σr] with each part's
  // scale folded in; cached for frozen adapters, rebuilt every call for trainable ones (autograd reaches the parts)
  at::Tensor down, up;
  // frozen adapters: the first column of u in the stacked GEMM's output (Linear::stack), and up's chunk mask on the
  // device (kernels::lowRankAdd; undefined when Σr > 512)
  int64_t column = 0;
  at::Tensor mask;
};

// What runs in the same pass as an adapted layer's low-rank term on CUDA (kernels::lowRankAdd).
struct Epilogue {
  enum Kind { None, GeluTanh, Gated } kind = None;
  int64_t from = 0, n = -1;  // the output columns [from, from + n) (n < 0: to the end)
  at::Tensor res, gate;      // Gated: res [B, L, n] + gate [B, 1, n] · y
  at::Tensor out;            // where the range's result goes ([B, L, n], rows may be strided); default: a new tensor
};

struct Linear {
  at::Tensor w, b;
  // FP8 layers (models/fp8.h): w8 [out, in] float8_e4m3fn and per-row scales w8Scale [out] float32 (w ≈ w8 · scale);
  // w is then undefined
  at::Tensor w8, w8Scale;
  at::Tensor w8t;  // w8 transposed [in, out] (Config::fp8Transposed; else undefined: the backward transposes per call)
  std::vector<LoraSlot> lora;
  // With frozen adapters: W and their down-projections in one [out + Σr, in] storage (w and each slot's down are
  // views of it), the bias likewise, so that one GEMM gives W x + b and every u = down · x (models/lora.cc)
  at::Tensor stack, stackBias;
  // W x + b, plus each adapter's low-rank term at (scale − fusedScale) (models/lora.cc)
  at::Tensor operator()(const at::Tensor& x) const;
  // The output's column ranges, each through its epilogue; the adapters' low-rank terms added in the same pass
  // where the stacked path applies (CUDA, frozen adapters, no autograd), else composed from LibTorch ops.
  std::vector<at::Tensor> operator()(const at::Tensor& x, const std::vector<Epilogue>& ranges, bool fast) const;
  int64_t outFeatures() const { return (w.defined() ? w : w8).size(0); }
  int64_t inFeatures() const { return (w.defined() ? w : w8).size(1); }
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

struct StepGraph;  // a captured denoising step (sample/euler.cc)

struct Model {
  Config cfg;
  Linear imgIn, txtIn, timeIn1, timeIn2, guidanceIn1, guidanceIn2, vectorIn1, vectorIn2, finalMod, finalLinear;
  std::vector<DoubleBlock> doubles;
  std::vector<SingleBlock> singles;
  at::Tensor timeFreqs;  // the 128 sinusoid frequencies, computed once on the CPU (as BFL does), on the device
  std::map<std::string, std::shared_ptr<LoraAdapter>> adapters;  // by name (models/lora.h)
  // Bumped whenever weights move to new storage (adapters stacked or unstacked, fused, unfused): what a captured
  // CUDA graph read is then gone, and sample/euler.cc captures again.
  uint64_t weightsVersion = 0;
  mutable std::shared_ptr<StepGraph> stepGraph;  // the last captured denoising step (sample/euler.cc)
  c10::Device device() const { return imgIn.w.device(); }
  at::ScalarType dtype() const { return imgIn.w.scalar_type(); }

  // Calls fn(Linear&) on every linear layer of the double and single blocks.
  template <class F>
  void forEachBlockLinear(F&& fn) {
    for (auto& b : doubles)
      for (Stream* s : {&b.img, &b.txt})
        for (Linear* l : {&s->mod, &s->qkv, &s->proj, &s->mlp0, &s->mlp2}) fn(*l);
    for (auto& b : singles)
      for (Linear* l : {&b.mod, &b.linear1, &b.linear2}) fn(*l);
  }
  // Calls fn(Linear&) on every linear layer.
  template <class F>
  void forEachLinear(F&& fn) {
    for (Linear* l : {&imgIn, &txtIn, &timeIn1, &timeIn2, &guidanceIn1, &guidanceIn2, &vectorIn1, &vectorIn2, &finalMod,
                      &finalLinear})
      fn(*l);
    forEachBlockLinear(fn);
  }
  // Calls fn(at::Tensor&) on every parameter in the model dtype (undefined ones too: the absent guidance embedder,
  // the w of FP8 layers; their w8 / w8Scale are not visited).
  template <class F>
  void forEachParameter(F&& fn) {
    forEachLinear([&](Linear& l) { fn(l.w), fn(l.b); });
    for (auto& b : doubles)
      for (Stream* s : {&b.img, &b.txt}) fn(s->qNorm), fn(s->kNorm);
    for (auto& b : singles) fn(b.qNorm), fn(b.kNorm);
  }
};

// Builds a model from named tensors in either layout ("bfl" or "diffusers"); every key is checked against
// the config: missing, unexpected and wrongly shaped tensors are errors naming the tensor and both shapes.
// With `device`, each tensor moves there as the model takes it (with Config::fp8, a block layer's weight is quantized
// on the device as it arrives: the model's full-precision weights are never there at once).
std::shared_ptr<Model> load(const Config& cfg, std::map<std::string, at::Tensor> weights, const std::string& layout,
                            const std::string& source, std::optional<c10::Device> device = std::nullopt);

// A model of the config's shapes with PyTorch's default Linear init (uniform ±1/√fan_in; QK-norm scales 1),
// drawn in float32 on the target device from `seed`, then cast: for benchmarks, tests and demos.
std::shared_ptr<Model> random(const Config& cfg, c10::Device device, at::ScalarType dtype, uint64_t seed);

struct Inputs {
  at::Tensor hiddenStates, encoderHiddenStates, pooledProjections, timestep, guidance, imgIds, txtIds;
  // LightControl: [B, n, N, D] residuals added to the image stream after double blocks 0..n−1, times controlScale
  at::Tensor controlResiduals;
  double controlScale = 1;
  // adapter scales for this call (absent adapters keep theirs); applied by prepare()
  std::map<std::string, double> loraScales;
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
