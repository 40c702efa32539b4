// NativeFineTune: the JS handle of one fine-tuning run through a frozen transformer (lib/train/finetune.ts wraps it):
// a LoRA adapter's parts and/or LightControl's branches as the trained parameters, their gradients and AdamW
// moments. The math: train/finetune.cc.
#include "napi/bindings.h"
#include "napi/flux.h"
#include "napi/model_wrap.h"
#include "train/finetune.h"

#include <c10/core/GradMode.h>

namespace x2i {
namespace {

// the AdamW options, checked: a step at lr 0 is allowed (the end of a cosine schedule)
train::AdamW checkedAdamW(const Napi::Object& o, double& maxNorm) {
  const train::AdamW opt = readAdamW(o, maxNorm);
  if (!(opt.lr >= 0) || !(opt.beta1 >= 0 && opt.beta1 < 1) || !(opt.beta2 >= 0 && opt.beta2 < 1) || !(opt.weightDecay >= 0) ||
      !(opt.eps > 0) || !(maxNorm >= 0))
    fail("ERR_INVALID_ARG", "fine-tuning step: lr >= 0, 0 <= beta1, beta2 < 1, weightDecay >= 0, eps > 0 and maxGradNorm >= 0 expected");
  return opt;
}

// LightControl's branches as trained parameters (float32 leaves) and as the residuals of every forward.
void attachControl(train::FineTune& ft, const Napi::Value& v) {
  auto lc = lightControlOf(v, "LightControl");
  ft.control = lc;
  ft.controlForward = [lc](const at::Tensor& hint, const at::Tensor& t, at::ScalarType dt) {
    return lightcontrol::forward(*lc, hint, t, dt);
  };
  std::vector<std::pair<std::string, at::Tensor*>> named;
  for (auto& [k, p] : lightcontrol::parameters(*lc)) named.push_back({"control." + k, p});
  train::addParameters(ft, named);
}

struct FineTuneSpec : ModelSpec<train::FineTune> {
  static constexpr const char* jsName = "NativeFineTune";
  static constexpr const char* label = "FineTune";
  static constexpr const char* createdBy = "NativeFineTune.create";
  using W = ModelWrap<FineTuneSpec>;

  // create(flux, { adapter?: string, control?: NativeLightControl }) → Promise<NativeFineTune>
  static Napi::Value create(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 2 || !info[1].IsObject()) fail("ERR_INVALID_ARG", "NativeFineTune.create(flux, { adapter?, control? })");
      auto ft = std::make_shared<train::FineTune>();
      ft->model = fluxOf(info[0], "FluxTransformer");
      auto o = info[1].As<Napi::Object>();
      const std::string adapter = o.Get("adapter").IsString() ? o.Get("adapter").ToString().Utf8Value() : "";
      if (o.Has("control") && o.Get("control").IsObject()) attachControl(*ft, o.Get("control"));
      return W::build(info.Env(), [=] {
        if (!adapter.empty()) train::addAdapterParameters(*ft, adapter);
        if (ft->params.empty()) fail("ERR_INVALID_ARG", "NativeFineTune.create: give an adapter and/or control branches to train");
        return ft;
      });
    });
  }

  // backward({ ...FluxInputs with hiddenStates = x0, noise, sigma, hint?, controlScale?, checkpoint? }) → Promise<loss>
  static Napi::Value backward(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto ft = self.model();
      if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "NativeFineTune.backward(batch)");
      auto o = info[0].As<Napi::Object>();
      train::FineTuneBatch b;
      b.inputs = parseFluxInputs(o);
      b.noise = TensorWrap::Get(o.Get("noise"), "noise");
      b.sigma = TensorWrap::Get(o.Get("sigma"), "sigma");
      if (o.Get("hint").IsObject()) b.hint = TensorWrap::Get(o.Get("hint"), "hint");
      b.controlScale = b.inputs.controlScale;
      b.checkpoint = o.Get("checkpoint").ToBoolean();
      auto loss = std::make_shared<double>(0);
      return queue(info.Env(), [=] { *loss = train::backward(*ft, b); },
                   [loss](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *loss); });
    });
  }

  // step({ lr, beta1, beta2, eps, weightDecay, maxGradNorm }, group?) → Promise<gradient norm>
  static Napi::Value step(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto ft = self.model();
      double maxNorm = 1;
      const train::AdamW opt = checkedAdamW(info.Length() > 0 && info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(info.Env()), maxNorm);
      std::shared_ptr<dist::Group> group = info.Length() > 1 && info[1].IsObject() ? processGroupOf(info[1]) : nullptr;
      auto norm = std::make_shared<double>(0);
      return queue(info.Env(), [=] { *norm = train::step(*ft, opt, maxNorm, group.get()); },
                   [norm](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *norm); });
    });
  }

  // state(restore?) → Promise<{ step, params, expAvg, expAvgSq }> (copies; names as NativeFineTune.names())
  static Napi::Value state(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto ft = self.model();
      std::shared_ptr<train::FineTuneState> given;
      if (info.Length() > 0 && info[0].IsObject()) {
        auto in = info[0].As<Napi::Object>();
        given = std::make_shared<train::FineTuneState>();
        if (!in.Get("step").IsNumber()) fail("ERR_BAD_CHECKPOINT", "fine-tuning state: 'step' must be a number");
        given->step = in.Get("step").As<Napi::Number>().Int64Value();
        for (auto [k, dst] : {std::make_pair("params", &given->params), std::make_pair("expAvg", &given->expAvg),
                              std::make_pair("expAvgSq", &given->expAvgSq)})
          *dst = weightsFromJs(in.Get(k));
      }
      auto out = std::make_shared<train::FineTuneState>();
      return queue(info.Env(), [=] {
        if (given) train::restore(*ft, *given);
        *out = train::state(*ft);
        syncDevice(ft->params[0]);
      }, [out](Napi::Env env) -> Napi::Value {
        auto o = Napi::Object::New(env);
        o.Set("step", double(out->step));
        o.Set("params", weightsToJs(env, out->params));
        o.Set("expAvg", weightsToJs(env, out->expAvg));
        o.Set("expAvgSq", weightsToJs(env, out->expAvgSq));
        return o;
      });
    });
  }

  // names() → the trained parameters' names, in order
  static Napi::Value names(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      auto ft = self.model();
      auto a = Napi::Array::New(info.Env(), ft->names.size());
      for (size_t i = 0; i < ft->names.size(); ++i) a.Set(uint32_t(i), ft->names[i]);
      return a;
    });
  }

  template <class Self>
  static std::vector<typename Self::PropertyDescriptor> methods() {
    return {Self::template StaticMethod<&create>("create"), Self::template method<&backward>("backward"),
            Self::template method<&step>("step"), Self::template method<&state>("state"),
            Self::template method<&names>("names")};
  }
};

}  // namespace

Napi::Function initFineTune(Napi::Env env) { return ModelWrap<FineTuneSpec>::Init(env); }

}  // namespace x2i
