// The CUDA caching allocator's counters (what torch.cuda.memory_allocated / max_memory_allocated read), its cap, and
// the device's compute capability.
#include "kernels/kernels.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <mutex>

namespace x2i::kernels {

DeviceMemory cudaMemory(int device) {
  const auto s = c10::cuda::CUDACachingAllocator::getDeviceStats(c10::DeviceIndex(device));
  const auto all = size_t(c10::CachingAllocator::StatType::AGGREGATE);
  return {s.allocated_bytes[all].current, s.allocated_bytes[all].peak, s.reserved_bytes[all].current,
          s.reserved_bytes[all].peak};
}

void cudaResetPeakMemory(int device) { c10::cuda::CUDACachingAllocator::resetPeakStats(c10::DeviceIndex(device)); }

void cudaEmptyCache() { c10::cuda::CUDACachingAllocator::emptyCache(); }

int64_t cudaTotalMemory(int device) {
  const c10::cuda::CUDAGuard guard(c10::DeviceIndex(device));
  size_t free = 0, total = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return int64_t(total);
}

int computeCapability(int device) {
  static std::mutex mu;
  static std::array<int, 64> known{};  // per device: 0 not asked yet
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0 || device >= int(known.size())) return 0;
  if (!known[size_t(device)]) {
    int major = 0, minor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    known[size_t(device)] = major * 10 + minor;
  }
  return known[size_t(device)];
}

void cudaSetMemoryFraction(int device, double fraction) {
  c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, c10::DeviceIndex(device));
}

}  // namespace x2i::kernels
