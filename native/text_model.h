// Shared pieces of the text encoders (t5.cc, clip.cc): name-checked weight taking and the N-API class that
// holds a loaded model, runs its forward off the JS thread and frees it on dispose().
#pragma once
#include "common.h"
#include "tensor.h"
#include "weights.h"

#include <c10/core/InferenceMode.h>

#include <map>
#include <set>

namespace x2i {

inline int64_t configInt(const Napi::Object& o, const char* k, const char* model) {
  Napi::Value v = o.Get(k);
  if (!v.IsNumber()) fail("ERR_CONFIG", std::string(model) + " config: '" + k + "' must be a number");
  return v.As<Napi::Number>().Int64Value();
}

inline std::map<std::string, at::Tensor> weightsFromJs(const Napi::Value& v) {
  if (!v.IsObject()) fail("ERR_INVALID_ARG", "expected a record of tensors");
  std::map<std::string, at::Tensor> w;
  auto o = v.As<Napi::Object>();
  for (const auto& e : o.GetPropertyNames()) {
    std::string k = Napi::Value(e.second).ToString().Utf8Value();
    w[k] = TensorWrap::Get(o.Get(k), k.c_str());
  }
  return w;
}

// The JS handle of a loaded model M. M provides: static const char* name; static std::shared_ptr<M>
// load(const Napi::Object& config, std::map<...> weights, const std::string& source) (on the JS thread: config
// parsing only; heavy work belongs in build()); static std::shared_ptr<M> build(...) is not required.
// forward(info) reads JS inputs into a plain struct and queues M::run.
template <class M>
class ModelWrap : public Napi::ObjectWrap<ModelWrap<M>> {
 public:
  static Napi::Function Init(Napi::Env env) {
    auto fn = ModelWrap::DefineClass(env, M::jsName, {
        ModelWrap::template StaticMethod<&ModelWrap::Load>("load"),
        ModelWrap::template StaticMethod<&ModelWrap::Random>("random"),
        ModelWrap::template InstanceMethod<&ModelWrap::Forward>("forward"),
        ModelWrap::template InstanceMethod<&ModelWrap::Dispose>("dispose"),
    });
    setCtor(env, M::jsName, fn);
    return fn;
  }
  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap<M>>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw makeError(info.Env(), {"ERR_INVALID_ARG", std::string(M::jsName) + " is created by fromPretrained"});
    auto* p = info[0].template As<Napi::External<std::shared_ptr<M>>>().Data();
    model_ = std::move(*p);
    delete p;
  }

 private:
  std::shared_ptr<M> model_;

  // load(config, weights, source) → Promise<handle>
  static Napi::Value Load(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 3 || !info[0].IsObject()) fail("ERR_INVALID_ARG", std::string(M::jsName) + ".load(config, weights, source)");
      auto cfg = M::parseConfig(info[0].As<Napi::Object>());
      auto weights = weightsFromJs(info[1]);
      const std::string source = argString(info, 2, "source");
      auto out = std::make_shared<std::shared_ptr<M>>();
      return queue(info.Env(), [=]() mutable { *out = M::load(cfg, std::move(weights), source); },
                   [out](Napi::Env env) -> Napi::Value {
                     return ctorOf(env, M::jsName).New({Napi::External<std::shared_ptr<M>>::New(env, new std::shared_ptr<M>(*out))});
                   });
    });
  }

  // random(config, device, dtype, seed) → Promise<handle>: the model of a config with random weights (RandomInit)
  static Napi::Value Random(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 4 || !info[0].IsObject() || !info[3].IsNumber())
        fail("ERR_INVALID_ARG", std::string(M::jsName) + ".random(config, device, dtype, seed)");
      auto cfg = M::parseConfig(info[0].As<Napi::Object>());
      const c10::Device device = parseDevice(argString(info, 1, "device"));
      const at::ScalarType dtype = parseDType(argString(info, 2, "dtype"));
      const uint64_t seed = uint64_t(info[3].As<Napi::Number>().Int64Value());
      auto out = std::make_shared<std::shared_ptr<M>>();
      return queue(info.Env(), [=] {
        c10::InferenceMode guard;
        RandomInit init(device, dtype, seed);
        *out = M::load(cfg, {}, "random weights, seed " + std::to_string(seed));
        syncDevice(device);
      }, [out](Napi::Env env) -> Napi::Value {
        return ctorOf(env, M::jsName).New({Napi::External<std::shared_ptr<M>>::New(env, new std::shared_ptr<M>(*out))});
      });
    });
  }

  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (!model_) fail("ERR_DISPOSED", std::string(M::jsName) + " was disposed");
      auto m = model_;
      auto in = M::parseInputs(info);
      auto out = std::make_shared<typename M::Outputs>();
      return queue(info.Env(), [=] {
        c10::InferenceMode guard;
        *out = M::run(*m, in);
      }, [out](Napi::Env env) -> Napi::Value { return M::toJs(env, *out); });
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    model_.reset();
    return info.Env().Undefined();
  }
};

}  // namespace x2i
