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

// Per row of D values: mean, σ (unbiased), 1/(σ + eps) → z/τ in place; returns σ and 1/(σ+eps).
template <int Threads, int VPT>
__device__ __forceinline__ void standardise(float (&x)[VPT], int D, float eps, float invTau, float* scratch,
                                            float& sigma, float& inv) {
  float s = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k) s += x[k];  // padded entries are 0
  const float mean = blockSum<Threads>(s, scratch) / D;
  float q = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = k * Threads + threadIdx.x;
    if (i < D) {
      x[k] -= mean;
      q += x[k] * x[k];
    }
  }
  sigma = sqrtf(blockSum<Threads>(q, scratch) / float(D - 1));
  inv = 1.f / (sigma + eps);
#pragma unroll
  for (int k = 0; k < VPT; ++k) x[k] *= inv * invTau;  // x now holds a = z/τ (d = x/(inv·invTau))
}

// log-softmax in place over the row (padded entries ignored); returns nothing.
template <int Threads, int VPT>
__device__ __forceinline__ void logSoftmax(float (&a)[VPT], int D, float* scratch) {
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < VPT; ++k)
    if (k * Threads + int(threadIdx.x) < D) m = fmaxf(m, a[k]);
  m = blockMax<Threads>(m, scratch);
  float e = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k)
    if (k * Threads + int(threadIdx.x) < D) e += expf(a[k] - m);
  const float lse = m + logf(blockSum<Threads>(e, scratch));
#pragma unroll
  for (int k = 0; k < VPT; ++k) a[k] -= lse;
}

template <typename T, int Threads, int VPT>
__global__ void __launch_bounds__(Threads) rowKernel(const T* __restrict__ S, const T* __restrict__ Tt, int D,
                                                     int divergence, float invTau, float eps, float gradScale,
                                                     T* __restrict__ grad, float* __restrict__ rowLoss) {
  __shared__ float scratch[32];
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
  float sigS, invS, sigT, invT;
  standardise<Threads, VPT>(xs, D, eps, invTau, scratch, sigS, invS);  // xs = a_S
  standardise<Threads, VPT>(xt, D, eps, invTau, scratch, sigT, invT);  // xt = a_T
  // keep d_S (centred student) implicitly: d = a_S / (invS·invTau)
  float dS[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) dS[k] = xs[k] / (invS * invTau);
  logSoftmax<Threads, VPT>(xs, D, scratch);  // log p_S
  logSoftmax<Threads, VPT>(xt, D, scratch);  // log p_T
  // the row's divergence and g = d term / d a_S
  float part = 0, g[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = k * Threads + threadIdx.x;
    g[k] = 0;
    if (i >= D) continue;
    const float ls = xs[k], lt = xt[k], ps = expf(ls), pt = expf(lt);
    if (divergence == 0) {  // rkl: Σ p_S (log p_S − log p_T)
      part += ps * (ls - lt);
      g[k] = ls - lt;  // × p_S, minus the row term, below
    } else if (divergence == 1) {  // kl: Σ p_T (log p_T − log p_S)
      part += pt * (lt - ls);
      g[k] = ps - pt;
    } else {  // js
      const float lm = logf(0.5f * (ps + pt));
      part += 0.5f * (ps * (ls - lm) + pt * (lt - lm));
      g[k] = 0.5f * (ls - lm);
    }
  }
  const float term = blockSum<Threads>(part, scratch);
  if (divergence != 1) {  // through the softmax: g_a = p_S (g − Σ p_S g)
    float pg = 0;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
      if (k * Threads + int(threadIdx.x) < D) pg += expf(xs[k]) * g[k];
    pg = divergence == 0 ? term : blockSum<Threads>(pg, scratch);
#pragma unroll
    for (int k = 0; k < VPT; ++k) g[k] = expf(xs[k]) * (g[k] - pg);
  }
  // through z = d/(σ+eps), τ:  dx = inv·(gz − mean gz) − d·⟨gz, d⟩·inv² / ((D−1)·σ),  gz = g_a/τ
  float sg = 0, sgd = 0;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    if (k * Threads + int(threadIdx.x) >= D) continue;
    sg += g[k];
    sgd += g[k] * dS[k];
  }
  sg = blockSum<Threads>(sg, scratch) * invTau;
  sgd = blockSum<Threads>(sgd, scratch) * invTau;
  const float meanG = sg / D;
  const float c = sigS > 0.f ? invS * invS * sgd / (float(D - 1) * sigS) : 0.f;
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
