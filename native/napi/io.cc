// The checkpoint-file entry points (the math: core/io.cc).
#include "core/io.h"
#include "napi/bindings.h"
#include "napi/tensor.h"

namespace x2i {
namespace {
Napi::Object tensorsToJs(Napi::Env env, Tensors& ts) {
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
    std::vector<SafetensorsEntry> entries;
    auto arr = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value item = arr[i];
      if (!item.IsArray()) fail("ERR_INVALID_ARG", "bad entry");
      auto e = item.As<Napi::Array>();
      Napi::Value n = e[0u], d = e[1u], s = e[2u], b = e[3u], f = e[4u];
      if (!n.IsString() || !d.IsString() || !s.IsArray() || !b.IsNumber() || !f.IsNumber())
        fail("ERR_INVALID_ARG", "bad entry");
      SafetensorsEntry en{n.As<Napi::String>().Utf8Value(), parseDType(d.As<Napi::String>().Utf8Value()), {},
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

    auto out = std::make_shared<Tensors>();
    return queue(info.Env(), [=] { *out = readSafetensors(path, dataStart, entries, device, cast, want); },
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

// loadTorchCheckpoint(path) → Promise<Record<string, NativeTensor>>
Napi::Value LoadTorchCheckpoint(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const std::string path = argString(info, 0, "path");
    auto out = std::make_shared<Tensors>();
    return queue(info.Env(), [path, out] { *out = loadTorchCheckpoint(path); },
                 [out](Napi::Env env) -> Napi::Value { return tensorsToJs(env, *out); });
  });
}

}  // namespace x2i
