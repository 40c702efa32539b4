#include "core/streams.h"

#include "core/dtype.h"

#ifdef X2I_CUDA_KERNELS
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#include <string>
#endif

namespace x2i {

#ifdef X2I_CUDA_KERNELS
void waitFor(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& done) {
  if (waiter == done) return;
  const c10::cuda::CUDAGuard onDevice(done.device_index());  // the event on the streams' device, whatever the thread's
  cudaEvent_t e;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(e, done.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), e, 0));
  C10_CUDA_CHECK(cudaEventDestroy(e));  // released once the wait has happened
}

struct SideStream::Impl {
  c10::cuda::CUDAStream caller, side;
  c10::cuda::CUDAStreamGuard guard;
  bool finished = false;
  Impl(c10::cuda::CUDAStream c, c10::cuda::CUDAStream s) : caller(c), side(s), guard(s) {}
};

namespace {
// One stream per tag and device, for the process's life, made here (not taken from LibTorch's round-robin pool, whose
// streams other code — a CUDA graph's capture, NCCL — may be using at the same time); non-blocking, never destroyed.
c10::cuda::CUDAStream sideStreamOf(const char* tag, c10::DeviceIndex d) {
  static std::mutex mu;
  static auto* made = new std::map<std::pair<std::string, c10::DeviceIndex>, c10::cuda::CUDAStream>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = made->find({tag, d});
  if (it == made->end()) {
    const c10::cuda::CUDAGuard onDevice(d);
    cudaStream_t s;
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    it = made->emplace(std::make_pair(std::string(tag), d), c10::cuda::getStreamFromExternal(s, d)).first;
  }
  return it->second;
}
}  // namespace

SideStream::SideStream(const c10::Device& d, const char* tag) {
  if (!d.is_cuda()) return;
  const auto caller = c10::cuda::getCurrentCUDAStream(d.index());
  const auto side = sideStreamOf(tag, d.index());
  waitFor(side, caller);
  impl_ = std::make_unique<Impl>(caller, side);
}

// a forward that threw: the caller's later work waits for what the side stream still runs (it may read the caller's
// tensors, which are freed now)
SideStream::~SideStream() {
  if (!impl_ || impl_->finished) return;
  try {
    waitFor(impl_->caller, impl_->side);
  } catch (...) {
  }
}

void SideStream::finish(std::initializer_list<const at::Tensor*> outputs) {
  if (!impl_) return;
  for (const at::Tensor* t : outputs)
    if (t->defined() && t->is_cuda()) t->record_stream(impl_->caller);
  impl_->side.synchronize();
  impl_->finished = true;
}
#else
// without the CUDA kernels (a CUDA LibTorch built without nvcc): the caller's stream, synchronised at the end
struct SideStream::Impl {
  c10::Device device;
};
SideStream::SideStream(const c10::Device& d, const char*) : impl_(std::make_unique<Impl>(Impl{d})) {}
SideStream::~SideStream() = default;
void SideStream::finish(std::initializer_list<const at::Tensor*>) { syncDevice(impl_->device); }
#endif

}  // namespace x2i
