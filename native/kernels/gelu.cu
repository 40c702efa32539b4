// FLUX's MLP activation, the tanh GELU, on column ranges of a GEMM's output (models/lora.cc): the single block's MLP
// part of linear1 is a row-strided view ([M, 12288] every 21504 columns), on which LibTorch's elementwise kernels
// run one element per thread without vector loads. Here a thread moves 8 consecutive elements of a row as one
// 16-byte load and store (aligned views; else one at a time), forward and backward, with LibTorch's formulas in
// float32 (twin: at::gelu(x, "tanh") and at::gelu_backward(dy, x, "tanh")).
#include "kernels/kernels.h"
#include "kernels/vec8.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace x2i::kernels {
namespace {

constexpr int kThreads = 256;
constexpr float kBeta = 0.7978845608028654f, kKappa = 0.044715f;  // √(2/π)
using vec8::kVec;
using vec8::load8;
using vec8::store8;

__device__ __forceinline__ float gelu(float x) {
  const float inner = kBeta * (x + kKappa * (x * x * x));  // LibTorch's order: x³ first
  return 0.5f * x * (1.f + tanhf(inner));
}
__device__ __forceinline__ float geluGrad(float dy, float x) {
  const float x2 = x * x, inner = kBeta * (x + kKappa * (x2 * x)), t = tanhf(inner);
  const float left = 0.5f * x, right = 1.f + t;
  const float dInner = kBeta * (1.f + 3.f * kKappa * x2);
  return dy * (0.5f * right + left * (1.f - t * t) * dInner);
}

// out = gelu(x) (dy null) or dx = gelu'(x) · dy, rows of n columns; a block covers kThreads · kVec columns of a row
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) geluRowsKernel(const T* __restrict__ x, int64_t ldx, const T* __restrict__ dy,
                                                           int64_t lddy, T* __restrict__ out, int64_t ldout, int64_t n) {
  const int64_t row = blockIdx.x, j = (int64_t(blockIdx.y) * kThreads + threadIdx.x) * kVec;
  if (j >= n) return;
  const T* xr = x + row * ldx + j;
  T* o = out + row * ldout + j;
  if (VEC) {
    float v[kVec], g[kVec];
    load8(xr, v);
    if (dy) {
      load8(dy + row * lddy + j, g);
#pragma unroll
      for (int c = 0; c < kVec; ++c) v[c] = geluGrad(g[c], v[c]);
    } else {
#pragma unroll
      for (int c = 0; c < kVec; ++c) v[c] = gelu(v[c]);
    }
    store8(o, v);
  } else {
    for (int c = 0; c < kVec && j + c < n; ++c)
      o[c] = T(dy ? geluGrad(float(dy[row * lddy + j + c]), float(xr[c])) : gelu(float(xr[c])));
  }
}

void launch(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& out) {
  const int64_t M = x.size(0), n = x.size(1);
  if (M == 0 || n == 0) return;
  TORCH_CHECK(M <= INT32_MAX && (n + kThreads * kVec - 1) / (kThreads * kVec) <= 65535, "geluTanhRows: ", M, " × ", n, " is too large");
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(unsigned(M), unsigned((n + kThreads * kVec - 1) / (kThreads * kVec)));
  auto go = [&](auto* xp) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
    const T* dp = dy.defined() ? reinterpret_cast<const T*>(dy.data_ptr()) : nullptr;
    T* op = reinterpret_cast<T*>(out.data_ptr());
    auto aligned = [](const void* p, int64_t ld) { return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % kVec == 0; };
    const bool vec = n % kVec == 0 && aligned(xp, x.stride(0)) && aligned(op, out.stride(0)) &&
                     (!dp || aligned(dp, dy.stride(0)));
    const int64_t lddy = dp ? dy.stride(0) : 0;
    if (vec) geluRowsKernel<T, true><<<grid, kThreads, 0, stream>>>(xp, x.stride(0), dp, lddy, op, out.stride(0), n);
    else geluRowsKernel<T, false><<<grid, kThreads, 0, stream>>>(xp, x.stride(0), dp, lddy, op, out.stride(0), n);
  };
  switch (x.scalar_type()) {
    case at::kBFloat16: go(reinterpret_cast<const c10::BFloat16*>(x.data_ptr())); break;
    case at::kHalf: go(reinterpret_cast<const c10::Half*>(x.data_ptr())); break;
    case at::kFloat: go(x.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "geluTanhRows: bf16, fp16 or float32, found ", x.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// a 2-D view [rows, n] of t with unit column stride, or a contiguous copy
at::Tensor rows2d(const at::Tensor& t) {
  at::Tensor r = t.dim() == 2 ? t : t.view({-1, t.size(-1)});  // views of row-strided [B, L, n] merge B and L
  return r.stride(1) == 1 ? r : r.contiguous();
}

}  // namespace

bool geluTanhRowsTakes(const at::Tensor& x) {
  if (!x.is_cuda() || x.dim() < 1 || x.stride(-1) != 1) return false;
  const auto t = x.scalar_type();
  if (t != at::kBFloat16 && t != at::kHalf && t != at::kFloat) return false;
  // the leading dims must merge into one row stride (a column range of a contiguous [.., N] does)
  for (int64_t d = 0; d + 2 < x.dim(); ++d)
    if (x.size(d) > 1 && x.stride(d) != x.stride(d + 1) * x.size(d + 1)) return false;
  return true;
}

at::Tensor geluTanhRows(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(geluTanhRowsTakes(x), "geluTanhRows: a CUDA bf16 / fp16 / float32 view with unit column stride");
  at::Tensor o = out.defined() ? out : at::empty(x.sizes(), x.options());
  TORCH_CHECK(o.sizes() == x.sizes() && geluTanhRowsTakes(o) && o.scalar_type() == x.scalar_type(), "geluTanhRows: out must match x");
  if (x.numel() > 0) launch(rows2d(x), at::Tensor(), rows2d(o));
  return o;
}

at::Tensor geluTanhRowsBackward(const at::Tensor& dy, const at::Tensor& x) {
  TORCH_CHECK(geluTanhRowsTakes(x) && dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "geluTanhRowsBackward: dy and x of one shape and dtype");
  at::Tensor dx = at::empty(x.sizes(), x.options());
  const at::Tensor d = geluTanhRowsTakes(dy) ? dy : dy.contiguous();
  if (x.numel() > 0) launch(rows2d(x), rows2d(d), rows2d(dx));
  return dx;
}

}  // namespace x2i::kernels
