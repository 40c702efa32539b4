// NativeLightControl: the JS handle of X2I's LightControl branches (lib/models/lightcontrol.ts wraps it). The math:
// models/lightcontrol.cc.
#include "models/lightcontrol.h"
#include "napi/bindings.h"
#include "napi/model_wrap.h"

#include <c10/core/GradMode.h>

namespace x2i {
namespace {

// config: { inChannels: [2], outChannels: [2], groups: [2], timeEmbedDim, finalOutChannels, embeddingChannels: [3],
// embeddingNormGroups, midNormGroups, controlOutChannels, timeProjChannels, numBranches } (lib/ validated it)
lightcontrol::Config parseConfig(const Napi::Value& v) {
  if (!v.IsObject()) fail("ERR_INVALID_ARG", "LightControl: expected a config object");
  auto o = v.As<Napi::Object>();
  const char* n = "LightControl";
  auto list = [&](const char* k, int64_t* dst, uint32_t len) {
    Napi::Value a = o.Get(k);
    if (!a.IsArray() || a.As<Napi::Array>().Length() != len)
      fail("ERR_CONFIG", std::string(n) + " config: '" + k + "' must be a list of " + std::to_string(len) + " numbers");
    for (uint32_t i = 0; i < len; ++i) {
      Napi::Value e = a.As<Napi::Array>().Get(i);
      if (!e.IsNumber()) fail("ERR_CONFIG", std::string(n) + " config: '" + k + "' must be a list of numbers");
      dst[i] = e.As<Napi::Number>().Int64Value();
    }
  };
  lightcontrol::Config c;
  list("inChannels", c.inChannels.data(), 2);
  list("outChannels", c.outChannels.data(), 2);
  list("groups", c.groups.data(), 2);
  list("embeddingChannels", c.embeddingChannels.data(), 3);
  c.timeEmbedDim = configInt(o, "timeEmbedDim", n);
  c.finalOutChannels = configInt(o, "finalOutChannels", n);
  c.embeddingNormGroups = configInt(o, "embeddingNormGroups", n);
  c.midNormGroups = configInt(o, "midNormGroups", n);
  c.controlOutChannels = configInt(o, "controlOutChannels", n);
  c.timeProjChannels = configInt(o, "timeProjChannels", n);
  c.numBranches = configInt(o, "numBranches", n);
  return c;
}

struct LightControlSpec : ModelSpec<lightcontrol::Model> {
  static constexpr const char* jsName = "NativeLightControl";
  static constexpr const char* label = "LightControl";
  static constexpr const char* createdBy = "LightControl.fromPretrained";
  using W = ModelWrap<LightControlSpec>;

  // load(config, weights: Record<string, NativeTensor>, source) → Promise<NativeLightControl>
  static Napi::Value load(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsObject())
        fail("ERR_INVALID_ARG", "NativeLightControl.load(config, weights, source)");
      const auto cfg = parseConfig(info[0]);
      auto w = std::make_shared<std::map<std::string, at::Tensor>>(weightsFromJs(info[1]));
      const std::string source = argString(info, 2, "source");
      return W::build(info.Env(), [=] { return lightcontrol::load(cfg, std::move(*w), source); });
    });
  }

  // random(config, device, dtype, seed) → Promise<NativeLightControl>: random weights (RandomInit's rules), trainable
  static Napi::Value random(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 4 || !info[0].IsObject() || !info[3].IsNumber())
        fail("ERR_INVALID_ARG", "NativeLightControl.random(config, device, dtype, seed)");
      const auto cfg = parseConfig(info[0]);
      const c10::Device device = parseDevice(argString(info, 1, "device"));
      const at::ScalarType dtype = parseDType(argString(info, 2, "dtype"));
      const uint64_t seed = uint64_t(info[3].As<Napi::Number>().Int64Value());
      return W::build(info.Env(), [=] {
        c10::NoGradGuard guard;  // trainable weights: not inference tensors
        auto m = lightcontrol::random(cfg, device, dtype, seed);
        syncDevice(device);
        return m;
      });
    });
  }

  // info() → { device, dtype, parameters, branches }
  static Napi::Value info(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      auto m = self.model();
      const at::Tensor& w = m->branches.at(0).timeLinear1.w;
      auto o = Napi::Object::New(info.Env());
      o.Set("device", deviceName(w.device()));
      o.Set("dtype", dtypeName(w.scalar_type()));
      o.Set("parameters", double(lightcontrol::parameterCount(*m)));
      o.Set("branches", double(m->branches.size()));
      return o;
    });
  }

  // forward(hint, timestep) → Promise<NativeTensor> [B, branches, tokens, D], in the model's dtype
  static Napi::Value forward(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      at::Tensor hint = TensorWrap::Get(info[0], "hint"), t = TensorWrap::Get(info[1], "timestep");
      auto out = std::make_shared<at::Tensor>();
      return queue(info.Env(), [=] {
        c10::InferenceMode guard;
        *out = lightcontrol::forward(*m, hint, t, m->branches.at(0).timeLinear1.w.scalar_type());
        syncDevice(*out);
      }, [out](Napi::Env env) -> Napi::Value { return TensorWrap::Wrap(env, *out); });
    });
  }

  // weights() → Record<string, NativeTensor> (the official names `<i>.<param>`)
  static Napi::Value weights(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      return weightsToJs(info.Env(), lightcontrol::weights(*self.model()));
    });
  }

  template <class Self>
  static std::vector<typename Self::PropertyDescriptor> methods() {
    return {Self::template StaticMethod<&load>("load"), Self::template StaticMethod<&random>("random"),
            Self::template method<&info>("info"), Self::template method<&forward>("forward"),
            Self::template method<&weights>("weights")};
  }
};

}  // namespace

Napi::Function initLightControl(Napi::Env env) { return ModelWrap<LightControlSpec>::Init(env); }
std::shared_ptr<lightcontrol::Model> lightControlOf(const Napi::Value& v, const char* what) {
  return ModelWrap<LightControlSpec>::Get(v, what);
}

}  // namespace x2i
