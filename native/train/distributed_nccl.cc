// The NCCL process group (c10d::ProcessGroupNCCL): compiled with USE_C10D_NCCL where the build found nccl.h
// (CMakeLists.txt: X2I_WITH_NCCL); elsewhere a clear error.
#include "train/distributed.h"

#ifdef X2I_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace x2i::dist {

#ifdef X2I_WITH_NCCL
namespace {

class NcclGroup : public Group {
 public:
  NcclGroup(c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg, c10::intrusive_ptr<c10d::Store> store, int rank, int size,
            std::chrono::milliseconds timeout)
      : Group(rank, size, "nccl"), pg_(std::move(pg)), store_(std::move(store)), timeout_(timeout) {}
  void allReduceSum(at::Tensor& t) override {
    std::vector<at::Tensor> v{cuda(t)};
    pg_->allreduce(v)->wait();
  }
  void broadcast(at::Tensor& t, int root) override {
    std::vector<at::Tensor> v{cuda(t)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    pg_->broadcast(v, o)->wait();
  }
  void send(const at::Tensor& t, int dst) override {
    std::vector<at::Tensor> v{cuda(t).contiguous()};
    pg_->send(v, dst, 0)->wait();
  }
  void recv(at::Tensor& t, int src) override {
    std::vector<at::Tensor> v{cuda(t)};
    pg_->recv(v, src, 0)->wait();
  }
  void barrier() override { pg_->barrier()->wait(); }
  void close() override { leave(*store_, rank, size, timeout_); }

 private:
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::chrono::milliseconds timeout_;
  static const at::Tensor& cuda(const at::Tensor& t) {
    if (!t.is_cuda()) fail("ERR_INVALID_DEVICE", "ProcessGroup (nccl): tensors must be on a CUDA device, got " + t.device().str());
    if (!t.is_contiguous()) fail("ERR_INVALID_ARG", "ProcessGroup (nccl): tensors must be contiguous");
    return t;
  }
};

}  // namespace

bool ncclAvailable() { return true; }

std::shared_ptr<Group> createNccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                  std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  try {
    return std::make_shared<NcclGroup>(c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts), store, rank, size, timeout);
  } catch (const std::exception& e) {
    fail("ERR_DISTRIBUTED", std::string("ProcessGroup (nccl): ") + e.what());
  }
}
#else
bool ncclAvailable() { return false; }

std::shared_ptr<Group> createNccl(const c10::intrusive_ptr<c10d::Store>&, int, int, std::chrono::milliseconds) {
  fail("ERR_NOT_SUPPORTED", "ProcessGroup: this build has no NCCL");
}
#endif

}  // namespace x2i::dist
