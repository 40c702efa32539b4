// Checkpoint files: safetensors (memory-mapped read, atomic write) and torch.save zip pickles.
// The safetensors header is parsed and validated in TypeScript (lib/safetensors.ts); this side re-checks
// every byte range against the file before it maps anything, so no input can read outside the file.
#include "io.h"

#include "tensor.h"

#include <torch/csrc/jit/serialization/pickle.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <map>
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

struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

Napi::Object tensorsToJs(Napi::Env env, std::vector<std::pair<std::string, at::Tensor>>& ts) {
  auto o = Napi::Object::New(env);
  for (auto& [name, t] : ts) o.Set(name, TensorWrap::Wrap(env, std::move(t)));
  return o;
}

}  // namespace

// readSafetensors(path, dataStart, entries[[name, dtype, shape, begin, end]], device?, dtype?)
Napi::Value ReadSafetensors(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const std::string path = argString(info, 0, "path");
    if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsArray())
      fail("ERR_INVALID_ARG", "readSafetensors(path, dataStart, entries, device?, dtype?)");
    const double ds = info[1].As<Napi::Number>().DoubleValue();
    if (!(ds >= 8) || ds > 9007199254740991.0) fail("ERR_INVALID_ARG", "bad data start");
    const uint64_t dataStart = uint64_t(ds);
    std::vector<Entry> entries;
    auto arr = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value item = arr[i];
      if (!item.IsArray()) fail("ERR_INVALID_ARG", "bad entry");
      auto e = item.As<Napi::Array>();
      Napi::Value n = e[0u], d = e[1u], s = e[2u], b = e[3u], f = e[4u];
      if (!n.IsString() || !d.IsString() || !s.IsArray() || !b.IsNumber() || !f.IsNumber())
        fail("ERR_INVALID_ARG", "bad entry");
      Entry en{n.As<Napi::String>().Utf8Value(), parseDType(d.As<Napi::String>().Utf8Value()), {},
               uint64_t(b.As<Napi::Number>().Int64Value()), uint64_t(f.As<Napi::Number>().Int64Value())};
      auto sa = s.As<Napi::Array>();
      for (uint32_t k = 0; k < sa.Length(); ++k) {
        Napi::Value v = sa[k];
        int64_t x = v.IsNumber() ? v.As<Napi::Number>().Int64Value() : -1;
        if (x < 0) fail("ERR_INVALID_ARG", "bad shape in entry " + en.name);
        en.shape.push_back(x);
      }
      entries.push_back(std::move(en));
    }
    const c10::Device device =
        parseDevice(info.Length() > 3 && info[3].IsString() ? argString(info, 3, "device") : "cpu");
    const bool cast = info.Length() > 4 && info[4].IsString();
    const at::ScalarType want = cast ? parseDType(argString(info, 4, "dtype")) : at::kFloat;

    auto out = std::make_shared<std::vector<std::pair<std::string, at::Tensor>>>();
    return queue(info.Env(), [=] {
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
        out->emplace_back(e.name, std::move(t));
      }
      syncDevice(device);
    }, [out](Napi::Env env) -> Napi::Value { return tensorsToJs(env, *out); });
  });
}

// writeSafetensors(path, header: Buffer (JSON, padded), tensors[], nbytes[]): temporary file in the
// same folder, fsync, rename over path, fsync the folder. A crash leaves the old file intact.
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const std::string path = argString(info, 0, "path");
    if (info.Length() < 4 || !info[1].IsBuffer() || !info[2].IsArray() || !info[3].IsArray())
      fail("ERR_INVALID_ARG", "writeSafetensors(path, header, tensors, nbytes)");
    auto hb = info[1].As<Napi::Buffer<char>>();
    std::string header(hb.Data(), hb.Length());
    std::vector<at::Tensor> tensors;
    std::vector<int64_t> sizes;
    auto ta = info[2].As<Napi::Array>(), sa = info[3].As<Napi::Array>();
    if (ta.Length() != sa.Length()) fail("ERR_INVALID_ARG", "tensors and sizes differ in length");
    for (uint32_t i = 0; i < ta.Length(); ++i) {
      tensors.push_back(TensorWrap::Get(ta[i], "a tensor to save"));
      sizes.push_back(Napi::Value(sa[i]).As<Napi::Number>().Int64Value());
    }
    return queue(info.Env(), [=] {
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
    }, [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
  });
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

// loadTorchCheckpoint(path): a torch.save zip archive of a (possibly nested) dict of tensors; nested
// dicts are flattened with '.', values that are not tensors are skipped.
Napi::Value LoadTorchCheckpoint(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const std::string path = argString(info, 0, "path");
    auto out = std::make_shared<std::vector<std::pair<std::string, at::Tensor>>>();
    return queue(info.Env(), [path, out] {
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
      flatten(v, "", *out);
      if (out->empty()) fail("ERR_CHECKPOINT_FORMAT", "'" + path + "': the dict holds no tensors");
    }, [out](Napi::Env env) -> Napi::Value { return tensorsToJs(env, *out); });
  });
}

}  // namespace x2i
