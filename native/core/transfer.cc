#include "core/transfer.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>

namespace x2i {

// ---------------------------------------------------------------- host <-> device copies
namespace {
constexpr int64_t kStageChunk = 16 << 20;     // bytes per staging buffer
constexpr int64_t kStageThreshold = 4 << 20;  // smaller copies go straight through LibTorch

// Copies src into dst (same bytes, both contiguous; one pageable host tensor, one CUDA tensor).
void stagedCopy(const at::Tensor& dst, const at::Tensor& src) {
  const bool h2d = src.is_cpu();
  const c10::Device gpu = h2d ? dst.device() : src.device();
  c10::DeviceGuard guard(gpu);
  c10::impl::VirtualGuardImpl impl(gpu.type());
  const c10::Stream stream = impl.getStream(gpu);
  auto bytes = [](const at::Tensor& t) { return t.reshape({-1}).view(at::kByte); };
  const at::Tensor s = bytes(src), d = bytes(dst);
  const int64_t n = s.numel();
  at::Tensor buf[2];
  c10::Event done[2] = {c10::Event(gpu.type()), c10::Event(gpu.type())};
  int64_t off[2] = {0, 0}, len[2] = {0, 0};
  bool busy[2] = {false, false};
  auto drain = [&](int k) {  // waits for buffer k's DMA; for D2H also empties it into the host tensor
    if (!busy[k]) return;
    done[k].synchronize();
    if (!h2d) d.narrow(0, off[k], len[k]).copy_(buf[k].narrow(0, 0, len[k]));
    busy[k] = false;
  };
  for (int64_t o = 0, i = 0; o < n; o += kStageChunk, ++i) {
    const int k = int(i % 2);
    drain(k);
    if (!buf[k].defined()) buf[k] = at::empty({std::min(kStageChunk, n)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    off[k] = o;
    len[k] = std::min(kStageChunk, n - o);
    if (h2d) {
      buf[k].narrow(0, 0, len[k]).copy_(s.narrow(0, o, len[k]));
      d.narrow(0, o, len[k]).copy_(buf[k].narrow(0, 0, len[k]), /*non_blocking=*/true);
    } else {
      buf[k].narrow(0, 0, len[k]).copy_(s.narrow(0, o, len[k]), /*non_blocking=*/true);
    }
    done[k].record(stream);
    busy[k] = true;
    if (!h2d) drain(1 - k);  // the other buffer's chunk arrived meanwhile
  }
  drain(0);
  drain(1);
  impl.synchronizeStream(stream);
}
}  // namespace

at::Tensor moveTo(const at::Tensor& t, c10::Device device) {
  if (t.device() == device) return t;
  const bool cross = t.is_cpu() != device.is_cpu();
  const at::Tensor host = t.is_cpu() ? t : at::Tensor();
  if (!cross || nbytesOf(t) < kStageThreshold || (host.defined() && host.is_pinned())) {
    at::Tensor out = t.to(device);
    syncDevice(out);
    return out;
  }
  const at::Tensor src = t.contiguous();
  at::Tensor out = at::empty(src.sizes(), src.options().device(device));
  stagedCopy(out, src);
  return out;
}

}  // namespace x2i
