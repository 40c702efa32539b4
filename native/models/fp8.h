// FP8 (e4m3) weights for FLUX's frozen block layers: each weight row quantized with its own scale at load
// (w ≈ w8 · scale[row]), each activation row (token) with its own scale at run time; the GEMM on FP8 tensor cores
// (at::_scaled_mm, compute capability ≥ 8.9, bf16 models) with the bias in its epilogue.
// Elsewhere (CPUs, older GPUs, fp16, odd widths) the same quantized numbers go through a dequantized matmul: the twin the
// CUDA path is tested against. The input gradient (the frozen student's backward, LoRA training) runs on FP8 tensor
// cores where the forward does: the output gradient times the weight's row scales, quantized per row, times the weight
// transposed; elsewhere (and with X2I_FP8_BACKWARD=dequantize) it multiplies by the dequantized weights.
#pragma once
#include "models/flux.h"

namespace x2i::fp8 {

constexpr double kE4m3Max = 448;  // the largest finite float8_e4m3fn

// w [out, in] (any floating dtype, any device) → w8 [out, in] float8_e4m3fn and scale [out] float32 on `device`.
std::pair<at::Tensor, at::Tensor> quantizeWeight(const at::Tensor& w, c10::Device device);
// Quantizes the layer in place (w dropped, w8 / w8Scale set; the bias moved to `device`). LoRA adapters stay
// unfused on top.
void quantize(flux::Linear& l, c10::Device device);
// Keeps w8 transposed too (l.w8t [in, out]): the input gradient's operand on FP8 tensor cores, made once instead of
// at every backward; only where the backward of a `dtype` model can take that path (elsewhere it is never read).
void keepTransposed(flux::Linear& l, at::ScalarType dtype);

// x [M, K] → x8 [M, K] float8_e4m3fn and scale [M, 1] float32 (per-row amax / 448): the CUDA kernel where built,
// else (or with `twin`) LibTorch ops. With colScale [K]: x times it (in float32) is quantized.
std::pair<at::Tensor, at::Tensor> quantizeRows(const at::Tensor& x, bool twin = false, const at::Tensor& colScale = {});

// W x + b of an FP8 layer, x [.., in] in the model dtype → [.., out]; differentiable with respect to x.
at::Tensor linear(const flux::Linear& l, const at::Tensor& x);
// The same product in `dt` from the dequantized operands (the reference; float64 in tests).
at::Tensor linearTwin(const flux::Linear& l, const at::Tensor& x, at::ScalarType dt);
// The FP8 backward's input gradient in `dt` from its quantized operands: q(dy · diag(scale)) · w8 (the reference; float64
// in tests).
at::Tensor inputGradientTwin(const flux::Linear& l, const at::Tensor& dy, at::ScalarType dt);
// Whether the backward multiplies dy [.., out] by a layer of inFeatures columns on FP8 tensor cores (usesScaledMm's
// conditions for dy and X2I_FP8_BACKWARD not 'dequantize').
bool backwardUsesScaledMm(int64_t inFeatures, const at::Tensor& dy);
// Whether linear() multiplies x by a layer of outFeatures rows on FP8 tensor cores (CUDA kernels built, bf16 x, widths multiples of 16,
// compute capability ≥ 8.9, X2I_NO_KERNELS unset); else the twin runs.
bool usesScaledMm(int64_t outFeatures, const at::Tensor& x);
// Whether this build has the activation kernel (kernels/fp8.cu).
bool rowKernelBuilt();

}  // namespace x2i::fp8
