// The one JS handle of every native model (and of the process group): ModelWrap<Spec> owns a shared_ptr to the
// model (jobs in flight hold their own reference), per-handle state, and the plumbing every model shares:
// construction from a finished load, the disposed check, unwrapping a handle passed as an argument, dispose().
// A Spec names the class and adds its own static and instance methods (napi/flux.cc is the fullest example):
//
//   struct FluxSpec : ModelSpec<flux::Model> {
//     static constexpr const char* jsName = "NativeFlux";                        // the JS class
//     static constexpr const char* label = "FluxTransformer";                    // in "... was disposed"
//     static constexpr const char* createdBy = "FluxTransformer.fromPretrained"; // in the constructor's error
//     struct State { ... };                                                      // per handle (optional)
//     static Napi::Value load(const Napi::CallbackInfo&);                       // → W::build(env, make)
//     static Napi::Value forward(ModelWrap<FluxSpec>& self, const Napi::CallbackInfo&);
//     template <class Self> static std::vector<typename Self::PropertyDescriptor> methods() {
//       return {Self::template StaticMethod<&load>("load"), Self::template method<&forward>("forward")};
//     }
//   };
//
// Static methods parse their arguments on the JS thread and hand W::build the work that makes the model on a
// worker thread; instance methods call self.model() inside their guard, so that a disposed handle fails with
// ERR_DISPOSED as a bad argument does (a rejected Promise, or a throw for synchronous methods). Every class
// gets dispose().
#pragma once
#include "core/weights.h"
#include "napi/common.h"
#include "napi/tensor.h"
#include "train/adamw.h"

#include <c10/core/InferenceMode.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace x2i {

template <class M>
struct ModelSpec {
  using Model = M;
  struct State {};
};

template <class Spec>
class ModelWrap : public Napi::ObjectWrap<ModelWrap<Spec>> {
 public:
  using Model = typename Spec::Model;
  using State = typename Spec::State;
  using Base = Napi::ObjectWrap<ModelWrap<Spec>>;
  using Method = Napi::Value (*)(ModelWrap&, const Napi::CallbackInfo&);

  static Napi::Function Init(Napi::Env env) {
    auto props = Spec::template methods<ModelWrap>();
    props.push_back(Base::template InstanceMethod<&ModelWrap::Dispose>("dispose"));
    auto fn = Base::DefineClass(env, Spec::jsName, props);
    setCtor(env, Spec::jsName, fn);
    return fn;
  }

  // An instance method of the Spec's, as a property of the class.
  template <Method F>
  static typename Base::PropertyDescriptor method(const char* name) {
    return Base::template InstanceMethod<&ModelWrap::template call<F>>(name);
  }

  // A new JS handle owning m.
  static Napi::Value Wrap(Napi::Env env, std::shared_ptr<Model> m) {
    return ctorOf(env, Spec::jsName).New({Napi::External<std::shared_ptr<Model>>::New(env, new std::shared_ptr<Model>(std::move(m)))});
  }

  // Runs make() on a worker thread; the Promise resolves to a new handle owning its model.
  static Napi::Promise build(Napi::Env env, std::function<std::shared_ptr<Model>()> make) {
    auto out = std::make_shared<std::shared_ptr<Model>>();
    return queue(env, [make = std::move(make), out] { *out = make(); },
                 [out](Napi::Env env) -> Napi::Value { return Wrap(env, *out); });
  }

  // The model of a handle passed as an argument (ERR_INVALID_ARG "expected a <what>" for anything else).
  static std::shared_ptr<Model> Get(const Napi::Value& v, const char* what) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(ctorOf(v.Env(), Spec::jsName).Value()))
      fail("ERR_INVALID_ARG", std::string("expected a ") + what);
    return Base::Unwrap(v.As<Napi::Object>())->model();
  }

  explicit ModelWrap(const Napi::CallbackInfo& info) : Base(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw makeError(info.Env(), {"ERR_INVALID_ARG", std::string(Spec::jsName) + " is created by " + Spec::createdBy});
    auto* p = info[0].template As<Napi::External<std::shared_ptr<Model>>>().Data();
    model_ = std::move(*p);
    delete p;
  }

  // The model (ERR_DISPOSED once dispose() was called).
  std::shared_ptr<Model> model() const {
    if (!model_) fail("ERR_DISPOSED", std::string(Spec::label) + " was disposed");
    return model_;
  }
  const std::shared_ptr<State>& state() const { return state_; }

 private:
  std::shared_ptr<Model> model_;
  std::shared_ptr<State> state_ = std::make_shared<State>();

  template <Method F>
  Napi::Value call(const Napi::CallbackInfo& info) { return F(*this, info); }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    model_.reset();
    return info.Env().Undefined();
  }
};

// ---- helpers of the bindings that read configs and weights
// o[k] as an integer (ERR_CONFIG "<model> config: 'k' must be a number").
inline int64_t configInt(const Napi::Object& o, const char* k, const char* model) {
  Napi::Value v = o.Get(k);
  if (!v.IsNumber()) fail("ERR_CONFIG", std::string(model) + " config: '" + k + "' must be a number");
  return v.As<Napi::Number>().Int64Value();
}
// o[k] as a number, or d when o[k] is not a number.
inline double numberOr(const Napi::Object& o, const char* k, double d) {
  return o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().DoubleValue() : d;
}
// A Record<string, NativeTensor> as named tensors.
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

// Named tensors as a Record<string, NativeTensor> (the tensors themselves, not copies).
inline Napi::Object weightsToJs(Napi::Env env, const std::map<std::string, at::Tensor>& w) {
  auto o = Napi::Object::New(env);
  for (auto& [k, v] : w) o.Set(k, TensorWrap::Wrap(env, v));
  return o;
}
// { lr, beta1, beta2, eps, weightDecay, maxGradNorm } of the training steps, PyTorch's defaults for the keys left out
// (lr 1e-4, as X2I's recipe); the callers check the ranges they need.
inline train::AdamW readAdamW(const Napi::Object& o, double& maxGradNorm) {
  train::AdamW opt;
  opt.lr = numberOr(o, "lr", 1e-4), opt.beta1 = numberOr(o, "beta1", 0.9), opt.beta2 = numberOr(o, "beta2", 0.999);
  opt.eps = numberOr(o, "eps", 1e-8), opt.weightDecay = numberOr(o, "weightDecay", 1e-2);
  maxGradNorm = numberOr(o, "maxGradNorm", 1.0);
  return opt;
}

}  // namespace x2i
