// Moving tensors between host and GPU memory.
#pragma once
#include "core/dtype.h"

namespace x2i {

// t on `device`. Between pageable host memory and a GPU, large tensors go through two pinned staging
// buffers so that the host copy of one chunk overlaps the DMA of the other (LibTorch's pageable copy is a
// synchronous driver copy, several times slower). Returns when the copy is complete.
at::Tensor moveTo(const at::Tensor& t, c10::Device device);

// Bytes of t's elements (0 for an undefined tensor).
inline int64_t nbytesOf(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }

}  // namespace x2i
