// LoRA on FLUX's frozen linear layers (Hu et al. 2021, PEFT's formula). For a layer y = W x + b with adapters a:
//   y = W x + b + Σ_a (s_a − f_a) · Σ_j P_j (c_j · B_j (A_j x))
// s_a: the adapter's scale (0: off), f_a: the scale fused into W (0: none), c_j = alpha / r of part j, P_j: the
// part's rows [row_j, row_j + rows_j) of the output (a fused layer, qkv or linear1, holds one part per diffusers
// module, or one part over all rows). Fusing adds s_a · ΔW_a to W (ΔW_a = Σ_j P_j c_j B_j A_j, in float32), unfusing
// subtracts it again: W is restored up to one rounding of the model dtype.
// Targets are named as in the BFL checkpoint layout ("double_blocks.3.img_attn.qkv", "single_blocks.0.linear1",
// "final_layer.linear", ...); lib/models/lora.ts maps the diffusers, kohya and XLabs names onto them.
#pragma once
#include "models/flux.h"

#include <map>
#include <string>
#include <vector>

namespace x2i::flux {
// A slot's parts as one down-projection [Σr, in] and one block-diagonal up-projection [out, Σr] (scales folded in),
// in dtype dt.
std::pair<at::Tensor, at::Tensor> lowRank(const LoraSlot& slot, int64_t out, at::ScalarType dt);
}  // namespace x2i::flux

namespace x2i::lora {

// Every linear layer of the model by its BFL name.
std::map<std::string, flux::Linear*> linears(flux::Model& m);

// One part of a new adapter: its target layer, first row and low-rank pair. With A and B undefined, a trainable
// part of rank `rank` over `rows` rows (rows <= 0: to the layer's last row) is made: A uniform ±1/√in (PEFT's
// kaiming_uniform(a=√5)), B zeros, in float32.
struct PartSpec {
  std::string target;
  int64_t row = 0, rows = 0, rank = 0;
  at::Tensor A, B;
  double scale = 1;  // alpha / r
};

// Adds adapter `name` (a new name) with its parts: shapes checked against the targets (errors name the target and
// both shapes), parts of one layer may not overlap. Given pairs are cast to the model's device and dtype; trainable
// adapters keep float32 leaves on the model's device.
void add(flux::Model& m, const std::string& name, const std::vector<PartSpec>& parts, double scale, bool trainable,
         uint64_t seed);
// Removes an adapter (unfused first when fused); every adapter when `name` is empty.
void remove(flux::Model& m, const std::string& name);
// Sets adapter scales; an unknown name is an error naming the adapters there are.
void applyScales(const flux::Model& m, const std::map<std::string, double>& scales);
// Merges every adapter with a non-zero scale into the weights at its current scale / takes them out again.
void fuse(flux::Model& m);
void unfuse(flux::Model& m);

// The parts of an adapter with their targets, in a fixed order (target name, then row).
struct NamedPart {
  std::string target;
  flux::LoraPart* part;
};
std::vector<NamedPart> parts(flux::Model& m, const std::string& name);

// Bit c of entry t: up's rank columns [16c, 16c + 16) have a non-zero in output rows [64t, 64t + 64); on up's device,
// int32 (kernels::lowRankAdd skips the zero chunks of a fused layer's block-diagonal parts); undefined for R > 512.
at::Tensor chunkMask(const at::Tensor& up);

// The LibTorch twin of kernels::lowRankAdd (float32 math, float64 for float64 inputs): epilogue(y + k · u · upᵀ)
// with y, u [M, ·], up [N, R]; Gated: e.res [M, N] + e.gate [M / rowsPerGate, N] row-repeated.
at::Tensor lowRankComposite(const at::Tensor& y, const at::Tensor& u, const at::Tensor& up, double k,
                            const flux::Epilogue& e, int64_t rowsPerGate);

}  // namespace x2i::lora
