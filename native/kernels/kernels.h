// CUDA kernels (native/kernels/*.cu, compiled where LibTorch has CUDA and nvcc is found; X2I_CUDA_KERNELS is then
// defined). Every kernel has a LibTorch composite twin that runs elsewhere and is what it is tested against.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace x2i::kernels {

// One stretch of tokens of a joint attention: its fused projection output qkv [B, rows, ≥ 3·hidden] (the
// q, k, v columns first; last dim contiguous) and the QK-RMSNorm scales [hd] of its stream.
struct QkvSegment {
  at::Tensor qkv, qScale, kScale;
};

// q, k = RoPE(RMSNorm(·)·scale), v copied, each [B, heads, Σ rows, hd] contiguous, segments in order along
// the sequence. cos, sin [Σ rows, hd/2] float32. Float32 math, one rounding.
std::array<at::Tensor, 3> qkvRopeForward(const std::vector<QkvSegment>& segs, const at::Tensor& cos,
                                         const at::Tensor& sin, int64_t heads, double eps);
// The gradients of each segment's qkv [B, rows, 3·hidden] (the scales are frozen: no gradient).
std::vector<at::Tensor> qkvRopeBackward(const std::vector<QkvSegment>& segs, const at::Tensor& cos,
                                        const at::Tensor& sin, int64_t heads, double eps, const at::Tensor& dq,
                                        const at::Tensor& dk, const at::Tensor& dv);

}  // namespace x2i::kernels

namespace x2i::kernels {

// The distillation loss of every row of student/teacher [..., D] in one pass (divergence 0 rkl, 1 kl, 2 js,
// 3 mse on raw features; float32, bfloat16 or float16, 2 ≤ D ≤ 16384): term (0-dim float32 on the device)
// = termScale·Σ rows' terms, and grad = incoming (if defined) + gradScale·d Σ rows / d student, in the
// student's dtype. Where the term is not finite the gradient is the incoming one (or zeros).
bool distillRowsSupported(int64_t D);
std::pair<at::Tensor, at::Tensor> distillRows(const at::Tensor& student, const at::Tensor& teacher,
                                              const at::Tensor& incoming, int divergence, double temperature,
                                              double eps, double gradScale, double termScale);

}  // namespace x2i::kernels

namespace x2i::kernels {

// The CUDA caching allocator's bytes on one device: now and the peak since the last reset.
struct DeviceMemory {
  int64_t allocated, peakAllocated, reserved, peakReserved;
};
DeviceMemory cudaMemory(int device);
void cudaResetPeakMemory(int device);
// Returns the cached, unused blocks to the driver (torch.cuda.empty_cache), e.g. before another process runs.
void cudaEmptyCache();
// The device's memory in bytes (cudaMemGetInfo's total).
int64_t cudaTotalMemory(int device);
// The caching allocator refuses to hold more than fraction × total on the device (an out-of-memory error after it
// has freed its cache; torch.cuda.set_per_process_memory_fraction); 1 lifts the cap.
void cudaSetMemoryFraction(int device, double fraction);
// The device's compute capability as major · 10 + minor (89: Ada, 90: Hopper), asked once per device.
int computeCapability(int device);

}  // namespace x2i::kernels

namespace x2i::kernels {

// Unfused LoRA in inference (kernels/low_rank.cu; its LibTorch twin is lora::lowRankComposite):
//   out[i, j] = epilogue(y[i, j] + k · Σ_r u[i, r] · up[j, r])
// y [M, N], u [M, R], out [M, N]: 2-D with unit column stride, any row stride (y and u are column blocks of one
// GEMM's output); up [N, R] contiguous; mask (optional, int32, R ≤ 512): per 64-column tile from maskOffset, bit c
// set unless up's rank columns [16c, 16c + 16) are zero there. Epilogues: None; GeluTanh; Gated: res + gate · v
// with res [M, N] and gate [M / rowsPerGate, N] (one gate row per batch sample). Float32 math, one rounding.
enum class LowRankEpilogue { None, GeluTanh, Gated };
void lowRankAdd(const at::Tensor& y, const at::Tensor& u, const at::Tensor& up, const at::Tensor& mask,
                int64_t maskOffset, double k, LowRankEpilogue epi, const at::Tensor& res, const at::Tensor& gate,
                int64_t rowsPerGate, const at::Tensor& out);

}  // namespace x2i::kernels

namespace x2i::kernels {

// FP8 activations (kernels/fp8.cu; its twin is fp8::quantizeRows(x, twin = true)): x [M, K] (bf16, fp16, float32;
// unit column stride) → q [M, K] float8_e4m3fn = round(x / s) and s [M, 1] float32 = max(|row|, 1e-12) / 448; with
// colScale [K] (float32), x·colScale in float32 in place of x.
std::pair<at::Tensor, at::Tensor> quantizeRowsE4m3(const at::Tensor& x, const at::Tensor& colScale = {});
// xᵀ, contiguous, for 2-D CUDA tensors of 1-byte elements (FP8 weights; kernels/fp8.cu; its twin x.t().contiguous(),
// which also serves shapes the kernel does not take: widths not multiples of 4).
at::Tensor transposeBytes(const at::Tensor& x);

// The tanh GELU on column ranges of a layer's output (kernels/gelu.cu; twins at::gelu(x, "tanh") and
// at::gelu_backward(dy, x, "tanh")): x [.., n] CUDA bf16 / fp16 / float32 with unit column stride and leading dims
// that merge into one row stride (geluTanhRowsTakes); the result in a new tensor or in out (same shape, rows may be
// strided); the backward's dx is a new contiguous tensor.
bool geluTanhRowsTakes(const at::Tensor& x);
at::Tensor geluTanhRows(const at::Tensor& x, const at::Tensor& out = {});
at::Tensor geluTanhRowsBackward(const at::Tensor& dy, const at::Tensor& x);

}  // namespace x2i::kernels
