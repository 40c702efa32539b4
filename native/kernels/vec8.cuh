// Eight consecutive elements of a row as float32, moved in 16-byte accesses (bf16 / fp16: one, float32: two); the
// callers check the 16-byte alignment of the address (kernels/fp8.cu, kernels/gelu.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace x2i::kernels::vec8 {

constexpr int kVec = 8;

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[kVec]) {
  if constexpr (sizeof(T) == 2) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int c = 0; c < kVec; ++c) v[c] = float(h[c]);
  } else {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[kVec]) {
  if constexpr (sizeof(T) == 2) {
    uint4 raw;
    T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int c = 0; c < kVec; ++c) h[c] = T(v[c]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

}  // namespace x2i::kernels::vec8
