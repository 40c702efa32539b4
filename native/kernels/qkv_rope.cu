// Fused QKV split + QK-RMSNorm + RoPE (forward and backward) for the FLUX joint attention: one warp per
// (token, head, q|k|v) row, float32 math, one read of the projection output and one write of each head
// tensor in the [B, heads, tokens, hd] layout SDPA takes.
#include "kernels/kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace x2i::kernels {
namespace {

constexpr int kWarp = 32, kThreads = 256;

__device__ __forceinline__ float warpSum(float v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
struct Seg {
  const T* qkv;
  int64_t sB, sL;  // element strides of the batch and token dims
  int rows, offset;
  const T *qs, *ks;
};

struct Shape {
  int B, H, hd, hidden, L;  // L: tokens over all segments
  float eps;
};

// Row (b, l, h, which) of warp w; returns false past the end.
__device__ __forceinline__ bool decode(int64_t w, int rows, int H, int& b, int& l, int& h, int& which, int B) {
  if (w >= int64_t(B) * rows * H * 3) return false;
  which = int(w % 3);
  w /= 3;
  h = int(w % H);
  w /= H;
  l = int(w % rows);
  b = int(w / rows);
  return true;
}

template <typename T>
__global__ void forwardKernel(Seg<T> s, Shape z, const float* cos, const float* sin, T* q, T* k, T* v) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  int b, l, h, which;
  if (!decode(w, s.rows, z.H, b, l, h, which, z.B)) return;
  const T* x = s.qkv + b * s.sB + l * s.sL + which * z.hidden + h * z.hd;
  const int64_t o = ((int64_t(b) * z.H + h) * z.L + s.offset + l) * z.hd;
  if (which == 2) {
    for (int i = lane; i < z.hd; i += kWarp) v[o + i] = x[i];
    return;
  }
  float ss = 0;
  for (int i = lane; i < z.hd; i += kWarp) {
    const float a = float(x[i]);
    ss += a * a;
  }
  const float r = rsqrtf(warpSum(ss) / z.hd + z.eps);
  const T* sc = which == 0 ? s.qs : s.ks;
  T* out = (which == 0 ? q : k) + o;
  const int half = z.hd / 2;
  const float *c = cos + int64_t(s.offset + l) * half, *sn = sin + int64_t(s.offset + l) * half;
  for (int p = lane; p < half; p += kWarp) {
    const float n0 = float(x[2 * p]) * r * float(sc[2 * p]), n1 = float(x[2 * p + 1]) * r * float(sc[2 * p + 1]);
    out[2 * p] = T(n0 * c[p] - n1 * sn[p]);
    out[2 * p + 1] = T(n0 * sn[p] + n1 * c[p]);
  }
}

template <typename T>
__global__ void backwardKernel(Seg<T> s, Shape z, const float* cos, const float* sin, const T* dq, const T* dk,
                               const T* dv, T* dqkv) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  int b, l, h, which;
  if (!decode(w, s.rows, z.H, b, l, h, which, z.B)) return;
  const T* x = s.qkv + b * s.sB + l * s.sL + which * z.hidden + h * z.hd;
  T* dx = dqkv + (int64_t(b) * s.rows + l) * 3 * z.hidden + which * z.hidden + h * z.hd;
  const int64_t o = ((int64_t(b) * z.H + h) * z.L + s.offset + l) * z.hd;
  if (which == 2) {
    for (int i = lane; i < z.hd; i += kWarp) dx[i] = dv[o + i];
    return;
  }
  float ss = 0;
  for (int i = lane; i < z.hd; i += kWarp) {
    const float a = float(x[i]);
    ss += a * a;
  }
  const float r = rsqrtf(warpSum(ss) / z.hd + z.eps);
  const T* sc = which == 0 ? s.qs : s.ks;
  const T* dy = (which == 0 ? dq : dk) + o;
  const int half = z.hd / 2;
  const float *c = cos + int64_t(s.offset + l) * half, *sn = sin + int64_t(s.offset + l) * half;
  // y = R·(u ⊙ scale), u = x·r:  du = scale ⊙ Rᵀ dy;  dx = r·(du − u·⟨du, u⟩/hd)
  float dot = 0;
  for (int p = lane; p < half; p += kWarp) {
    const float g0 = float(dy[2 * p]), g1 = float(dy[2 * p + 1]);
    const float du0 = (g0 * c[p] + g1 * sn[p]) * float(sc[2 * p]), du1 = (g1 * c[p] - g0 * sn[p]) * float(sc[2 * p + 1]);
    dot += du0 * float(x[2 * p]) * r + du1 * float(x[2 * p + 1]) * r;
  }
  dot = warpSum(dot) / z.hd;
  for (int p = lane; p < half; p += kWarp) {
    const float g0 = float(dy[2 * p]), g1 = float(dy[2 * p + 1]);
    const float du0 = (g0 * c[p] + g1 * sn[p]) * float(sc[2 * p]), du1 = (g1 * c[p] - g0 * sn[p]) * float(sc[2 * p + 1]);
    dx[2 * p] = T(r * (du0 - float(x[2 * p]) * r * dot));
    dx[2 * p + 1] = T(r * (du1 - float(x[2 * p + 1]) * r * dot));
  }
}

Shape shapeOf(const std::vector<QkvSegment>& segs, int64_t heads, double eps) {
  TORCH_CHECK(!segs.empty(), "qkvRope: no segments");
  const auto& q0 = segs[0].qkv;
  TORCH_CHECK(q0.dim() == 3 && q0.stride(2) == 1, "qkvRope: qkv must be [B, rows, >= 3*hidden] with a contiguous last dim");
  const int64_t hidden = segs[0].qScale.size(0) * heads;
  Shape z{int(q0.size(0)), int(heads), int(segs[0].qScale.size(0)), int(hidden), 0, float(eps)};
  TORCH_CHECK(z.hd % 2 == 0, "qkvRope: the head dim must be even");
  for (auto& s : segs) {
    TORCH_CHECK(s.qkv.dim() == 3 && s.qkv.stride(2) == 1 && s.qkv.size(0) == z.B && s.qkv.size(2) >= 3 * hidden,
                "qkvRope: bad qkv segment");
    TORCH_CHECK(s.qkv.scalar_type() == q0.scalar_type() && s.qScale.scalar_type() == q0.scalar_type() &&
                s.kScale.scalar_type() == q0.scalar_type(), "qkvRope: dtypes differ");
    TORCH_CHECK(s.qScale.is_contiguous() && s.kScale.is_contiguous(), "qkvRope: scales must be contiguous");
    z.L += int(s.qkv.size(1));
  }
  return z;
}

template <typename T>
Seg<T> segOf(const QkvSegment& s, int offset) {
  return {s.qkv.data_ptr<T>(), s.qkv.stride(0), s.qkv.stride(1), int(s.qkv.size(1)), offset,
          s.qScale.data_ptr<T>(), s.kScale.data_ptr<T>()};
}

unsigned blocksFor(const Shape& z, int rows) {
  const int64_t warps = int64_t(z.B) * rows * z.H * 3;
  return unsigned((warps * kWarp + kThreads - 1) / kThreads);
}

}  // namespace

std::array<at::Tensor, 3> qkvRopeForward(const std::vector<QkvSegment>& segs, const at::Tensor& cos,
                                         const at::Tensor& sin, int64_t heads, double eps) {
  const Shape z = shapeOf(segs, heads, eps);
  const auto& x = segs[0].qkv;
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor c = cos.to(x.device(), at::kFloat).contiguous(), sn = sin.to(x.device(), at::kFloat).contiguous();
  TORCH_CHECK(c.size(0) == z.L && c.size(1) == z.hd / 2, "qkvRope: cos/sin must be [tokens, hd/2]");
  auto opts = x.options();
  at::Tensor q = at::empty({z.B, z.H, z.L, z.hd}, opts), k = at::empty_like(q), v = at::empty_like(q);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qkvRopeForward", [&] {
    int offset = 0;
    for (auto& s : segs) {
      const int rows = int(s.qkv.size(1));
      if (rows) forwardKernel<scalar_t><<<blocksFor(z, rows), kThreads, 0, stream>>>(
          segOf<scalar_t>(s, offset), z, c.data_ptr<float>(), sn.data_ptr<float>(), q.data_ptr<scalar_t>(),
          k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>());
      offset += rows;
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, k, v};
}

std::vector<at::Tensor> qkvRopeBackward(const std::vector<QkvSegment>& segs, const at::Tensor& cos,
                                        const at::Tensor& sin, int64_t heads, double eps, const at::Tensor& dq,
                                        const at::Tensor& dk, const at::Tensor& dv) {
  const Shape z = shapeOf(segs, heads, eps);
  const auto& x = segs[0].qkv;
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor c = cos.to(x.device(), at::kFloat).contiguous(), sn = sin.to(x.device(), at::kFloat).contiguous();
  auto prep = [&](const at::Tensor& g) {
    return g.defined() ? g.to(x.scalar_type()).contiguous() : at::zeros({z.B, z.H, z.L, z.hd}, x.options());
  };
  const at::Tensor gq = prep(dq), gk = prep(dk), gv = prep(dv);
  std::vector<at::Tensor> out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qkvRopeBackward", [&] {
    int offset = 0;
    for (auto& s : segs) {
      const int rows = int(s.qkv.size(1));
      at::Tensor d = at::empty({z.B, rows, 3 * int64_t(z.hidden)}, x.options());
      if (rows) backwardKernel<scalar_t><<<blocksFor(z, rows), kThreads, 0, stream>>>(
          segOf<scalar_t>(s, offset), z, c.data_ptr<float>(), sn.data_ptr<float>(), gq.data_ptr<scalar_t>(),
          gk.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), d.data_ptr<scalar_t>());
      out.push_back(d);
      offset += rows;
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace x2i::kernels
