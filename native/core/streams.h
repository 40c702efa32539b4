// A model's forward on a stream of its own, so that independent models called from different worker threads
// (FLUX's T5 and CLIP, the MLLM of X2I's student) overlap on the GPU: GEMMs of 512 tokens fill half an H100's SMs.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <memory>
#ifdef X2I_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>
#endif

namespace x2i {

#ifdef X2I_CUDA_KERNELS
// `waiter`'s later work starts after what `done` has queued so far
void waitFor(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& done);
#endif

// On CUDA, from construction to destruction the thread's current stream is the side stream of `tag`: one per tag and
// device for the process's life (so that the caching allocator, which keeps freed blocks per stream, reuses them),
// made for this (no other code queues work on it). It first waits for the work queued so far on the caller's stream.
// finish() waits for the side stream (the call's results are complete when it returns, as after syncDevice) and marks
// the outputs as used by the caller's stream, so that the allocator does not hand their memory back to the side
// stream while the caller's kernels read them. A forward that throws before finish() leaves the caller's stream
// waiting for the side stream. Without the CUDA kernels (CPUs, CUDA builds without nvcc) finish() synchronises the
// device.
class SideStream {
 public:
  SideStream(const c10::Device& device, const char* tag);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  void finish(std::initializer_list<const at::Tensor*> outputs);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace x2i
