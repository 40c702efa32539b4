// Unfused LoRA's low-rank term added in one pass over a frozen layer's output, with what follows the layer
// (nothing, the tanh GELU, or the gated residual) in the same pass (models/lora.cc):
//   out[i, j] = epilogue(y[i, j] + k · Σ_r u[i, r] · up[j, r])
// A block computes a 64 × 64 tile: u's and up's rank columns go through shared memory 16 at a time (chunks that
// are zero in up for the tile's columns are skipped: a fused layer's parts are block-diagonal), each thread
// accumulates a 4 × 4 patch in float32 while its reads of y (and the residual) are in flight, then applies the
// epilogue and writes once.
#include "kernels/kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

namespace x2i::kernels {
namespace {

constexpr int kTile = 64, kChunk = 16, kThreads = 256;

template <typename T>
struct Args {
  const T *y, *u, *up, *res, *gate;
  T* out;
  const int* mask;  // per column tile: bit c set when up's rank columns [16c, 16c + 16) are not all zero there
  int64_t M, N, R, ldy, ldu, ldres, ldgate, ldout, rowsPerGate;
  int maskOffset;   // the first column's tile in mask
  float k;
};

// Four consecutive elements as float, vectorised when the caller checked alignment (VEC).
template <bool VEC, typename T>
__device__ __forceinline__ void load4(const T* p, int64_t n, float (&v)[4]) {
  if constexpr (VEC) {
    if constexpr (sizeof(T) == 2) {
      uint2 raw = *reinterpret_cast<const uint2*>(p);
      const T* h = reinterpret_cast<const T*>(&raw);
      for (int c = 0; c < 4; ++c) v[c] = float(h[c]);
    } else {
      float4 f = *reinterpret_cast<const float4*>(p);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    }
  } else {
    for (int c = 0; c < 4; ++c) v[c] = c < n ? float(p[c]) : 0.f;
  }
}
template <bool VEC, typename T>
__device__ __forceinline__ void store4(T* p, int64_t n, const float (&v)[4]) {
  if constexpr (VEC) {
    if constexpr (sizeof(T) == 2) {
      uint2 raw;
      T* h = reinterpret_cast<T*>(&raw);
      for (int c = 0; c < 4; ++c) h[c] = T(v[c]);
      *reinterpret_cast<uint2*>(p) = raw;
    } else {
      *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
  } else {
    for (int c = 0; c < 4 && c < n; ++c) p[c] = T(v[c]);
  }
}

__device__ __forceinline__ float geluTanh(float x) {
  const float a = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.f + tanhf(a));
}

template <typename T, int EPI, bool VEC>
__global__ void __launch_bounds__(kThreads, 2) lowRankKernel(Args<T> a) {
  __shared__ float us[kChunk][kTile + 4], ups[kChunk][kTile + 4];  // [rank column][row or output column]
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;               // columns tx·4.., rows ty·4..
  const int64_t col0 = int64_t(blockIdx.x) * kTile, row0 = int64_t(blockIdx.y) * kTile;
  const int64_t col = col0 + tx * 4, n = a.N - col;
  // y (and the residual) are read first, so that their loads are in flight during the rank product
  float v[4][4] = {}, rs[4][4] = {};
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty * 4 + i;
    if (row >= a.M || n <= 0) continue;
    load4<VEC>(a.y + row * a.ldy + col, n, v[i]);
    if constexpr (EPI == int(LowRankEpilogue::Gated)) load4<VEC>(a.res + row * a.ldres + col, n, rs[i]);
  }
  const unsigned bits = a.mask ? unsigned(a.mask[a.maskOffset + blockIdx.x]) : 0u;
  float acc[4][4] = {};
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
      const float4 uu = *reinterpret_cast<const float4*>(&us[r][ty * 4]);
      const float4 pp = *reinterpret_cast<const float4*>(&ups[r][tx * 4]);
      const float ua[4] = {uu.x, uu.y, uu.z, uu.w}, pa[4] = {pp.x, pp.y, pp.z, pp.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ua[i], pa[j], acc[i][j]);
    }
    __syncthreads();
  }
  if (n <= 0) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty * 4 + i;
    if (row >= a.M) break;
    for (int j = 0; j < 4; ++j) v[i][j] = fmaf(a.k, acc[i][j], v[i][j]);
    if constexpr (EPI == int(LowRankEpilogue::GeluTanh)) {
      for (int j = 0; j < 4; ++j) v[i][j] = geluTanh(v[i][j]);
    } else if constexpr (EPI == int(LowRankEpilogue::Gated)) {
      float g[4];
      load4<VEC>(a.gate + (row / a.rowsPerGate) * a.ldgate + col, n, g);
      for (int j = 0; j < 4; ++j) v[i][j] = fmaf(g[j], v[i][j], rs[i][j]);
    }
    store4<VEC>(a.out + row * a.ldout + col, n, v[i]);
  }
}

template <typename T, int EPI>
void launchEpilogue(const Args<T>& a, bool vec, dim3 grid, cudaStream_t stream) {
  if (vec) lowRankKernel<T, EPI, true><<<grid, kThreads, 0, stream>>>(a);
  else lowRankKernel<T, EPI, false><<<grid, kThreads, 0, stream>>>(a);
}
template <typename T>
void launch(const Args<T>& a, LowRankEpilogue epi, bool vec, dim3 grid, cudaStream_t stream) {
  if (epi == LowRankEpilogue::None) launchEpilogue<T, int(LowRankEpilogue::None)>(a, vec, grid, stream);
  else if (epi == LowRankEpilogue::GeluTanh) launchEpilogue<T, int(LowRankEpilogue::GeluTanh)>(a, vec, grid, stream);
  else launchEpilogue<T, int(LowRankEpilogue::Gated)>(a, vec, grid, stream);
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
      const int64_t v = 4 * int64_t(sizeof(T));
      bool vec = N % 4 == 0 && y.stride(0) % 4 == 0 && out.stride(0) % 4 == 0 && aligned(a.y, v) && aligned(a.out, v);
      if (gated) vec = vec && res.stride(0) % 4 == 0 && gate.stride(0) % 4 == 0 && aligned(a.res, v) && aligned(a.gate, v);
      launch(a, epi, vec, grid, stream);
    } else {
      TORCH_CHECK(false, "lowRankAdd: float64 runs the LibTorch composite");
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace x2i::kernels
