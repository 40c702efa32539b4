// The X2I distillation loss as one pass per row: read a student row and a teacher row once, z-normalise
// both (unbiased std, eps added to the std), softmax at temperature τ, and write the divergence of the row
// and its full gradient with respect to the student's raw features (through softmax, τ and the
// z-normalisation). Inputs in their dtype, float32 math; one thread block per row, the row in registers.
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace x2i::kernels {
namespace {

template <int Threads>
__device__ __forceinline__ float blockSum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < Threads / 32 ? scratch[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int Threads>
__device__ __forceinline__ float blockMax(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < Threads / 32 ? scratch[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <int Threads, int VPT>
__device__ __forceinline__ float sumOf(const float (&x)[VPT], int D) {
  float s = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k) s += x[k];  // padded entries are 0
  return s;
}

// Two sums (or maxima) at once: one pair of barriers for both.
template <int Threads, bool Max>
__device__ __forceinline__ float2 blockReduce2(float a, float b, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float x = __shfl_xor_sync(0xffffffffu, a, o), y = __shfl_xor_sync(0xffffffffu, b, o);
    a = Max ? fmaxf(a, x) : a + x;
    b = Max ? fmaxf(b, y) : b + y;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = a, scratch[32 + warp] = b;
  __syncthreads();
  const float init = Max ? -INFINITY : 0.f;
  a = lane < Threads / 32 ? scratch[lane] : init;
  b = lane < Threads / 32 ? scratch[32 + lane] : init;
  for (int o = 16; o > 0; o >>= 1) {
    const float x = __shfl_xor_sync(0xffffffffu, a, o), y = __shfl_xor_sync(0xffffffffu, b, o);
    a = Max ? fmaxf(a, x) : a + x;
    b = Max ? fmaxf(b, y) : b + y;
  }
  return make_float2(a, b);
}

template <typename T, int Threads, int VPT>
__global__ void __launch_bounds__(Threads) rowKernel(const T* __restrict__ S, const T* __restrict__ Tt, int D,
                                                     int divergence, float invTau, float eps, float gradScale,
                                                     T* __restrict__ grad, float* __restrict__ rowLoss) {
  __shared__ float scratch[64];
  const int64_t row = blockIdx.x;
  const T* s = S + row * D;
  const T* t = Tt + row * D;
  float xs[VPT], xt[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = k * Threads + threadIdx.x;
    xs[k] = i < D ? float(s[i]) : 0.f;
    xt[k] = i < D ? float(t[i]) : 0.f;
  }
  if (divergence == 3) {  // mse on raw features
    float q = 0;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = k * Threads + threadIdx.x;
      if (i < D) {
        const float d = xs[k] - xt[k];
        q += d * d;
        grad[row * D + i] = T(2.f * d * gradScale);
      }
    }
    q = blockSum<Threads>(q, scratch);
    if (threadIdx.x == 0) rowLoss[row] = q;
    return;
  }
  // z-normalise both rows (paired reductions: one pair of barriers serves student and teacher)
  float2 r = blockReduce2<Threads, false>(sumOf<Threads, VPT>(xs, D), sumOf<Threads, VPT>(xt, D), scratch);
  const float meanS = r.x / D, meanT = r.y / D;
  float qs = 0, qt = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    if (k * Threads + int(threadIdx.x) >= D) continue;
    xs[k] -= meanS;
    xt[k] -= meanT;
    qs += xs[k] * xs[k];
    qt += xt[k] * xt[k];
  }
  r = blockReduce2<Threads, false>(qs, qt, scratch);
  const float sigS = sqrtf(r.x / float(D - 1)), sigT = sqrtf(r.y / float(D - 1));
  const float invS = 1.f / (sigS + eps), invT = 1.f / (sigT + eps);
  float dS[VPT];  // the centred student row
  float ms = -INFINITY, mt = -INFINITY;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    dS[k] = xs[k];
    xs[k] *= invS * invTau;  // a_S
    xt[k] *= invT * invTau;  // a_T
    if (k * Threads + int(threadIdx.x) < D) ms = fmaxf(ms, xs[k]), mt = fmaxf(mt, xt[k]);
  }
  r = blockReduce2<Threads, true>(ms, mt, scratch);
  ms = r.x, mt = r.y;
  float es = 0, et = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k)
    if (k * Threads + int(threadIdx.x) < D) es += expf(xs[k] - ms), et += expf(xt[k] - mt);
  r = blockReduce2<Threads, false>(es, et, scratch);
  const float lseS = ms + logf(r.x), lseT = mt + logf(r.y);
  // the row's divergence and g = d term / d log p_S (before the softmax Jacobian)
  float part = 0, pgPart = 0, g[VPT], ps[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    g[k] = 0;
    ps[k] = 0;
    if (k * Threads + int(threadIdx.x) >= D) continue;
    const float ls = xs[k] - lseS, lt = xt[k] - lseT, p = expf(ls), pt = expf(lt);
    ps[k] = p;
    if (divergence == 0) {  // rkl: Σ p_S (log p_S − log p_T)
      part += p * (ls - lt);
      g[k] = ls - lt;
    } else if (divergence == 1) {  // kl: Σ p_T (log p_T − log p_S)
      part += pt * (lt - ls);
      g[k] = p - pt;
    } else {  // js
      const float lm = logf(0.5f * (p + pt));
      part += 0.5f * (p * (ls - lm) + pt * (lt - lm));
      g[k] = 0.5f * (ls - lm);
      pgPart += p * g[k];
    }
  }
  r = blockReduce2<Threads, false>(part, pgPart, scratch);
  const float term = r.x;
  if (divergence != 1) {  // through the softmax: g_a = p_S (g − Σ p_S g)
    const float pg = divergence == 0 ? term : r.y;
#pragma unroll
    for (int k = 0; k < VPT; ++k) g[k] = ps[k] * (g[k] - pg);
  }
  // through z = d/(σ+eps), τ:  dx = inv·(gz − mean gz) − d·⟨gz, d⟩·inv² / ((D−1)·σ),  gz = g_a/τ
  float sg = 0, sgd = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    if (k * Threads + int(threadIdx.x) >= D) continue;
    sg += g[k];
    sgd += g[k] * dS[k];
  }
  r = blockReduce2<Threads, false>(sg, sgd, scratch);
  const float meanG = r.x * invTau / D;
  const float c = sigS > 0.f ? invS * invS * r.y * invTau / (float(D - 1) * sigS) : 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = k * Threads + threadIdx.x;
    if (i < D) grad[row * D + i] = T(gradScale * (invS * (g[k] * invTau - meanG) - dS[k] * c));
  }
  if (threadIdx.x == 0) rowLoss[row] = term;
}

template <typename T, int Threads, int VPT>
void launch(const at::Tensor& s, const at::Tensor& t, int64_t rows, int D, int div, float invTau, float eps,
            float gradScale, at::Tensor& grad, at::Tensor& rowLoss) {
  rowKernel<T, Threads, VPT><<<unsigned(rows), Threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      s.data_ptr<T>(), t.data_ptr<T>(), D, div, invTau, eps, gradScale, grad.data_ptr<T>(), rowLoss.data_ptr<float>());
}

}  // namespace

bool distillRowsSupported(int64_t D) { return D >= 2 && D <= 16384; }

std::pair<at::Tensor, at::Tensor> distillRows(const at::Tensor& student, const at::Tensor& teacher, int divergence,
                                              double temperature, double eps, double gradScale) {
  TORCH_CHECK(student.is_cuda() && teacher.is_cuda() && student.sizes() == teacher.sizes(), "distillRows: bad inputs");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "distillRows: dtypes differ");
  const int D = int(student.size(-1));
  TORCH_CHECK(distillRowsSupported(D), "distillRows: D out of range");
  c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t rows = s.numel() / D;
  at::Tensor grad = at::empty_like(s);
  at::Tensor rowLoss = at::empty({rows}, s.options().dtype(at::kFloat));
  if (rows == 0) return {rowLoss, grad};
  const float invTau = float(1.0 / temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "distillRows", [&] {
    if (D <= 1024) launch<scalar_t, 128, 8>(s, t, rows, D, divergence, invTau, float(eps), float(gradScale), grad, rowLoss);
    else if (D <= 4096) launch<scalar_t, 256, 16>(s, t, rows, D, divergence, invTau, float(eps), float(gradScale), grad, rowLoss);
    else if (D <= 8192) launch<scalar_t, 512, 16>(s, t, rows, D, divergence, invTau, float(eps), float(gradScale), grad, rowLoss);
    else launch<scalar_t, 1024, 16>(s, t, rows, D, divergence, invTau, float(eps), float(gradScale), grad, rowLoss);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rowLoss, grad};
}

}  // namespace x2i::kernels
