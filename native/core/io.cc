// Checkpoint files: safetensors (memory-mapped read, atomic write) and torch.save zip pickles.
// The safetensors header is parsed and validated in TypeScript (lib/core/io.ts); this side re-checks
// every byte range against the file before it maps anything, so no input can read outside the file.
#include "core/io.h"

#include "core/transfer.h"

#include <torch/csrc/jit/serialization/pickle.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
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

Tensors readSafetensors(const std::string& path, uint64_t dataStart, const std::vector<SafetensorsEntry>& entries,
                        c10::Device device, bool cast, at::ScalarType want) {
  Tensors out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) failIO("cannot open", path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    failIO("cannot stat", path);
  }
  const uint64_t size = uint64_t(st.st_size);
  // Re-check every range before mapping (the file may have changed since its header was read).
  for (auto& e : entries) {
    uint64_t numel = 1;
    for (auto d : e.shape) numel *= uint64_t(d);
    const uint64_t nbytes = numel * c10::elementSize(e.dtype);
    if (e.end < e.begin || e.end - e.begin != nbytes || dataStart + e.end > size) {
      ::close(fd);
      fail("ERR_SAFETENSORS_RANGE", "'" + path + "': tensor '" + e.name + "' byte range [" +
                                        std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                        ") does not fit its shape and dtype or the file (" +
                                        std::to_string(size) + " bytes)");
    }
  }
  auto map = std::make_shared<Mapping>();
  map->len = size_t(size);
  map->addr = mmap(nullptr, map->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map->addr == MAP_FAILED) failIO("cannot map", path);
  madvise(map->addr, map->len, MADV_WILLNEED);
  auto* base = static_cast<uint8_t*>(map->addr) + dataStart;
  for (auto& e : entries) {
    uint8_t* p = base + e.begin;
    const auto opts = at::TensorOptions().dtype(e.dtype);
    const at::ScalarType target = cast && at::isFloatingType(e.dtype) ? want : e.dtype;
    at::Tensor t;
    if (e.end == e.begin) {
      t = at::empty(e.shape, opts);
    } else if (reinterpret_cast<uintptr_t>(p) % c10::elementSize(e.dtype) == 0) {
      t = at::from_blob(p, e.shape, [map](void*) {}, opts);  // zero-copy view of the mapping
    } else {  // unaligned in the file: one copy
      t = at::empty(e.shape, opts);
      std::memcpy(t.data_ptr(), p, e.end - e.begin);
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

namespace {
void flatten(const c10::IValue& v, const std::string& prefix, std::vector<std::pair<std::string, at::Tensor>>& out) {
  for (auto& kv : v.toGenericDict()) {
    const auto& k = kv.key();
    std::string key = k.isString() ? k.toStringRef() : k.isInt() ? std::to_string(k.toInt()) : std::string();
    if (key.empty()) continue;
    const auto& val = kv.value();
    if (val.isTensor()) out.emplace_back(prefix + key, val.toTensor());
    else if (val.isGenericDict()) flatten(val, prefix + key + ".", out);
  }
}
}  // namespace

Tensors loadTorchCheckpoint(const std::string& path) {
  Tensors out;
  std::ifstream f(path, std::ios::binary);
  if (!f) failIO("cannot open", path);
  std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (data.size() < 4 || data[0] != 'P' || data[1] != 'K')
    fail("ERR_CHECKPOINT_FORMAT", "'" + path + "' is not a torch.save zip archive (PyTorch >= 1.6 format)");
  c10::IValue v;
  try {
    v = torch::jit::pickle_load(data);
  } catch (const c10::Error& e) {
    fail("ERR_CHECKPOINT_FORMAT", "'" + path + "': cannot unpickle: " + e.what_without_backtrace());
  }
  if (!v.isGenericDict())
    fail("ERR_CHECKPOINT_FORMAT", "'" + path + "': expected a dict of tensors, found " + v.tagKind());
  flatten(v, "", out);
  if (out.empty()) fail("ERR_CHECKPOINT_FORMAT", "'" + path + "': the dict holds no tensors");
  return out;
}

}  // namespace x2i
