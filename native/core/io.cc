// Checkpoint files: byte ranges of a file read into owned memory (or, on request, memory-mapped) and atomic
// safetensors writes. Headers are parsed and validated in TypeScript (lib/core/io.ts for safetensors,
// lib/core/torch_checkpoint.ts for torch.save zips, no LibTorch pickle reader); this side re-checks every byte
// range and view against the file before it reads anything, so no input can read outside the file.
#include "core/io.h"

#include "core/transfer.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <tuple>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace x2i {
namespace {

std::string errnoText(const std::string& what, const std::string& path) {
  return what + " '" + path + "': " + std::strerror(errno);
}

[[noreturn]] void failIO(const std::string& what, const std::string& path) {
  const char* code = errno == ENOENT ? "ERR_FILE_NOT_FOUND" : "ERR_IO";
  fail(code, errnoText(what, path));
}

// A read-only file mapped copy-on-write: tensors may be modified in place without touching the file.
struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr && addr != MAP_FAILED) munmap(addr, len);
  }
};


}  // namespace

namespace {
// Reads [off, off + n) of fd into dst; a short read (the file shrank since it was checked) is an error.
void preadAll(int fd, void* dst, uint64_t off, uint64_t n, const std::string& path) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const size_t chunk = size_t(std::min<uint64_t>(n, uint64_t(1) << 30));
    ssize_t r = ::pread(fd, p, chunk, off_t(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) failIO("cannot read", path);
    if (r == 0)
      fail("ERR_CHECKPOINT_TRUNCATED", "'" + path + "': the file ended at byte " + std::to_string(off) +
                                           " while reading (it was truncated or changed after it was checked)");
    p += r;
    off += uint64_t(r);
    n -= uint64_t(r);
  }
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};
}  // namespace

Tensors readSafetensors(const std::string& path, uint64_t dataStart, const std::vector<SafetensorsEntry>& entries,
                        c10::Device device, bool cast, at::ScalarType want, bool mmapRead) {
  Tensors out;
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) failIO("cannot open", path);
  struct stat st;
  if (fstat(f.fd, &st) != 0) failIO("cannot stat", path);
  const uint64_t size = uint64_t(st.st_size);
  auto rangeError = [&](const SafetensorsEntry& e, const std::string& why) {
    fail("ERR_SAFETENSORS_RANGE", "'" + path + "': tensor '" + e.name + "' byte range [" + std::to_string(e.begin) +
                                      ", " + std::to_string(e.end) + ") " + why + " (the file is " +
                                      std::to_string(size) + " bytes)");
  };
  // Re-check every range before reading (the file may have changed since its header was read).
  for (auto& e : entries) {
    const uint64_t es = c10::elementSize(e.dtype);
    if (e.end < e.begin || dataStart > size || e.end > size - dataStart)
      rangeError(e, "does not fit the file");
    const uint64_t storageBytes = e.end - e.begin;
    if (!e.strided) {
      uint64_t numel = 1;
      bool overflow = false;
      for (auto d : e.shape) {
        if (d < 0 || (d > 0 && numel > UINT64_MAX / uint64_t(d))) overflow = true;
        numel *= uint64_t(d);
      }
      if (overflow || numel > UINT64_MAX / es || numel * es != storageBytes)
        rangeError(e, "does not fit its shape and dtype");
      continue;
    }
    // A view (size, stride, offset in elements) into the storage [begin, end).
    if (storageBytes % es != 0) rangeError(e, "is not a whole number of elements");
    const uint64_t storageNumel = storageBytes / es;
    if (e.shape.size() != e.stride.size() || e.offset < 0) rangeError(e, "has a bad view");
    bool empty = false;
    for (auto d : e.shape) empty = empty || d == 0;
    if (empty) continue;
    // the last element the view touches: offset + sum (size - 1) * stride, without overflow
    uint64_t last = uint64_t(e.offset);
    for (size_t i = 0; i < e.shape.size(); ++i) {
      if (e.shape[i] < 0 || e.stride[i] < 0) rangeError(e, "has a negative size or stride");
      const uint64_t a = uint64_t(e.shape[i] - 1), b = uint64_t(e.stride[i]);
      if (b != 0 && a > (UINT64_MAX / 4) / b) rangeError(e, "has a view that overflows");
      last += a * b;
      if (last >= storageNumel) rangeError(e, "is smaller than its view (offset, size and stride run past it)");
    }
    if (last >= storageNumel) rangeError(e, "is smaller than its view (offset, size and stride run past it)");
  }
  std::shared_ptr<Mapping> map;
  if (mmapRead && size > 0) {
    map = std::make_shared<Mapping>();
    map->len = size_t(size);
    map->addr = mmap(nullptr, map->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
    if (map->addr == MAP_FAILED) failIO("cannot map", path);
    madvise(map->addr, map->len, MADV_WILLNEED);
  }
  // Each storage (byte range, dtype) is read once; views of one storage share it, as torch.load's do.
  std::map<std::tuple<uint64_t, uint64_t, int>, at::Tensor> storages;
  auto storageOf = [&](const SafetensorsEntry& e) -> at::Tensor {
    const auto key = std::make_tuple(e.begin, e.end, int(e.dtype));
    auto it = storages.find(key);
    if (it != storages.end()) return it->second;
    const auto opts = at::TensorOptions().dtype(e.dtype);
    const int64_t numel = int64_t((e.end - e.begin) / c10::elementSize(e.dtype));
    at::Tensor s;
    uint8_t* p = map ? static_cast<uint8_t*>(map->addr) + dataStart + e.begin : nullptr;
    if (numel == 0) {
      s = at::empty({0}, opts);
    } else if (p && reinterpret_cast<uintptr_t>(p) % c10::elementSize(e.dtype) == 0) {
      auto keep = map;
      s = at::from_blob(p, {numel}, [keep](void*) {}, opts);  // zero-copy view of the mapping
    } else {
      s = at::empty({numel}, opts);
      preadAll(f.fd, s.data_ptr(), dataStart + e.begin, e.end - e.begin, path);  // owned memory
    }
    storages.emplace(key, s);
    return s;
  };
  for (auto& e : entries) {
    const at::ScalarType target = cast && at::isFloatingType(e.dtype) ? want : e.dtype;
    at::Tensor s = storageOf(e);
    at::Tensor t;
    if (!e.strided) {
      t = s.view(e.shape);
    } else {
      bool empty = false;
      for (auto d : e.shape) empty = empty || d == 0;
      t = empty ? at::empty(e.shape, s.options()) : s.as_strided(e.shape, e.stride, e.offset);
    }
    if (device.is_cuda()) {
      t = moveTo(t, device).to(target);  // raw bytes over the bus (staged), cast on the GPU
    } else if (target != e.dtype) {
      t = t.to(target);
    }
    out.emplace_back(e.name, std::move(t));
  }
  syncDevice(device);
  return out;
}

void writeSafetensors(const std::string& path, const std::string& header, const std::vector<at::Tensor>& tensors,
                      const std::vector<int64_t>& sizes) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) failIO("cannot create", tmp);
  auto writeAll = [&](const void* data, size_t n) {
    auto* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) failIO("cannot write", tmp);
      p += w;
      n -= size_t(w);
    }
  };
  try {
    uint8_t len[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));  // little-endian u64
    writeAll(len, 8);
    writeAll(header.data(), header.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      at::Tensor c = tensors[i].to(at::kCPU).contiguous();
      const int64_t nb = c.numel() * c.element_size();
      if (nb != sizes[i]) fail("ERR_INTERNAL", "tensor size changed while saving");
      if (nb) writeAll(c.data_ptr(), size_t(nb));
    }
    if (fsync(fd) != 0) failIO("cannot fsync", tmp);
    if (::close(fd) != 0) {
      fd = -1;
      failIO("cannot close", tmp);
    }
    fd = -1;
    if (std::rename(tmp.c_str(), path.c_str()) != 0) failIO("cannot rename to", path);
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace x2i
