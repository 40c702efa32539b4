// Fused QKV split + QK-RMSNorm + RoPE (forward and backward) for the FLUX joint attention: one warp per
// (token, head, q|k|v) row, float32 math, one read of the projection output and one write of each head
// tensor in the [B, heads, tokens, hd] layout SDPA takes. Where the head dim is 32·V (FLUX: 128, V = 4) and the rows
// are aligned, a lane holds V consecutive elements (one vector load or store per row and tensor: forwardVec,
// backwardVec); else a lane strides over the row (forwardKernel, backwardKernel).
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

// The row this thread's warp serves — token l of sample b, head h, which = 0 | 1 | 2 (q | k | v) — and where it
// starts: in the projection output (in), in its gradient (din, [B, rows, 3·hidden]), in the head tensors (out); pos:
// the token's place over all segments (its RoPE row). False past the end.
struct Row {
  int lane, which;
  int64_t in, din, out, pos;
};
template <typename T>
__device__ __forceinline__ bool rowOf(const Seg<T>& s, const Shape& z, Row& r) {
  int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (w >= int64_t(z.B) * s.rows * z.H * 3) return false;
  r.lane = int(threadIdx.x % kWarp);
  r.which = int(w % 3);
  w /= 3;
  const int64_t h = w % z.H;
  w /= z.H;
  const int64_t l = w % s.rows, b = w / s.rows, col = r.which * int64_t(z.hidden) + h * z.hd;
  r.in = b * s.sB + l * s.sL + col;
  r.din = (b * s.rows + l) * 3 * z.hidden + col;
  r.pos = s.offset + l;
  r.out = ((b * z.H + h) * z.L + r.pos) * z.hd;
  return true;
}

template <typename T>
__global__ void forwardKernel(Seg<T> s, Shape z, const float* cos, const float* sin, T* q, T* k, T* v) {
  Row row;
  if (!rowOf(s, z, row)) return;
  const int lane = row.lane, which = row.which;
  const T* x = s.qkv + row.in;
  const int64_t o = row.out;
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
  const float *c = cos + row.pos * half, *sn = sin + row.pos * half;
  for (int p = lane; p < half; p += kWarp) {
    const float n0 = float(x[2 * p]) * r * float(sc[2 * p]), n1 = float(x[2 * p + 1]) * r * float(sc[2 * p + 1]);
    out[2 * p] = T(n0 * c[p] - n1 * sn[p]);
    out[2 * p + 1] = T(n0 * sn[p] + n1 * c[p]);
  }
}

template <typename T>
__global__ void backwardKernel(Seg<T> s, Shape z, const float* cos, const float* sin, const T* dq, const T* dk,
                               const T* dv, T* dqkv) {
  Row row;
  if (!rowOf(s, z, row)) return;
  const int lane = row.lane, which = row.which;
  const T* x = s.qkv + row.in;
  T* dx = dqkv + row.din;
  const int64_t o = row.out;
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
  const float *c = cos + row.pos * half, *sn = sin + row.pos * half;
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


// ---- V consecutive elements per lane (hd = 32·V, V even; rows aligned to V elements)
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
template <typename T, int V>
__device__ __forceinline__ void loadV(const T* p, float (&f)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) f[i] = float(pk.v[i]);
}
template <typename T, int V>
__device__ __forceinline__ void storeV(T* p, const float (&f)[V]) {
  Pack<T, V> pk;
#pragma unroll
  for (int i = 0; i < V; ++i) pk.v[i] = T(f[i]);
  *reinterpret_cast<Pack<T, V>*>(p) = pk;
}

template <typename T, int V>
__global__ void forwardVec(Seg<T> s, Shape z, const float* cos, const float* sin, T* q, T* k, T* v) {
  Row row;
  if (!rowOf(s, z, row)) return;
  const int lane = row.lane, which = row.which;
  const T* x = s.qkv + row.in + lane * V;
  const int64_t o = row.out + lane * V;
  float a[V];
  loadV<T, V>(x, a);
  if (which == 2) return storeV<T, V>(v + o, a);
  float ss = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) ss += a[i] * a[i];
  const float r = rsqrtf(warpSum(ss) / z.hd + z.eps);
  float sc[V], c[V / 2], sn[V / 2];
  loadV<T, V>((which == 0 ? s.qs : s.ks) + lane * V, sc);
  const int64_t pr = row.pos * (z.hd / 2) + lane * (V / 2);  // this lane's rotation pairs
#pragma unroll
  for (int j = 0; j < V / 2; ++j) c[j] = cos[pr + j], sn[j] = sin[pr + j];
  float y[V];
#pragma unroll
  for (int j = 0; j < V / 2; ++j) {
    const float n0 = a[2 * j] * r * sc[2 * j], n1 = a[2 * j + 1] * r * sc[2 * j + 1];
    y[2 * j] = n0 * c[j] - n1 * sn[j];
    y[2 * j + 1] = n0 * sn[j] + n1 * c[j];
  }
  storeV<T, V>((which == 0 ? q : k) + o, y);
}

template <typename T, int V>
__global__ void backwardVec(Seg<T> s, Shape z, const float* cos, const float* sin, const T* dq, const T* dk,
                            const T* dv, T* dqkv) {
  Row row;
  if (!rowOf(s, z, row)) return;
  const int lane = row.lane, which = row.which;
  T* dx = dqkv + row.din + lane * V;
  const int64_t o = row.out + lane * V;
  float g[V];
  if (which == 2) {
    loadV<T, V>(dv + o, g);
    return storeV<T, V>(dx, g);
  }
  float a[V], sc[V], c[V / 2], sn[V / 2];
  loadV<T, V>(s.qkv + row.in + lane * V, a);
  loadV<T, V>((which == 0 ? dq : dk) + o, g);
  loadV<T, V>((which == 0 ? s.qs : s.ks) + lane * V, sc);
  float ss = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) ss += a[i] * a[i];
  const float r = rsqrtf(warpSum(ss) / z.hd + z.eps);
  const int64_t pr = row.pos * (z.hd / 2) + lane * (V / 2);
#pragma unroll
  for (int j = 0; j < V / 2; ++j) c[j] = cos[pr + j], sn[j] = sin[pr + j];
  // y = R·(u ⊙ scale), u = x·r:  du = scale ⊙ Rᵀ dy;  dx = r·(du − u·⟨du, u⟩/hd)
  float du[V], dot = 0;
#pragma unroll
  for (int j = 0; j < V / 2; ++j) {
    du[2 * j] = (g[2 * j] * c[j] + g[2 * j + 1] * sn[j]) * sc[2 * j];
    du[2 * j + 1] = (g[2 * j + 1] * c[j] - g[2 * j] * sn[j]) * sc[2 * j + 1];
    dot += du[2 * j] * a[2 * j] * r + du[2 * j + 1] * a[2 * j + 1] * r;
  }
  dot = warpSum(dot) / z.hd;
  float d[V];
#pragma unroll
  for (int i = 0; i < V; ++i) d[i] = r * (du[i] - a[i] * r * dot);
  storeV<T, V>(dx, d);
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

// V for the vector kernels (0: the striding ones): hd = 32·V with V ∈ {2, 4}, every row and pointer aligned to V elements
template <typename T>
int vecWidth(const Shape& z, const std::vector<QkvSegment>& segs, std::initializer_list<const at::Tensor*> more) {
  const int V = z.hd == 128 ? 4 : z.hd == 64 ? 2 : 0;
  if (!V) return 0;
  auto ok = [&](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % (sizeof(T) * V) == 0; };
  for (auto& s : segs)
    if (!ok(s.qkv) || !ok(s.qScale) || !ok(s.kScale) || s.qkv.stride(0) % V || s.qkv.stride(1) % V) return 0;
  for (const at::Tensor* t : more)
    if (!ok(*t)) return 0;
  return z.hidden % V ? 0 : V;
}

// The kernel for a vector width V (0: the striding one); all of one signature.
template <typename T>
auto forwardFor(int V) { return V == 4 ? forwardVec<T, 4> : V == 2 ? forwardVec<T, 2> : forwardKernel<T>; }
template <typename T>
auto backwardFor(int V) { return V == 4 ? backwardVec<T, 4> : V == 2 ? backwardVec<T, 2> : backwardKernel<T>; }

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
    const int V = vecWidth<scalar_t>(z, segs, {});
    int offset = 0;
    for (auto& s : segs) {
      const int rows = int(s.qkv.size(1));
      if (rows) forwardFor<scalar_t>(V)<<<blocksFor(z, rows), kThreads, 0, stream>>>(
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
    const int V = vecWidth<scalar_t>(z, segs, {&gq, &gk, &gv});
    int offset = 0;
    for (auto& s : segs) {
      const int rows = int(s.qkv.size(1));
      at::Tensor d = at::empty({z.B, rows, 3 * int64_t(z.hidden)}, x.options());
      if (rows) backwardFor<scalar_t>(V)<<<blocksFor(z, rows), kThreads, 0, stream>>>(
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
