#include "core/random.h"

#include <ATen/CPUGeneratorImpl.h>

namespace x2i {

at::Tensor randn(const std::vector<int64_t>& shape, at::ScalarType dtype, c10::Device device, bool seeded, uint64_t seed) {
  at::Generator gen = seeded ? at::detail::createCPUGenerator(seed) : at::detail::getDefaultCPUGenerator();
  at::Tensor t = at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));  // locks gen itself
  return t.to(device).to(dtype);
}

}  // namespace x2i
