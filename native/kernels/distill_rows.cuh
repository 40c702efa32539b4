// The X2I distillation loss of many rows in one pass over memory (plain CUDA, no ATen: distill_kernel.cu
// instantiates and launches it). A row group of W warps owns one row of D channels: it reads the student
// and the teacher row once (16-byte loads, kept packed in registers), and writes the row's term and the
// gradient with respect to the student's raw features, plus an optional incoming gradient (the backward
// at a tap: out = incoming + gradScale·d term/d student), once. Every reduction is a warp shuffle (and, for
// W > 1, one exchange through shared memory). Per row, in float32:
//   z = (x − mean) / (σ + eps), σ the unbiased std;  a = z/τ;  p = softmax(a)            (student and teacher)
//   rkl: term = Σ p_S (log p_S − log p_T)   kl: Σ p_T (log p_T − log p_S)   js: ½ Σ p (log p − log m) + …
//   mse: Σ (s − t)² on the raw features.
// The softmax is taken in base 2 (one ex2 per element and side); the row's partition functions and the
// sums the gradient needs are gathered in the same pass for rkl and kl (the logits need no max: |z| ≤
// (D − 1)/√D bounds them, and a max pass is taken only where that bound could overflow). Gradient:
//   g_a = d term / d a  (rkl: p_S (ls − lt − term), kl: p_S − p_T, js: p_S (g − Σ p_S g), g = ½(ls − lm));
//   d term / d x = (inv/τ) · (g_a − d · inv · Σ g_a d / ((D − 1) σ)),  inv = 1/(σ + eps), d = x − mean
// (Σ g_a = 0 for a softmax, so the mean-gradient term of the z-normalisation vanishes exactly).
// Each block writes the sum of its rows' terms to partials[block]; distillFinalize sums them in a fixed
// order (deterministic), writes term = termScale · Σ, and where it is not finite overwrites the gradient
// with the incoming gradient (or zeros): a skipped tap sends no gradient of its own.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <map>
#include <mutex>
#include <utility>

namespace x2i::kernels::rows {

enum Div { Rkl = 0, Kl = 1, Js = 2, Mse = 3 };

// Word i of a 16-byte vector (i a compile-time constant after unrolling: no address is taken, so the
// vectors stay in registers).
__device__ __forceinline__ uint32_t word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// 16 bytes of T: element j of a packed vector as float, and VEC floats packed back.
template <typename T> struct Pack;
template <> struct Pack<float> {
  static constexpr int VEC = 4;
  __device__ static float get(const uint4& v, int j) { return __uint_as_float(word(v, j)); }
  __device__ static uint4 put(const float (&f)[4]) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
  __device__ static float scalar(const float* p) { return *p; }
  __device__ static void store(float* p, float f) { *p = f; }
};
// The two 16-bit float types: D gives get (element j of a vector), pair (two floats rounded into one word),
// toFloat and fromFloat.
template <class D, typename H>
struct Pack16 {
  static constexpr int VEC = 8;
  __device__ static uint4 put(const float (&f)[8]) {
    return make_uint4(D::pair(f[0], f[1]), D::pair(f[2], f[3]), D::pair(f[4], f[5]), D::pair(f[6], f[7]));
  }
  __device__ static float scalar(const H* p) { return D::toFloat(*p); }
  __device__ static void store(H* p, float f) { *p = D::fromFloat(f); }
};
template <> struct Pack<__nv_bfloat16> : Pack16<Pack<__nv_bfloat16>, __nv_bfloat16> {
  __device__ static float get(const uint4& v, int j) {  // bf16 → float is a 16-bit shift
    const uint32_t w = word(v, j / 2);
    return __uint_as_float(j % 2 ? (w & 0xffff0000u) : (w << 16));
  }
  __device__ static uint32_t pair(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ static float toFloat(__nv_bfloat16 h) { return __bfloat162float(h); }
  __device__ static __nv_bfloat16 fromFloat(float f) { return __float2bfloat16_rn(f); }
};
template <> struct Pack<__half> : Pack16<Pack<__half>, __half> {
  __device__ static float get(const uint4& v, int j) {
    const uint32_t w = word(v, j / 2);
    return __half2float(__ushort_as_half(uint16_t(j % 2 ? w >> 16 : w & 0xffffu)));
  }
  __device__ static uint32_t pair(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ static float toFloat(__half h) { return __half2float(h); }
  __device__ static __half fromFloat(float f) { return __float2half_rn(f); }
};

__device__ __forceinline__ float ex2(float x) {  // 2^x, MUFU (rel. err ~2^-22), flushes 2^-126 and below to 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// 16-byte asynchronous copies global → shared (sm_80+), completing in commit groups.
__device__ __forceinline__ void copyAsync16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void commitAsync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void waitAsync() {  // until at most N of the latest groups are in flight
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

constexpr float kLn2 = 0.693147180559945309f, kLog2e = 1.442695040888963407f;

// Sums (or maxima) of K values over the W warps of a row group; every thread gets the same result.
// `scratch` holds K·W floats per row group; W == 1 uses no shared memory and no barrier.
template <int W, bool Max, int K>
__device__ __forceinline__ void groupReduce(float (&v)[K], float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float x = __shfl_xor_sync(0xffffffffu, v[k], o);
      v[k] = Max ? fmaxf(v[k], x) : v[k] + x;
    }
  if constexpr (W > 1) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // the previous reduction's readers are done
    if (lane == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) scratch[k * W + warp] = v[k];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float s = scratch[k * W];
#pragma unroll
      for (int w = 1; w < W; ++w) s = Max ? fmaxf(s, scratch[k * W + w]) : s + scratch[k * W + w];
      v[k] = s;
    }
  }
}

struct Params {
  const void* s;
  const void* t;
  const void* incoming;  // may be null
  void* grad;
  float* partials;       // one per block
  int64_t rows;
  int D;
  int64_t sStride, tStride, inStride;  // elements from one row to the next (the gradient's rows are packed: D)
  bool aligned;          // every row starts on a 16-byte boundary
  float invTau, eps, gradScale;
};

// Threads per block: one row group for W > 1, four one-warp rows for W == 1.
template <int W> __host__ __device__ constexpr int blockThreads() { return W == 1 ? 128 : 32 * W; }

// E elements of the row per thread and side, as float32 in registers (NV = E/VEC 16-byte loads).
// InMode: 0 no incoming gradient, 1 one, 2 decided at run time (the masked tiles).
template <typename T, int W, int E, bool Masked, int DIV, int MinBlocks = 1, bool NoPrefetch = false, int InMode = 2>
__global__ void __launch_bounds__(blockThreads<W>(), MinBlocks) distillRowsKernel(Params P) {
  using PK = Pack<T>;
  constexpr int VEC = PK::VEC, NV = E / VEC, G = 32 * W, GROUPS = blockThreads<W>() / G;
  static_assert(E % VEC == 0, "E must be a multiple of the vector width");
  __shared__ float scratch[8 * W];
  __shared__ float blockTerms[GROUPS];
  const int group = threadIdx.x / G, r = threadIdx.x % G, D = P.D;
  const T* S = static_cast<const T*>(P.s);
  const T* Tt = static_cast<const T*>(P.t);
  const T* In = static_cast<const T*>(P.incoming);
  T* Out = static_cast<T*>(P.grad);
  const bool hasIn = InMode == 2 ? In != nullptr : InMode == 1;
  // element j of vector v of this thread: channel (v·G + r)·VEC + j
  auto ok = [&](int v, int j) { return !Masked || (v * G + r) * VEC + j < D; };
  auto load = [&](const T* row, int v, float* f) {  // padding reads as 0
    const int i = (v * G + r) * VEC;
    if constexpr (Masked) {
      if (!P.aligned || i + VEC > D) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) f[j] = i + j < D ? PK::scalar(row + i + j) : 0.f;
        return;
      }
    }
    const uint4 u = __ldcs(reinterpret_cast<const uint4*>(row + i));
#pragma unroll
    for (int j = 0; j < VEC; ++j) f[j] = PK::get(u, j);
  };
  auto store = [&](T* row, int v, const float (&f)[VEC]) {
    const int i = (v * G + r) * VEC;
    if constexpr (Masked) {
      if (!P.aligned || i + VEC > D) {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (i + j < D) PK::store(row + i + j, f[j]);
        return;
      }
    }
    __stcs(reinterpret_cast<uint4*>(row + i), PK::put(f));
  };
  // the logits need no max shift while 2^U·D (U = (D−1)/√D/τ in base 2, the largest logit) stays far
  // inside float's range (2^64: the gradient's sums also carry a factor |u|·|d|)
  const float U = float(D - 1) * rsqrtf(float(D)) * P.invTau * kLog2e;
  const bool needMax = U + log2f(float(D)) > 64.f;
  const float invD = 1.f / float(D), invDm1 = 1.f / float(D - 1);

  // Unmasked tiles stream the next row into shared memory while the current one is computed from registers
  // (cp.async: each thread copies, and later reads, only its own 16-byte slots, so no barrier is needed).
  // Groups: A = the student and teacher row, B = the incoming gradient row (needed only at the end).
  constexpr bool Prefetch = !NoPrefetch && !Masked && 3 * blockThreads<W>() * NV * 16 <= 40 * 1024;  // static shared memory: 48 KiB in all
  __shared__ uint4 stage[Prefetch ? 3 * NV * blockThreads<W>() : 1];
  auto slot = [&](int side, int v) { return &stage[(side * NV + v) * blockThreads<W>() + threadIdx.x]; };
  auto prefetchRows = [&](int64_t row) {  // group A
    if (row < P.rows)
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int i = (v * G + r) * VEC;
        copyAsync16(slot(0, v), S + row * P.sStride + i), copyAsync16(slot(1, v), Tt + row * P.tStride + i);
      }
    commitAsync();
  };
  auto prefetchIncoming = [&](int64_t row) {  // group B
    if (hasIn && row < P.rows)
#pragma unroll
      for (int v = 0; v < NV; ++v) copyAsync16(slot(2, v), In + row * P.inStride + (v * G + r) * VEC);
    commitAsync();
  };
  auto unpack = [&](const uint4& u, float* f) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) f[j] = PK::get(u, j);
  };
  // the incoming gradient's vector v of `row` (from the stage when prefetched), added into g
  auto incoming = [&](int64_t row, int v, float* g) {
    if constexpr (Prefetch) unpack(*slot(2, v), g);
    else load(In + row * P.inStride, v, g);
  };

  // f(e) for each channel e = v·VEC + j of this thread's registers that lies inside the row
  auto forChannels = [&](auto&& f) {
#pragma unroll
    for (int v = 0; v < NV; ++v)
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        if (ok(v, j)) f(v * VEC + j);
  };
  // row's gradient, vector by vector: gradOf(v, j, incoming or 0) for each channel, written in T
  auto writeGradient = [&](int64_t row, auto&& gradOf) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      float g[VEC];
      if (hasIn) incoming(row, v, g);
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[j] = gradOf(v, j, hasIn ? g[j] : 0.f);
      store(Out + row * D, v, g);
    }
  };

  float acc = 0.f;  // Σ of this row group's terms
  const int64_t groupsTotal = int64_t(gridDim.x) * GROUPS;
  const int64_t first = int64_t(blockIdx.x) * GROUPS + group;
  if constexpr (Prefetch) prefetchRows(first), prefetchIncoming(first);
  for (int64_t row = first; row < P.rows; row += groupsTotal) {
    float xs[E], xt[E];  // student, teacher
    if constexpr (Prefetch) {
      waitAsync<1>();  // this row's A (its B may still be in flight)
#pragma unroll
      for (int v = 0; v < NV; ++v) unpack(*slot(0, v), xs + v * VEC), unpack(*slot(1, v), xt + v * VEC);
      prefetchRows(row + groupsTotal);
    } else {
#pragma unroll
      for (int v = 0; v < NV; ++v) load(S + row * P.sStride, v, xs + v * VEC), load(Tt + row * P.tStride, v, xt + v * VEC);
    }
    if constexpr (Prefetch) waitAsync<1>();  // this row's B (the next row's A may still be in flight)
    float term;
    if constexpr (DIV == Mse) {
      float q[1] = {0.f};
#pragma unroll
      for (int e = 0; e < E; ++e) {
        xs[e] -= xt[e];  // d; padding: 0 − 0
        q[0] = fmaf(xs[e], xs[e], q[0]);
      }
      writeGradient(row, [&](int v, int j, float in) { return fmaf(2.f * P.gradScale, xs[v * VEC + j], in); });
      groupReduce<W, false>(q, scratch);
      term = q[0];
    } else {
      // centre (in place: only d = x − mean is needed from here on), then the unbiased std
      float m[2] = {0.f, 0.f};
#pragma unroll
      for (int e = 0; e < E; ++e) m[0] += xs[e], m[1] += xt[e];  // padding is 0
      groupReduce<W, false>(m, scratch);
      const float meanS = m[0] * invD, meanT = m[1] * invD;
      float q[2] = {0.f, 0.f};
#pragma unroll
      for (int v = 0; v < NV; ++v)
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          float &ds = xs[v * VEC + j], &dt = xt[v * VEC + j];
          ds = ok(v, j) ? ds - meanS : 0.f, dt = ok(v, j) ? dt - meanT : 0.f;  // padding stays 0
          q[0] = fmaf(ds, ds, q[0]), q[1] = fmaf(dt, dt, q[1]);
        }
      groupReduce<W, false>(q, scratch);
      const float sigS = sqrtf(q[0] * invDm1), sigT = sqrtf(q[1] * invDm1);
      const float invS = 1.f / (sigS + P.eps), invT = 1.f / (sigT + P.eps);
      const float KS = invS * P.invTau * kLog2e, KT = invT * P.invTau * kLog2e;  // base-2 logit per unit of d
      float offS = 0.f, offT = 0.f;                                             // the logits' shift
      if (needMax) {
        float mx[2] = {-INFINITY, -INFINITY};
        forChannels([&](int e) { mx[0] = fmaxf(mx[0], xs[e]), mx[1] = fmaxf(mx[1], xt[e]); });
        groupReduce<W, true>(mx, scratch);
        offS = -mx[0] * KS, offT = -mx[1] * KT;
      }
      // u = d·K + off: base-2 logits; e = 2^u
      float lseS, lseT, L, Sgd;  // log2 partition functions, the term (natural log), Σ g_a d
      float PG = 0.f;            // js: Σ p_S g
      float delta = 0.f;         // log2 Zs/Zt
      if constexpr (DIV == Rkl || DIV == Kl) {
        // one pass: Zs, Zt and the sums, unnormalised; then normalised
        float a[5] = {0.f, 0.f, 0.f, 0.f, 0.f};  // Zs, Zt, X, A, B
        forChannels([&](int e) {
          const float ds = xs[e], dt = xt[e];
          const float us = fmaf(ds, KS, offS), ut = fmaf(dt, KT, offT);
          const float es = ex2(us), et = ex2(ut);
          a[0] += es, a[1] += et;
          if constexpr (DIV == Rkl) {  // X = Σ es (us − ut), A = Σ es (us − ut) d, B = Σ es d
            const float w = es * (us - ut);
            a[2] += w, a[3] = fmaf(w, ds, a[3]), a[4] = fmaf(es, ds, a[4]);
            xt[e] = us - ut;  // the teacher is needed from here on only through this
          } else {  // X = Σ et (ut − us), A = Σ es d, B = Σ et d
            a[2] = fmaf(et, ut - us, a[2]), a[3] = fmaf(es, ds, a[3]), a[4] = fmaf(et, ds, a[4]);
            xt[e] = ut;
          }
        });
        groupReduce<W, false>(a, scratch);
        lseS = lg2(a[0]), lseT = lg2(a[1]);
        delta = log2f(a[0] / a[1]);  // lseS − lseT without the rounding of two numbers near log2 D
        const float rZs = 1.f / a[0], rZt = 1.f / a[1];
        if constexpr (DIV == Rkl) {
          L = kLn2 * (a[2] * rZs - delta);
          Sgd = kLn2 * (a[3] * rZs - delta * a[4] * rZs) - L * a[4] * rZs;
        } else {
          L = kLn2 * (a[2] * rZt + delta);
          Sgd = a[3] * rZs - a[4] * rZt;
        }
      } else {  // js: the partition functions first, then the normalised sums
        float z[2] = {0.f, 0.f};
        forChannels([&](int e) { z[0] += ex2(fmaf(xs[e], KS, offS)), z[1] += ex2(fmaf(xt[e], KT, offT)); });
        groupReduce<W, false>(z, scratch);
        lseS = lg2(z[0]), lseT = lg2(z[1]);
        delta = log2f(z[0] / z[1]);
        // per channel r = log2(p_T/p_S) from the logits (small numbers: no difference of two log-probabilities
        // near log2 D), and log2 p − log2 m = 1 − log2(1 + 2^r) through log1p
        float a[4] = {0.f, 0.f, 0.f, 0.f};  // term, PG = Σ p g, A = Σ p g d, B = Σ p d
        forChannels([&](int e) {
          const float ds = xs[e], dt = xt[e];
          const float us = fmaf(ds, KS, offS), ut = fmaf(dt, KT, offT), rr = (ut - us) + delta;
          const float ps = ex2(us - lseS), pt = ex2(ut - lseT);
          const float L1 = 1.f - (fmaxf(rr, 0.f) + log1pf(ex2(-fabsf(rr))) * kLog2e);  // log2 p_S − log2 m
          const float g = 0.5f * kLn2 * L1;
          a[0] += 0.5f * kLn2 * ((ps + pt) * L1 + pt * rr);
          a[1] = fmaf(ps, g, a[1]), a[2] = fmaf(ps * g, ds, a[2]), a[3] = fmaf(ps, ds, a[3]);
          xt[e] = rr;
        });
        groupReduce<W, false>(a, scratch);
        L = a[0], PG = a[1];
        Sgd = a[2] - PG * a[3];
      }
      term = L;
      // the gradient: gr = k·(g_a − C·d),  k = gradScale·inv/τ,  C = inv·Sgd/((D−1)σ)
      const float k = P.gradScale * invS * P.invTau;
      const float C = sigS > 0.f ? invS * Sgd * invDm1 / sigS : 0.f;
      // rkl: k·g_a = p_S·(α·(us − ut) + β) with the base-2 logit difference kept by the pass above
      const float kC = k * C, cS = offS - lseS, alpha = k * kLn2, beta = -k * (kLn2 * delta + L);
      writeGradient(row, [&](int v, int j, float in) {
        const float ds = xs[v * VEC + j], q = xt[v * VEC + j];  // q: rkl us − ut, kl ut, js log2 p_T/p_S
        const float ps = ex2(fmaf(ds, KS, cS));                  // p_S
        float kga;                                               // k·g_a
        if constexpr (DIV == Rkl) kga = ps * fmaf(alpha, q, beta);
        else if constexpr (DIV == Kl) kga = k * (ps - ex2(q - lseT));
        else kga = k * ps * (0.5f * kLn2 * (1.f - (fmaxf(q, 0.f) + log1pf(ex2(-fabsf(q))) * kLog2e)) - PG);
        return fmaf(-kC, ds, kga + in);
      });
    }
    if constexpr (Prefetch) prefetchIncoming(row + groupsTotal);
    acc += term;
  }
  // the block's partial: its row groups' sums in a fixed order
  if (r == 0) blockTerms[group] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < GROUPS; ++i) s += blockTerms[i];
    P.partials[blockIdx.x] = s;
  }
}

// term = termScale · Σ partials in a fixed order (one block); if it is not finite, grad = incoming or 0
// (rare: the one block then rewrites the tap on its own).
template <typename T>
__global__ void __launch_bounds__(1024) distillFinalize(const float* __restrict__ partials, int n, float termScale,
                                                       float* __restrict__ term, T* __restrict__ grad,
                                                       const T* __restrict__ incoming, int64_t numel) {
  __shared__ double red[32];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += 1024) s += partials[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
  __syncthreads();
  s = threadIdx.x < 32 ? red[threadIdx.x] : 0.0;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ float v;
  if (threadIdx.x == 0) v = float(s * double(termScale)), *term = v;
  __syncthreads();
  if (isfinite(v)) return;
  for (int64_t i = threadIdx.x; i < numel; i += 1024) grad[i] = incoming ? incoming[i] : T(0.f);
}

// The kernel for a row width, dtype and divergence: the smallest register tile (W warps × E channels per
// thread) that holds D; unmasked where D fills it exactly and the rows are 16-byte aligned.
using KernelFn = void (*)(Params);
struct Choice {
  KernelFn fn = nullptr;
  int threads = 0, groups = 0;  // threads per block, rows per block at a time
};
constexpr int kMaxD = 16384;

// Instantiated once per dtype and divergence, each in its own translation unit (CMake writes them:
// distill_rows_<dtype>_<div>.cu), so that the 16 kernels of each compile in parallel.
template <typename T, int DIV>
Choice chooseKernel(int D, bool aligned, bool incoming);

#ifdef X2I_ROWS_INSTANTIATE
template <typename T, int DIV, int W, int E, int MinBlocks = 1, bool NoPrefetch = false>
bool tile(int D, bool aligned, bool incoming, Choice& c) {
  constexpr int cap = 32 * W * E;
  if (D > cap) return false;
  c.fn = !(aligned && D == cap) ? distillRowsKernel<T, W, E, true, DIV>
         : incoming             ? distillRowsKernel<T, W, E, false, DIV, MinBlocks, NoPrefetch, 1>
                                : distillRowsKernel<T, W, E, false, DIV, MinBlocks, NoPrefetch, 0>;
  c.threads = blockThreads<W>();
  c.groups = blockThreads<W>() / (32 * W);
  return true;
}

template <typename T, int DIV>
Choice chooseKernel(int D, bool aligned, bool incoming) {
  Choice c;
  if (D < 2 || D > kMaxD) return c;
  // other tiles for FLUX's width (bf16, rkl), for the benchmark to compare: X2I_DISTILL_TILE = 2x48 | 6x16 | 4x24b5 | 4x24np | 4x24b5np (np: no shared-memory prefetch)
  if constexpr (std::is_same_v<T, __nv_bfloat16> && DIV == Rkl) {
    if (const char* v = std::getenv("X2I_DISTILL_TILE"); v && D == 3072 && aligned) {
      if (std::strcmp(v, "2x48") == 0 && tile<T, DIV, 2, 48>(D, aligned, incoming, c)) return c;
      if (std::strcmp(v, "6x16") == 0 && tile<T, DIV, 6, 16>(D, aligned, incoming, c)) return c;
      if (std::strcmp(v, "4x24b5") == 0 && tile<T, DIV, 4, 24, 5>(D, aligned, incoming, c)) return c;
      if (std::strcmp(v, "4x24np") == 0 && tile<T, DIV, 4, 24, 1, true>(D, aligned, incoming, c)) return c;
      if (std::strcmp(v, "4x24b5np") == 0 && tile<T, DIV, 4, 24, 5, true>(D, aligned, incoming, c)) return c;
    }
  }
  // W warps per row × E channels per thread (4 × 24 holds FLUX's 3072: the fastest of 1–12 warps per row
  // measured on an H200, bench/RESULTS.md)
  tile<T, DIV, 1, 32>(D, aligned, incoming, c) || tile<T, DIV, 2, 32>(D, aligned, incoming, c) || tile<T, DIV, 4, 24>(D, aligned, incoming, c) ||
      tile<T, DIV, 4, 32>(D, aligned, incoming, c) || tile<T, DIV, 4, 48>(D, aligned, incoming, c) || tile<T, DIV, 8, 32>(D, aligned, incoming, c) ||
      tile<T, DIV, 8, 48>(D, aligned, incoming, c) || tile<T, DIV, 16, 32>(D, aligned, incoming, c);
  return c;
}
#endif

template <typename T>
Choice choose(int D, bool aligned, int div, bool incoming) {
  switch (div) {
    case Rkl: return chooseKernel<T, Rkl>(D, aligned, incoming);
    case Kl: return chooseKernel<T, Kl>(D, aligned, incoming);
    case Js: return chooseKernel<T, Js>(D, aligned, incoming);
    default: return chooseKernel<T, Mse>(D, aligned, incoming);
  }
}

// The number of blocks for `rows` rows (persistent: at most what stays resident on the device). The
// occupancy of each kernel is asked once per device (with shared memory preferred over L1: the rows stream
// through and the prefetch stage lives there).
inline int gridFor(const Choice& c, int64_t rows, int numSMs) {
  static std::mutex mu;
  static std::map<std::pair<KernelFn, int>, int> perSMOf;
  int dev = 0;
  cudaGetDevice(&dev);
  int perSM = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = perSMOf.find({c.fn, dev});
    if (it != perSMOf.end()) perSM = it->second;
    else {
      cudaFuncSetAttribute(c.fn, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, c.fn, c.threads, 0) != cudaSuccess || perSM < 1) perSM = 1;
      cudaGetLastError();  // clear a failure of the attribute call (an older driver): the default carveout stays
      perSMOf[{c.fn, dev}] = perSM;
    }
  }
  const int64_t need = (rows + c.groups - 1) / c.groups;
  const int64_t most = int64_t(perSM) * numSMs;
  return int(need < most ? need : most);
}

}  // namespace x2i::kernels::rows
