// FP8 for the FP8 linear layers (models/fp8.cc):
// - activations (and, in the backward, the output gradient): each row of x [M, K], optionally times a float32 scale per
//   column first (the weight's row scales, folded into the gradient), scaled by its own s = max|row| · (1/448) and rounded
//   to float8_e4m3fn (nearest even), in one kernel, a block per row. Rows of bf16 / fp16 up to 24576 wide stay in
//   registers: every 16-byte load of the row is issued before the max is taken, so HBM sees one read of x and one
//   write of q; other rows (wider, float32, K % 8 ≠ 0, rows or column factors not 16-byte aligned) are read twice
//   (the second read from cache). Bit for bit the LibTorch twin
//   fp8::quantizeRows(x, twin = true): s times the float nearest 1/448, x / s divided.
// - the weight transposed for the backward's GEMM (FP8 tensor cores take B column-major only): 64 × 64 byte tiles
//   through shared memory, 4 bytes per thread access.
#include "kernels/kernels.h"
#include "kernels/vec8.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <type_traits>

namespace x2i::kernels {
namespace {

constexpr int kThreads = 256;
using vec8::kVec;
using vec8::load8;

// nearest even, finite values beyond ±448 saturated, NaN kept (as the twin's clamp and cast)
__device__ __forceinline__ uint8_t e4m3(float v) { return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3); }

// max that propagates NaN (as torch.amax; fmaxf would drop it)
__device__ __forceinline__ float maxNan(float a, float b) { return a != a || a > b ? a : b; }

// the block's max of v (every thread gets it)
template <int THREADS = kThreads>
__device__ __forceinline__ float blockMax(float v) {
  __shared__ float part[THREADS / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = maxNan(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  v = part[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) v = maxNan(v, part[w]);
  return v;
}

// s = max|row| · (the float nearest 1/448), as LibTorch divides a tensor by a scalar; NaN rows stay NaN
__device__ __forceinline__ float rowScale(float m) { return (m != m ? m : fmaxf(m, 1e-12f)) * (1.f / 448.f); }

// A row of a 2-byte type held in registers: thread t owns the 16-byte chunks t, t + kRowThreads, ... (at most C of
// them); all loads are in flight before the max. K % 8 == 0 and 16-byte aligned rows.
constexpr int kRowThreads = 128;
template <typename T, int C>
__global__ void __launch_bounds__(kRowThreads) quantizeRowsInRegisters(const T* __restrict__ x, int64_t ldx, int64_t K,
                                                                       const float* __restrict__ cols,
                                                                       uint8_t* __restrict__ q, float* __restrict__ scale) {
  static_assert(sizeof(T) == 2, "16-byte chunks of eight 2-byte elements");
  const T* row = x + int64_t(blockIdx.x) * ldx;
  uint8_t* out = q + int64_t(blockIdx.x) * K;
  auto col = [&](int c) { return (int64_t(c) * kRowThreads + threadIdx.x) * kVec; };
  uint4 raw[C];
#pragma unroll
  for (int c = 0; c < C; ++c)
    if (col(c) < K) raw[c] = *reinterpret_cast<const uint4*>(row + col(c));
  // the chunk's eight values as float32, times their column factors
  auto values = [&](int c, float (&v)[kVec]) {
    const T* h = reinterpret_cast<const T*>(&raw[c]);
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] = float(h[e]);
    if (cols) {
      float f[kVec];
      load8(cols + col(c), f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[e] *= f[e];
    }
  };
  float amax = 0;
#pragma unroll
  for (int c = 0; c < C; ++c)
    if (col(c) < K) {
      float v[kVec];
      values(c, v);
#pragma unroll
      for (int e = 0; e < kVec; ++e) amax = maxNan(fabsf(v[e]), amax);
    }
  const float s = rowScale(blockMax<kRowThreads>(amax));
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
#pragma unroll
  for (int c = 0; c < C; ++c)
    if (col(c) < K) {
      float v[kVec];
      values(c, v);
      uint2 packed;
      uint8_t* b = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
      for (int e = 0; e < kVec; ++e) b[e] = e4m3(v[e] / s);
      *reinterpret_cast<uint2*>(out + col(c)) = packed;
    }
}

// VEC: K % 8 == 0 and 16-byte aligned rows (8 elements per step), else one element per step
// cols: a float32 factor per column (nullptr: none), applied in float32 before the max
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) quantizeRowsKernel(const T* __restrict__ x, int64_t ldx, int64_t K,
                                                               const float* __restrict__ cols, uint8_t* __restrict__ q,
                                                               float* __restrict__ scale) {
  const T* row = x + int64_t(blockIdx.x) * ldx;
  auto scaled = [cols](float v, int64_t j) { return cols ? v * cols[j] : v; };
  uint8_t* out = q + int64_t(blockIdx.x) * K;
  const int64_t step = VEC ? kVec : 1;
  float amax = 0;
  for (int64_t j = int64_t(threadIdx.x) * step; j < K; j += int64_t(kThreads) * step) {
    if constexpr (VEC) {
      float v[kVec];
      load8(row + j, v);
#pragma unroll
      for (int c = 0; c < kVec; ++c) amax = maxNan(fabsf(scaled(v[c], j + c)), amax);
    } else {
      amax = maxNan(fabsf(scaled(float(row[j]), j)), amax);
    }
  }
  const float s = rowScale(blockMax(amax));
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
  for (int64_t j = int64_t(threadIdx.x) * step; j < K; j += int64_t(kThreads) * step) {
    if constexpr (VEC) {
      float v[kVec];
      load8(row + j, v);
      uint2 packed;
      uint8_t* b = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
      for (int c = 0; c < kVec; ++c) b[c] = e4m3(scaled(v[c], j + c) / s);
      *reinterpret_cast<uint2*>(out + j) = packed;
    } else {
      out[j] = e4m3(scaled(float(row[j]), j) / s);
    }
  }
}

// out [C, R] = in [R, C]ᵀ for bytes, R and C multiples of 4 and 4-byte aligned rows: a block moves a 64 × 64 tile;
// each thread reads 4 consecutive bytes of an input row and writes 4 consecutive bytes of an output row
constexpr int kTile = 64;
__global__ void __launch_bounds__(kThreads) transposeBytesKernel(const uint8_t* __restrict__ in, int64_t R, int64_t C,
                                                                 uint8_t* __restrict__ out) {
  __shared__ __align__(4) uint8_t tile[kTile][kTile + 4];  // rows 4-byte aligned; the padding spreads the column reads over banks
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  const int tx = threadIdx.x % (kTile / 4), ty = threadIdx.x / (kTile / 4);  // 16 words across, 16 rows per pass
  constexpr int kRows = kThreads / (kTile / 4);
  for (int i = ty; i < kTile; i += kRows) {
    const int64_t r = r0 + i, c = c0 + 4 * tx;
    if (r < R && c < C) *reinterpret_cast<uint32_t*>(&tile[i][4 * tx]) = *reinterpret_cast<const uint32_t*>(in + r * C + c);
  }
  __syncthreads();
  for (int i = ty; i < kTile; i += kRows) {
    const int64_t c = c0 + i, r = r0 + 4 * tx;  // output row c, columns r .. r + 3 = tile rows 4·tx .. 4·tx + 3
    if (c < C && r < R)
      *reinterpret_cast<uint32_t*>(out + c * R + r) = uint32_t(tile[4 * tx][i]) | uint32_t(tile[4 * tx + 1][i]) << 8 |
                                                      uint32_t(tile[4 * tx + 2][i]) << 16 | uint32_t(tile[4 * tx + 3][i]) << 24;
  }
}

}  // namespace

std::pair<at::Tensor, at::Tensor> quantizeRowsE4m3(const at::Tensor& x, const at::Tensor& colScale) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "quantizeRowsE4m3: x must be a 2-D CUDA tensor");
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  const at::Tensor cols = colScale.defined() ? colScale.to(xc.device(), at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!cols.defined() || cols.numel() == xc.size(1), "quantizeRowsE4m3: ", xc.size(1), " column scales expected, found ", cols.numel());
  const c10::cuda::CUDAGuard guard(xc.device());
  const int64_t M = xc.size(0), K = xc.size(1);
  at::Tensor q = at::empty({M, K}, xc.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor s = at::empty({M, 1}, xc.options().dtype(at::kFloat));
  if (M == 0) return {q, s};
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    const bool vec = K % kVec == 0 && xc.stride(0) % kVec == 0 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
    auto* qp = reinterpret_cast<uint8_t*>(q.data_ptr());
    const float* cp = cols.defined() ? cols.data_ptr<float>() : nullptr;
    if constexpr (sizeof(T) == 2) {
      const int64_t chunks = (K / kVec + kRowThreads - 1) / kRowThreads;  // per thread
      auto inRegisters = [&](auto c) {
        if (!vec || chunks > decltype(c)::value || reinterpret_cast<uintptr_t>(cp) % 16 != 0) return false;
        quantizeRowsInRegisters<T, decltype(c)::value>
            <<<unsigned(M), kRowThreads, 0, stream>>>(p, xc.stride(0), K, cp, qp, s.data_ptr<float>());
        return true;
      };
      using std::integral_constant;
      if (inRegisters(integral_constant<int, 2>{}) || inRegisters(integral_constant<int, 4>{}) ||
          inRegisters(integral_constant<int, 8>{}) || inRegisters(integral_constant<int, 12>{}) ||
          inRegisters(integral_constant<int, 16>{}) || inRegisters(integral_constant<int, 24>{}))
        return;
    }
    if (vec) quantizeRowsKernel<T, true><<<unsigned(M), kThreads, 0, stream>>>(p, xc.stride(0), K, cp, qp, s.data_ptr<float>());
    else quantizeRowsKernel<T, false><<<unsigned(M), kThreads, 0, stream>>>(p, xc.stride(0), K, cp, qp, s.data_ptr<float>());
  };
  switch (xc.scalar_type()) {
    case at::kBFloat16: launch(xc.data_ptr<at::BFloat16>()); break;
    case at::kHalf: launch(xc.data_ptr<at::Half>()); break;
    case at::kFloat: launch(xc.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "quantizeRowsE4m3: bf16, fp16 or float32 (other dtypes run the LibTorch twin), found ", xc.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, s};
}

at::Tensor transposeBytes(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.element_size() == 1, "transposeBytes: x must be a 2-D CUDA tensor of 1-byte elements");
  const int64_t R = x.size(0), C = x.size(1);
  const int64_t tilesR = (R + kTile - 1) / kTile, tilesC = (C + kTile - 1) / kTile;
  const bool fits = x.is_contiguous() && R % 4 == 0 && C % 4 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 == 0 &&
                    tilesR <= 65535 && tilesC <= INT32_MAX;
  if (!fits) return x.t().contiguous();  // LibTorch's copy: the kernel's twin
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({C, R}, x.options());
  if (R == 0 || C == 0) return out;
  transposeBytesKernel<<<dim3(unsigned(tilesC), unsigned(tilesR)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint8_t*>(x.data_ptr()), R, C, reinterpret_cast<uint8_t*>(out.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace x2i::kernels
