// A process group for multi-process (multi-GPU) X2I training (X2ITrainer's `parallel` option): rendezvous
// through c10d's TCPStore, collectives through NCCL (c10d::ProcessGroupNCCL, CUDA tensors) where the build has it,
// or through the store itself ('store': any device, via host memory; CPU machines, tests, fallback).
#pragma once
#include "core/dtype.h"

#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

namespace c10d {
class Store;
}

namespace x2i::dist {

class Group {
 public:
  Group(int rank, int size, std::string backend) : rank(rank), size(size), backend(std::move(backend)) {}
  virtual ~Group() = default;
  const int rank, size;
  const std::string backend;
  // Every rank's t summed into every rank's t (in place; the same sum, bit for bit, on every rank).
  virtual void allReduceSum(at::Tensor& t) = 0;
  // root's t copied into every rank's t.
  virtual void broadcast(at::Tensor& t, int root) = 0;
  // Point to point, in order per (src, dst) pair; recv fills t (its shape and dtype must match the sent one).
  virtual void send(const at::Tensor& t, int dst) = 0;
  virtual void recv(at::Tensor& t, int src) = 0;
  virtual void barrier() = 0;
  // Leaving: every rank says so through the store; rank 0, which serves the store, waits for all of them, so that
  // no rank loses the store while it still talks to it.
  virtual void close() = 0;
  std::mutex mutex;  // one operation at a time per group (calls from the thread pool)
};

struct Options {
  std::string backend = "store";  // "store" | "nccl"
  int rank = 0, size = 1;
  std::string host = "127.0.0.1";
  int port = 29500;
  std::chrono::milliseconds timeout{1800000};
};

// Blocks until all `size` ranks have joined (rank 0 serves the store).
std::shared_ptr<Group> create(const Options& o);
bool ncclAvailable();
void leave(c10d::Store& store, int rank, int size, std::chrono::milliseconds timeout);

// The NCCL group over an existing store (distributed_nccl.cc; fails where the build has no NCCL).
std::shared_ptr<Group> createNccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                  std::chrono::milliseconds timeout);

// One operation of the JS ProcessGroup ('allReduce' | 'allReduceMean' | 'broadcast' (peer = root) | 'send' |
// 'recv' | 'barrier' | 'close'), under the group's lock; LibTorch errors become ERR_DISTRIBUTED.
void runOp(Group& g, const std::string& op, at::Tensor& t, int peer);


}  // namespace x2i::dist
