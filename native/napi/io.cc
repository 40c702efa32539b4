// The checkpoint-file entry points (the math: core/io.cc).
#include "core/io.h"
#include "napi/bindings.h"
#include "napi/tensor.h"

namespace x2i {
namespace {
// The tensors in entry order (an array, so that any name, __proto__ included, is the caller's to place).
Napi::Array tensorsToJs(Napi::Env env, Tensors& ts) {
  auto a = Napi::Array::New(env, ts.size());
  for (uint32_t i = 0; i < ts.size(); ++i) a.Set(i, TensorWrap::Wrap(env, std::move(ts[i].second)));
  return a;
}
}  // namespace

// readSafetensors(path, dataStart, entries[[name, dtype, shape, begin, end, stride?, offset?]], device?, dtype?,
// mmap?): [begin, end) after dataStart; with stride, the entry is a view (shape, stride, element offset) into the
// storage [begin, end), each storage read once. Owned memory unless mmap is true (CPU zero-copy views).
Napi::Value ReadSafetensors(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const std::string path = argString(info, 0, "path");
    if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsArray())
      fail("ERR_INVALID_ARG", "readSafetensors(path, dataStart, entries, device?, dtype?, mmap?)");
    auto count = [](const Napi::Value& v, int64_t& x) {
      if (!v.IsNumber()) return false;
      const double d = v.As<Napi::Number>().DoubleValue();
      if (!(d >= 0) || d > 9007199254740991.0 || d != double(int64_t(d))) return false;
      x = int64_t(d);
      return true;
    };
    int64_t ds = 0;
    if (!count(info[1], ds)) fail("ERR_INVALID_ARG", "bad data start");
    const uint64_t dataStart = uint64_t(ds);
    std::vector<SafetensorsEntry> entries;
    auto arr = info[2].As<Napi::Array>();
    auto ints = [&](const Napi::Value& v, std::vector<int64_t>& outv, const std::string& what) {
      if (!v.IsArray()) fail("ERR_INVALID_ARG", "bad " + what);
      auto a = v.As<Napi::Array>();
      for (uint32_t k = 0; k < a.Length(); ++k) {
        int64_t x = 0;
        if (!count(a[k], x)) fail("ERR_INVALID_ARG", "bad " + what);
        outv.push_back(x);
      }
    };
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value item = arr[i];
      if (!item.IsArray()) fail("ERR_INVALID_ARG", "bad entry");
      auto e = item.As<Napi::Array>();
      Napi::Value n = e[0u], d = e[1u], s = e[2u];
      int64_t b = 0, f = 0;
      if (!n.IsString() || !d.IsString() || !s.IsArray() || !count(e[3u], b) || !count(e[4u], f))
        fail("ERR_INVALID_ARG", "bad entry");
      SafetensorsEntry en{n.As<Napi::String>().Utf8Value(), parseDType(d.As<Napi::String>().Utf8Value()), {},
                          uint64_t(b), uint64_t(f)};
      ints(s, en.shape, "shape in entry " + en.name);
      if (e.Length() > 5 && !Napi::Value(e[5u]).IsUndefined()) {
        en.strided = true;
        ints(e[5u], en.stride, "stride in entry " + en.name);
        if (!count(e[6u], en.offset)) fail("ERR_INVALID_ARG", "bad offset in entry " + en.name);
      }
      entries.push_back(std::move(en));
    }
    const c10::Device device =
        parseDevice(info.Length() > 3 && info[3].IsString() ? argString(info, 3, "device") : "cpu");
    const bool cast = info.Length() > 4 && info[4].IsString();
    const at::ScalarType want = cast ? parseDType(argString(info, 4, "dtype")) : at::kFloat;
    const bool mmapRead = info.Length() > 5 && info[5].IsBoolean() && info[5].As<Napi::Boolean>().Value();

    auto out = std::make_shared<Tensors>();
    return queue(info.Env(), [=] { *out = readSafetensors(path, dataStart, entries, device, cast, want, mmapRead); },
                 [out](Napi::Env env) -> Napi::Value { return tensorsToJs(env, *out); });
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
    return queue(info.Env(), [=] { writeSafetensors(path, header, tensors, sizes); },
                 [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
  });
}

}  // namespace x2i
