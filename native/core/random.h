// Random tensors drawn the same way on every device.
#pragma once
#include "core/dtype.h"

#include <vector>

namespace x2i {

// Standard normal values drawn on the CPU in float32 (the same numbers on every device for a seed, as diffusers
// recommends; unseeded: the default CPU generator), then moved to `device` and cast to `dtype`.
at::Tensor randn(const std::vector<int64_t>& shape, at::ScalarType dtype, c10::Device device, bool seeded, uint64_t seed);

}  // namespace x2i
