// FP8 activations for the FP8 linear layers (models/fp8.cc): each row of x [M, K] scaled by its own
// s = max|row| · (1/448) and rounded to float8_e4m3fn (nearest even), in one kernel: a block per row reads the row
// twice (the max, then the scaled values; the second read comes from cache) and writes 8 bytes per thread-step.
// Bit for bit the LibTorch twin fp8::quantizeRows(x, twin = true): s times the float nearest 1/448, x / s divided.
#include "kernels/kernels.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <type_traits>

namespace x2i::kernels {
namespace {

constexpr int kThreads = 256, kVec = 8;

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[kVec]) {
  if constexpr (sizeof(T) == 2) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int c = 0; c < kVec; ++c) v[c] = float(h[c]);
  } else {
#pragma unroll
    for (int c = 0; c < kVec; ++c) v[c] = float(p[c]);
  }
}

// nearest even, finite values beyond ±448 saturated, NaN kept (as the twin's clamp and cast)
__device__ __forceinline__ uint8_t e4m3(float v) { return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3); }

// max that propagates NaN (as torch.amax; fmaxf would drop it)
__device__ __forceinline__ float maxNan(float a, float b) { return a != a || a > b ? a : b; }

// the block's max of v (every thread gets it)
__device__ __forceinline__ float blockMax(float v) {
  __shared__ float part[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = maxNan(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  v = part[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) v = maxNan(v, part[w]);
  return v;
}

// VEC: K % 8 == 0 and 16-byte aligned rows (8 elements per step), else one element per step
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) quantizeRowsKernel(const T* __restrict__ x, int64_t ldx, int64_t K,
                                                               uint8_t* __restrict__ q, float* __restrict__ scale) {
  const T* row = x + int64_t(blockIdx.x) * ldx;
  uint8_t* out = q + int64_t(blockIdx.x) * K;
  const int64_t step = VEC ? kVec : 1;
  float amax = 0;
  for (int64_t j = int64_t(threadIdx.x) * step; j < K; j += int64_t(kThreads) * step) {
    if constexpr (VEC) {
      float v[kVec];
      load8(row + j, v);
#pragma unroll
      for (int c = 0; c < kVec; ++c) amax = maxNan(fabsf(v[c]), amax);
    } else {
      amax = maxNan(fabsf(float(row[j])), amax);
    }
  }
  // × the float nearest 1/448, as LibTorch divides a tensor by a scalar; NaN rows stay NaN
  const float m = blockMax(amax), s = (m != m ? m : fmaxf(m, 1e-12f)) * (1.f / 448.f);
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
  for (int64_t j = int64_t(threadIdx.x) * step; j < K; j += int64_t(kThreads) * step) {
    if constexpr (VEC) {
      float v[kVec];
      load8(row + j, v);
      uint2 packed;
      uint8_t* b = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
      for (int c = 0; c < kVec; ++c) b[c] = e4m3(v[c] / s);
      *reinterpret_cast<uint2*>(out + j) = packed;
    } else {
      out[j] = e4m3(float(row[j]) / s);
    }
  }
}

}  // namespace

std::pair<at::Tensor, at::Tensor> quantizeRowsE4m3(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "quantizeRowsE4m3: x must be a 2-D CUDA tensor");
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
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
    if (vec) quantizeRowsKernel<T, true><<<unsigned(M), kThreads, 0, stream>>>(p, xc.stride(0), K, qp, s.data_ptr<float>());
    else quantizeRowsKernel<T, false><<<unsigned(M), kThreads, 0, stream>>>(p, xc.stride(0), K, qp, s.data_ptr<float>());
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

}  // namespace x2i::kernels
