// Process groups (train/distributed.h): the TCPStore rendezvous, the 'store' backend's collectives.
#include "train/distributed.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstring>
#include <thread>
#include <vector>

namespace x2i::dist {
namespace {

std::vector<uint8_t> bytesOf(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU).contiguous();
  std::vector<uint8_t> b(size_t(c.nbytes()));
  if (!b.empty()) std::memcpy(b.data(), c.data_ptr(), b.size());
  return b;
}

// `bytes` as a CPU tensor of t's dtype and shape (checked).
at::Tensor tensorOf(std::vector<uint8_t>& bytes, const at::Tensor& like, const std::string& what) {
  if (bytes.size() != size_t(like.nbytes()))
    fail("ERR_SHAPE_MISMATCH", what + ": received " + std::to_string(bytes.size()) + " bytes, expected " +
                                   std::to_string(like.nbytes()) + " for a " + c10::toString(like.scalar_type()) + " tensor of shape " +
                                   shapeString(like.sizes()));
  return at::from_blob(bytes.data(), like.sizes(), at::TensorOptions().dtype(like.scalar_type())).clone();
}

// Collectives through the store: each rank writes its part under a key of the operation's sequence number,
// reads the others' in rank order (the same order, so the same sums, everywhere); the last reader deletes
// the keys. Point to point: a key per message, at most kDepth messages in flight per (src, dst) pair.
class StoreGroup : public Group {
 public:
  StoreGroup(c10::intrusive_ptr<c10d::Store> store, int rank, int size)
      : Group(rank, size, "store"), store_(std::move(store)), sent_(size, 0), received_(size, 0) {}

  void allReduceSum(at::Tensor& t) override {
    const std::string k = "x2i/ar/" + std::to_string(seq_++) + "/";
    store_->set(k + std::to_string(rank), bytesOf(t));
    at::Tensor acc;
    for (int r = 0; r < size; ++r) {
      auto b = store_->get(k + std::to_string(r));
      at::Tensor part = tensorOf(b, t, "allReduce from rank " + std::to_string(r));
      if (acc.defined()) acc.add_(part);
      else acc = part;
    }
    done(k, size, size);
    t.copy_(acc);
  }

  void broadcast(at::Tensor& t, int root) override {
    const std::string k = "x2i/bc/" + std::to_string(seq_++) + "/";
    if (rank == root) {
      store_->set(k + "v", bytesOf(t));
    } else {
      auto b = store_->get(k + "v");
      t.copy_(tensorOf(b, t, "broadcast from rank " + std::to_string(root)));
    }
    done(k, size, size);
  }

  void send(const at::Tensor& t, int dst) override {
    const int64_t n = sent_[dst]++;
    const std::string pair = "x2i/p2p/" + std::to_string(rank) + "-" + std::to_string(dst) + "/";
    // back-pressure: wait until the receiver has taken all but kDepth − 1 of the earlier messages
    while (store_->add(pair + "taken", 0) < n - (kDepth - 1)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    store_->set(pair + std::to_string(n), bytesOf(t));
  }

  void recv(at::Tensor& t, int src) override {
    const int64_t n = received_[src]++;
    const std::string pair = "x2i/p2p/" + std::to_string(src) + "-" + std::to_string(rank) + "/";
    auto b = store_->get(pair + std::to_string(n));
    store_->deleteKey(pair + std::to_string(n));
    store_->add(pair + "taken", 1);
    t.copy_(tensorOf(b, t, "recv from rank " + std::to_string(src)));
  }

  void barrier() override {  // its two keys stay: cleaning up would need one more round
    const std::string k = "x2i/barrier/" + std::to_string(seq_++);
    if (store_->add(k, 1) == size) store_->set(k + "/done", std::vector<uint8_t>{1});
    store_->wait({k + "/done"});
  }

  void close() override { leave(*store_, rank, size, store_->getTimeout()); }

 private:
  static constexpr int64_t kDepth = 2;
  c10::intrusive_ptr<c10d::Store> store_;
  int64_t seq_ = 0;
  std::vector<int64_t> sent_, received_;

  // The `readers`-th rank to finish with operation k removes its keys.
  void done(const std::string& k, int keys, int readers) {
    if (store_->add(k + "n", 1) != readers) return;
    for (int r = 0; r < keys; ++r) store_->deleteKey(k + std::to_string(r));
    store_->deleteKey(k + "v");
    store_->deleteKey(k + "n");
  }
};

}  // namespace

void leave(c10d::Store& store, int rank, int size, std::chrono::milliseconds timeout) {
  store.add("x2i/left", 1);
  if (rank != 0) return;
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (store.add("x2i/left", 0) < size) {
    if (std::chrono::steady_clock::now() > until) fail("ERR_DISTRIBUTED", "ProcessGroup.dispose (rank 0): the other ranks did not leave in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::shared_ptr<Group> create(const Options& o) {
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size)
    fail("ERR_INVALID_ARG", "ProcessGroup: rank " + std::to_string(o.rank) + " is not in [0, worldSize = " + std::to_string(o.size) + ")");
  if (o.backend != "store" && o.backend != "nccl")
    fail("ERR_INVALID_ARG", "ProcessGroup: backend '" + o.backend + "' (expected 'nccl' or 'store')");
  if (o.backend == "nccl" && !ncclAvailable())
    fail("ERR_NOT_SUPPORTED", "ProcessGroup: this build has no NCCL (a CUDA LibTorch with nccl.h at build time); use backend 'store'");
  c10d::TCPStoreOptions so;
  so.port = uint16_t(o.port);
  so.isServer = o.rank == 0;
  so.numWorkers = size_t(o.size);
  so.waitWorkers = true;
  so.timeout = o.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(o.host, so);
  } catch (const std::exception& e) {
    fail("ERR_DISTRIBUTED", "ProcessGroup: rendezvous at " + o.host + ":" + std::to_string(o.port) + " as rank " +
                                std::to_string(o.rank) + " of " + std::to_string(o.size) + " failed: " + e.what());
  }
  if (o.backend == "nccl") return createNccl(store, o.rank, o.size, o.timeout);
  return std::make_shared<StoreGroup>(store, o.rank, o.size);
}

void runOp(Group& g, const std::string& op, at::Tensor& t, int peer) {
  const bool reduce = op == "allReduce" || op == "allReduceMean";
  std::lock_guard<std::mutex> lock(g.mutex);
  try {
    if (reduce) {
      g.allReduceSum(t);
      if (op == "allReduceMean" && g.size > 1) t.div_(double(g.size));
    }
    else if (op == "broadcast") g.broadcast(t, peer);
    else if (op == "send") g.send(t, peer);
    else if (op == "recv") g.recv(t, peer);
    else if (op == "barrier") g.barrier();
    else g.close();
  } catch (const c10::Error& e) {
    fail("ERR_DISTRIBUTED", "ProcessGroup." + op + " (rank " + std::to_string(g.rank) + "): " + e.what_without_backtrace());
  }
  if (t.defined()) syncDevice(t);
}

}  // namespace x2i::dist
