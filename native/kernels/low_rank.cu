// Unfused LoRA's low-rank term added in one pass over a frozen layer's output, with what follows the layer
// (nothing, the tanh GELU, or the gated residual) in the same pass (models/lora.cc):
//   out[i, j] = epilogue(y[i, j] + k · Σ_r u[i, r] · up[j, r])
// A block computes a 64 × 64 tile; u's and up's rank columns go through shared memory 16 at a time (chunks that are
// zero in up for the tile's columns are skipped: a fused layer's parts are block-diagonal).
//   - tensorCoreKernel (bf16 / fp16, rank a multiple of 16, 16-byte aligned rows; sm_80+): the block's reads of y
//     (and the residual) are issued first and stay in flight while its four warps form u · upᵀ on tensor cores
//     (WMMA 16 × 16 × 16, float32 accumulators, one 16-row slice per warp); the products go through shared memory
//     so that every thread then reads, applies the epilogue and writes 16-byte runs of whole rows. The pass is bound
//     by memory, as a copy is.
//   - lowRankKernel (float32, other ranks, unaligned views): the same on CUDA cores, a thread 2 rows × 8 columns.
#include "kernels/kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

namespace x2i::kernels {
namespace {

constexpr int kTile = 64, kChunk = 16, kThreads = 256, kCols = 8, kRows = 2;  // a thread: 2 rows × 8 columns

template <typename T>
struct Args {
  const T *y, *u, *up, *res, *gate;
  T* out;
  const int* mask;  // per column tile: bit c set when up's rank columns [16c, 16c + 16) are not all zero there
  int64_t M, N, R, ldy, ldu, ldres, ldgate, ldout, rowsPerGate;
  int maskOffset;   // the first column's tile in mask
  float k;
};

// Eight consecutive elements as float: one 16-byte load (two for float32) when the caller checked alignment (VEC).
template <bool VEC, typename T>
__device__ __forceinline__ void load8(const T* p, int64_t n, float (&v)[kCols]) {
  if constexpr (VEC) {
    if constexpr (sizeof(T) == 2) {
      uint4 raw = *reinterpret_cast<const uint4*>(p);
      const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int c = 0; c < 8; ++c) v[c] = float(h[c]);
    } else {
      const float4 f0 = reinterpret_cast<const float4*>(p)[0], f1 = reinterpret_cast<const float4*>(p)[1];
      v[0] = f0.x, v[1] = f0.y, v[2] = f0.z, v[3] = f0.w, v[4] = f1.x, v[5] = f1.y, v[6] = f1.z, v[7] = f1.w;
    }
  } else {
#pragma unroll
    for (int c = 0; c < 8; ++c) v[c] = c < n ? float(p[c]) : 0.f;
  }
}
template <bool VEC, typename T>
__device__ __forceinline__ void store8(T* p, int64_t n, const float (&v)[kCols]) {
  if constexpr (VEC) {
    if constexpr (sizeof(T) == 2) {
      uint4 raw;
      T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int c = 0; c < 8; ++c) h[c] = T(v[c]);
      *reinterpret_cast<uint4*>(p) = raw;
    } else {
      reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  } else {
#pragma unroll
    for (int c = 0; c < 8; ++c)
      if (c < n) p[c] = T(v[c]);
  }
}

// tanh-GELU; for bfloat16 outputs with the hardware tanh (its error is far below bfloat16's rounding)
template <typename T>
__device__ __forceinline__ float geluTanh(float x) {
  const float a = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  float t;
  if constexpr (std::is_same_v<T, c10::BFloat16>) asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(a));
  else t = tanhf(a);
  return 0.5f * x * (1.f + t);
}

template <typename T, int EPI, bool VEC>
__global__ void __launch_bounds__(kThreads, 3) lowRankKernel(Args<T> a) {
  __shared__ float us[kChunk][kTile + 4], ups[kChunk][kTile + 4];  // [rank column][row or output column]
  const int t = threadIdx.x, tx = t % 8, ty = t / 8;                 // columns tx·8.., rows ty·2..
  const int64_t col0 = int64_t(blockIdx.x) * kTile, row0 = int64_t(blockIdx.y) * kTile;
  const int64_t col = col0 + tx * kCols, n = a.N - col;
  // y (and the residual) are read first, so that their loads are in flight during the rank product
  float v[kRows][kCols] = {}, rs[kRows][kCols] = {};
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t row = row0 + ty * kRows + i;
    if (row < a.M && n > 0) {
      load8<VEC>(a.y + row * a.ldy + col, n, v[i]);
      if constexpr (EPI == int(LowRankEpilogue::Gated)) load8<VEC>(a.res + row * a.ldres + col, n, rs[i]);
    }
  }
  const unsigned bits = a.mask ? unsigned(a.mask[a.maskOffset + blockIdx.x]) : 0u;
  float acc[kRows][kCols] = {};
  for (int64_t c0 = 0; c0 < a.R; c0 += kChunk) {
    if (a.mask && !((bits >> (c0 / kChunk)) & 1u)) continue;  // the same for the whole block: no divergence at the barriers
    for (int e = t; e < kTile * kChunk; e += kThreads) {
      const int i = e / kChunk, r = e % kChunk;
      const int64_t row = row0 + i, c = col0 + i, rr = c0 + r;
      us[r][i] = row < a.M && rr < a.R ? float(a.u[row * a.ldu + rr]) : 0.f;
      ups[r][i] = c < a.N && rr < a.R ? float(a.up[c * a.R + rr]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kChunk; ++r) {
      const float2 uu = *reinterpret_cast<const float2*>(&us[r][ty * kRows]);
      const float4 p0 = *reinterpret_cast<const float4*>(&ups[r][tx * kCols]);
      const float4 p1 = *reinterpret_cast<const float4*>(&ups[r][tx * kCols + 4]);
      const float ua[kRows] = {uu.x, uu.y}, pa[kCols] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
#pragma unroll
      for (int i = 0; i < kRows; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(ua[i], pa[j], acc[i][j]);
    }
    __syncthreads();
  }
  if (n <= 0) return;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t row = row0 + ty * kRows + i;
    if (row >= a.M) break;
#pragma unroll
    for (int j = 0; j < kCols; ++j) v[i][j] = fmaf(a.k, acc[i][j], v[i][j]);
    if constexpr (EPI == int(LowRankEpilogue::GeluTanh)) {
#pragma unroll
      for (int j = 0; j < kCols; ++j) v[i][j] = geluTanh<T>(v[i][j]);
    } else if constexpr (EPI == int(LowRankEpilogue::Gated)) {
      float g[kCols];
      load8<VEC>(a.gate + (row / a.rowsPerGate) * a.ldgate + col, n, g);
#pragma unroll
      for (int j = 0; j < kCols; ++j) v[i][j] = fmaf(g[j], v[i][j], rs[i][j]);
    }
    store8<VEC>(a.out + row * a.ldout + col, n, v[i]);
  }
}


// ---- the tensor-core pass (bf16 / fp16)
template <typename T> struct Wmma;
template <> struct Wmma<c10::BFloat16> { using type = __nv_bfloat16; };
template <> struct Wmma<c10::Half> { using type = __half; };

constexpr int kTcThreads = 128, kLdR = kChunk + 8, kLdAcc = kTile + 4;  // 4 warps; padded shared rows

template <typename T, int EPI>
__global__ void __launch_bounds__(kTcThreads) tensorCoreKernel(Args<T> a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using W = typename Wmma<T>::type;
  __shared__ __align__(32) T us[kTile][kLdR], ups[kTile][kLdR];  // [row or output column][rank column of the chunk]
  __shared__ __align__(32) float acc[kTile][kLdAcc];              // u · upᵀ of the tile
  const int t = threadIdx.x, warp = t / 32;
  const int64_t col0 = int64_t(blockIdx.x) * kTile, row0 = int64_t(blockIdx.y) * kTile;
  // this thread's part of the tile: rows t / 8 + 16 i (i < 4), columns 8 (t % 8) .. + 8 — whole 128-byte row runs
  const int cx = (t % 8) * kCols, ry = t / 8;
  const int64_t col = col0 + cx;
  const bool colIn = col < a.N;  // N % 8 == 0 on this path: a run is all in or all out
  uint4 y[4], rs[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ry + 16 * i;
    if (row < a.M && colIn) {
      y[i] = *reinterpret_cast<const uint4*>(a.y + row * a.ldy + col);
      if constexpr (EPI == int(LowRankEpilogue::Gated)) rs[i] = *reinterpret_cast<const uint4*>(a.res + row * a.ldres + col);
    }
  }
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[kTile / 16];
#pragma unroll
  for (int n = 0; n < kTile / 16; ++n) wmma::fill_fragment(c[n], 0.f);
  const unsigned bits = a.mask ? unsigned(a.mask[a.maskOffset + blockIdx.x]) : ~0u;
  // the chunk's u rows and up rows: 64 × 16 each, one 16-byte half-row per thread
  const int lr = t / 2, lh = (t % 2) * 8;
  for (int64_t c0 = 0; c0 < a.R; c0 += kChunk) {
    if (!((bits >> (c0 / kChunk)) & 1u)) continue;  // the same for the whole block
    const int64_t row = row0 + lr, oc = col0 + lr;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(&us[lr][lh]) = row < a.M ? *reinterpret_cast<const uint4*>(a.u + row * a.ldu + c0 + lh) : zero;
    *reinterpret_cast<uint4*>(&ups[lr][lh]) = oc < a.N ? *reinterpret_cast<const uint4*>(a.up + oc * a.R + c0 + lh) : zero;
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, reinterpret_cast<const W*>(&us[16 * warp][0]), kLdR);
#pragma unroll
    for (int n = 0; n < kTile / 16; ++n) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::col_major> fb;  // B[r][j] = up[j][r]
      wmma::load_matrix_sync(fb, reinterpret_cast<const W*>(&ups[16 * n][0]), kLdR);
      wmma::mma_sync(c[n], fa, fb, c[n]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int n = 0; n < kTile / 16; ++n) wmma::store_matrix_sync(&acc[16 * warp][16 * n], c[n], kLdAcc, wmma::mem_row_major);
  __syncthreads();
  if (!colIn) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ry + 16 * i;
    if (row >= a.M) break;
    const T* yh = reinterpret_cast<const T*>(&y[i]);
    const float4 p0 = *reinterpret_cast<const float4*>(&acc[ry + 16 * i][cx]), p1 = *reinterpret_cast<const float4*>(&acc[ry + 16 * i][cx + 4]);
    const float pa[kCols] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
    float v[kCols];
#pragma unroll
    for (int j = 0; j < kCols; ++j) v[j] = fmaf(a.k, pa[j], float(yh[j]));
    if constexpr (EPI == int(LowRankEpilogue::GeluTanh)) {
#pragma unroll
      for (int j = 0; j < kCols; ++j) v[j] = geluTanh<T>(v[j]);
    } else if constexpr (EPI == int(LowRankEpilogue::Gated)) {
      const uint4 graw = *reinterpret_cast<const uint4*>(a.gate + (row / a.rowsPerGate) * a.ldgate + col);
      const T *gh = reinterpret_cast<const T*>(&graw), *rh = reinterpret_cast<const T*>(&rs[i]);
#pragma unroll
      for (int j = 0; j < kCols; ++j) v[j] = fmaf(float(gh[j]), v[j], float(rh[j]));
    }
    store8<true>(a.out + row * a.ldout + col, kCols, v);
  }
#endif
}

template <typename T, int EPI>
void launchEpilogue(const Args<T>& a, bool vec, bool tensorCores, dim3 grid, cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, float>) {
    if (tensorCores) {
      tensorCoreKernel<T, EPI><<<grid, kTcThreads, 0, stream>>>(a);
      return;
    }
  }
  if (vec) lowRankKernel<T, EPI, true><<<grid, kThreads, 0, stream>>>(a);
  else lowRankKernel<T, EPI, false><<<grid, kThreads, 0, stream>>>(a);
}
template <typename T>
void launch(const Args<T>& a, LowRankEpilogue epi, bool vec, bool tc, dim3 grid, cudaStream_t stream) {
  if (epi == LowRankEpilogue::None) launchEpilogue<T, int(LowRankEpilogue::None)>(a, vec, tc, grid, stream);
  else if (epi == LowRankEpilogue::GeluTanh) launchEpilogue<T, int(LowRankEpilogue::GeluTanh)>(a, vec, tc, grid, stream);
  else launchEpilogue<T, int(LowRankEpilogue::Gated)>(a, vec, tc, grid, stream);
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

void check2d(const at::Tensor& t, const char* name, int64_t rows, int64_t cols, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "lowRankAdd: ", name, " must be [", rows, ", ",
              cols, "], got ", t.sizes());
  TORCH_CHECK(t.stride(1) == 1 || cols <= 1, "lowRankAdd: ", name, " needs a unit column stride");
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "lowRankAdd: ", name,
              " must have y's dtype and device");
}

}  // namespace

void lowRankAdd(const at::Tensor& y, const at::Tensor& u, const at::Tensor& up, const at::Tensor& mask,
                int64_t maskOffset, double k, LowRankEpilogue epi, const at::Tensor& res, const at::Tensor& gate,
                int64_t rowsPerGate, const at::Tensor& out) {
  const int64_t M = y.size(0), N = y.size(1), R = u.size(1);
  check2d(y, "y", M, N, y);
  check2d(u, "u", M, R, y);
  check2d(out, "out", M, N, y);
  TORCH_CHECK(up.is_contiguous(), "lowRankAdd: up must be contiguous");
  check2d(up, "up", N, R, y);
  const bool gated = epi == LowRankEpilogue::Gated;
  if (gated) {
    TORCH_CHECK(rowsPerGate > 0 && M % rowsPerGate == 0, "lowRankAdd: rowsPerGate must divide the rows");
    check2d(res, "res", M, N, y);
    check2d(gate, "gate", M / rowsPerGate, N, y);
  }
  if (mask.defined())
    TORCH_CHECK(mask.scalar_type() == at::kInt && mask.is_contiguous() && mask.device() == y.device() &&
                    maskOffset >= 0 && mask.numel() >= maskOffset + (N + kTile - 1) / kTile && R <= 32 * kChunk,
                "lowRankAdd: bad chunk mask");
  if (M == 0 || N == 0) return;
  c10::cuda::CUDAGuard guard(y.device());
  const dim3 grid(unsigned((N + kTile - 1) / kTile), unsigned((M + kTile - 1) / kTile));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "lowRankAdd", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = scalar_t;
      Args<T> a{y.data_ptr<T>(), u.data_ptr<T>(), up.data_ptr<T>(), gated ? res.data_ptr<T>() : nullptr,
                gated ? gate.data_ptr<T>() : nullptr, out.data_ptr<T>(), mask.defined() ? mask.data_ptr<int>() : nullptr,
                M, N, R, y.stride(0), u.stride(0), gated ? res.stride(0) : 0, gated ? gate.stride(0) : 0,
                out.stride(0), gated ? rowsPerGate : 1, int(maskOffset), float(k)};
      bool vec = N % kCols == 0 && y.stride(0) % kCols == 0 && out.stride(0) % kCols == 0 && aligned(a.y, 16) && aligned(a.out, 16);
      if (gated) vec = vec && res.stride(0) % kCols == 0 && gate.stride(0) % kCols == 0 && aligned(a.res, 16) && aligned(a.gate, 16);
      // tensor cores: 16-bit types on sm_80+, whole rank chunks, 16-byte aligned u and up rows
      const bool tc = !std::is_same_v<T, float> && vec && computeCapability(y.get_device()) >= 80 &&
                      R % kChunk == 0 && u.stride(0) % kCols == 0 && aligned(a.u, 16) && aligned(a.up, 16);
      launch(a, epi, vec, tc, grid, stream);
    } else {
      TORCH_CHECK(false, "lowRankAdd: float64 runs the LibTorch composite");
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace x2i::kernels
