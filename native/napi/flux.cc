// NativeFlux: the JS handle of a loaded FLUX transformer (lib/models/flux.ts wraps it). The math: models/flux.cc
// (forward), train/step.cc (the training steps), sample/euler.cc (denoise).
#include "models/flux.h"
#include "models/lora.h"
#include "napi/bindings.h"
#include "napi/flux.h"
#include "napi/model_wrap.h"
#include "sample/euler.h"
#include "train/step.h"

#include <c10/core/GradMode.h>

#include <cmath>

namespace x2i {
namespace {

int64_t intField(const Napi::Object& o, const char* k) { return configInt(o, k, "FluxTransformer"); }

flux::Config parseConfig(const Napi::Object& o) {
  flux::Config c;
  c.inChannels = intField(o, "inChannels");
  c.outChannels = intField(o, "outChannels");
  c.hidden = intField(o, "hidden");
  c.heads = intField(o, "heads");
  c.jointDim = intField(o, "jointDim");
  c.pooledDim = intField(o, "pooledDim");
  c.depth = intField(o, "depth");
  c.depthSingle = intField(o, "depthSingle");
  c.guidance = o.Get("guidance").ToBoolean();
  c.theta = numberOr(o, "theta", 10000.0);
  c.fast = !o.Get("fast").IsBoolean() || o.Get("fast").ToBoolean();
  c.exactTimesteps = o.Get("exactTimesteps").IsBoolean() && o.Get("exactTimesteps").ToBoolean();
  c.fp8 = o.Get("fp8").IsBoolean() && o.Get("fp8").ToBoolean();
  c.fp8Transposed = o.Get("fp8Transposed").IsBoolean() && o.Get("fp8Transposed").ToBoolean();
  Napi::Value axes = o.Get("axes");
  if (!axes.IsArray()) fail("ERR_CONFIG", "FluxTransformer config: 'axes' must be an array");
  c.axes.clear();
  auto a = axes.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) c.axes.push_back(Napi::Value(a[i]).As<Napi::Number>().Int64Value());
  return c;
}

at::Tensor optTensor(const Napi::Object& o, const char* k) {
  Napi::Value v = o.Get(k);
  return v.IsUndefined() || v.IsNull() ? at::Tensor() : TensorWrap::Get(v, k);
}

// { adapter name: scale } (absent: none)
std::map<std::string, double> adapterScales(const Napi::Value& v, const std::string& what) {
  std::map<std::string, double> out;
  if (!v.IsObject()) return out;
  auto so = v.As<Napi::Object>();
  for (const auto& e : so.GetPropertyNames()) {
    std::string k = Napi::Value(e.second).ToString().Utf8Value();
    Napi::Value x = so.Get(k);
    if (!x.IsNumber()) fail("ERR_INVALID_ARG", what + "['" + k + "'] must be a number");
    out[k] = x.As<Napi::Number>().DoubleValue();
  }
  return out;
}

}  // namespace

flux::Inputs parseFluxInputs(const Napi::Value& v) {
  if (!v.IsObject()) fail("ERR_INVALID_ARG", "FluxTransformer.forward expects an inputs object");
  auto o = v.As<Napi::Object>();
  flux::Inputs in{optTensor(o, "hiddenStates"), optTensor(o, "encoderHiddenStates"), optTensor(o, "pooledProjections"),
                  optTensor(o, "timestep"), optTensor(o, "guidance"), optTensor(o, "imgIds"), optTensor(o, "txtIds")};
  in.controlResiduals = optTensor(o, "controlResiduals");
  in.controlScale = numberOr(o, "controlScale", 1.0);
  if (!std::isfinite(in.controlScale)) fail("ERR_INVALID_ARG", "controlScale must be finite");
  in.loraScales = adapterScales(o.Get("loraScales"), "loraScales");
  return in;
}

namespace {

// { doubleImg, doubleTxt, single } of stacked taps (absent kinds left out)
Napi::Object capturesToJs(Napi::Env env, const train::Captures& c) {
  auto o = Napi::Object::New(env);
  for (int k = 0; k < 3; ++k)
    if (c[k].defined()) o.Set(train::kCaptureNames[k], TensorWrap::Wrap(env, c[k]));
  return o;
}

Napi::Object gradToJs(Napi::Env env, const train::ConditioningGrad& g) {
  auto o = Napi::Object::New(env);
  o.Set("encoderHiddenStates", TensorWrap::Wrap(env, g.encoderHiddenStates));
  o.Set("pooledProjections", TensorWrap::Wrap(env, g.pooledProjections));
  return o;
}

struct FluxSpec : ModelSpec<flux::Model> {
  static constexpr const char* jsName = "NativeFlux";
  static constexpr const char* label = "FluxTransformer";
  static constexpr const char* createdBy = "FluxTransformer.fromPretrained";
  struct State {
    train::AdamWState adamw;  // trainStep's moments of every parameter, made on first use
  };
  using W = ModelWrap<FluxSpec>;

  // load(config, weights: Record<string, NativeTensor>, layout, source, device?) → Promise<NativeFlux>
  static Napi::Value load(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 4 || !info[0].IsObject() || !info[1].IsObject())
        fail("ERR_INVALID_ARG", "NativeFlux.load(config, weights, layout, source, device?)");
      flux::Config cfg = parseConfig(info[0].As<Napi::Object>());
      auto weights = std::make_shared<std::map<std::string, at::Tensor>>(weightsFromJs(info[1]));
      const std::string layout = argString(info, 2, "layout"), source = argString(info, 3, "source");
      std::optional<c10::Device> device;
      if (info.Length() > 4 && info[4].IsString()) device = parseDevice(argString(info, 4, "device"));
      return W::build(info.Env(), [=] {
        c10::AutoGradMode noGrad(false);  // not inference mode: backward passes save these weights
        auto m = flux::load(cfg, std::move(*weights), layout, source, device);
        syncDevice(m->imgIn.w);
        return m;
      });
    });
  }

  // random(config, device, dtype, seed) → Promise<NativeFlux>
  static Napi::Value random(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 4 || !info[0].IsObject() || !info[3].IsNumber())
        fail("ERR_INVALID_ARG", "NativeFlux.random(config, device, dtype, seed)");
      flux::Config cfg = parseConfig(info[0].As<Napi::Object>());
      const c10::Device device = parseDevice(argString(info, 1, "device"));
      const at::ScalarType dtype = parseDType(argString(info, 2, "dtype"));
      const uint64_t seed = uint64_t(info[3].As<Napi::Number>().Int64Value());
      return W::build(info.Env(), [=] {
        c10::AutoGradMode noGrad(false);
        auto m = flux::random(cfg, device, dtype, seed);
        syncDevice(m->imgIn.w);
        return m;
      });
    });
  }

  // info() → { device, dtype, parameters }
  static Napi::Value info(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      auto m = self.model();
      auto o = Napi::Object::New(info.Env());
      o.Set("device", deviceName(m->device()));
      o.Set("dtype", dtypeName(m->dtype()));
      int64_t params = 0;
      m->forEachParameter([&](const at::Tensor& t) { if (t.defined()) params += t.numel(); });
      m->forEachLinear([&](const flux::Linear& l) { if (l.w8.defined()) params += l.w8.numel(); });
      o.Set("parameters", double(params));
      o.Set("fp8", m->cfg.fp8);
      bool kept = false;
      m->forEachLinear([&](const flux::Linear& l) { kept = kept || l.w8t.defined(); });
      o.Set("fp8Transposed", kept);
      return o;
    });
  }

  // forward(inputs, capture) → Promise<{ sample, captures? }>
  static Napi::Value forward(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      flux::Inputs in = parseFluxInputs(info[0]);
      const bool capture = info.Length() > 1 && info[1].ToBoolean();
      auto out = std::make_shared<train::Prediction>();
      return queue(info.Env(), [=] { *out = train::predict(*m, in, capture); }, [out, capture](Napi::Env env) -> Napi::Value {
        auto o = Napi::Object::New(env);
        o.Set("sample", TensorWrap::Wrap(env, out->sample));
        if (capture) o.Set("captures", capturesToJs(env, out->captures));
        return o;
      });
    });
  }

  // forwardBackward(inputs, gradSample?, gradCaptures?, checkpoint?) → Promise<{ sample, grad: { encoderHiddenStates,
  // pooledProjections } }> (train::conditioningVjp)
  static Napi::Value forwardBackward(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      flux::Inputs in = parseFluxInputs(info[0]);
      at::Tensor gSample = info.Length() > 1 && info[1].IsObject() ? TensorWrap::Get(info[1], "gradSample") : at::Tensor();
      train::Captures gCaps;
      if (info.Length() > 2 && info[2].IsObject())
        for (int k = 0; k < 3; ++k) gCaps[k] = optTensor(info[2].As<Napi::Object>(), train::kCaptureNames[k]);
      const bool checkpoint = info.Length() > 3 && info[3].ToBoolean();
      if (!gSample.defined() && !gCaps[0].defined() && !gCaps[1].defined() && !gCaps[2].defined())
        fail("ERR_INVALID_ARG", "forwardBackward needs gradSample and/or gradCaptures");
      auto out = std::make_shared<std::pair<at::Tensor, train::ConditioningGrad>>();
      return queue(info.Env(), [=] { *out = train::conditioningVjp(*m, in, gSample, gCaps, checkpoint); },
                   [out](Napi::Env env) -> Napi::Value {
                     auto o = Napi::Object::New(env);
                     o.Set("sample", TensorWrap::Wrap(env, out->first));
                     o.Set("grad", gradToJs(env, out->second));
                     return o;
                   });
    });
  }

  // distillationStep(teacherInputs | { captures }, studentInputs, divergence, temperature, checkpoint) →
  // Promise<{ loss, terms, skipped, grad: { encoderHiddenStates, pooledProjections } }> (train::distillationStep)
  static Napi::Value distillationStep(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      train::Teacher teacher;
      teacher.given = info[0].IsObject() && info[0].As<Napi::Object>().Has("captures");
      if (teacher.given) {
        auto c = info[0].As<Napi::Object>().Get("captures");
        if (!c.IsObject()) fail("ERR_INVALID_ARG", "distillationStep: teacher.captures must be { doubleImg, doubleTxt, single }");
        for (int k = 0; k < 3; ++k) {
          const char* name = train::kCaptureNames[k];
          teacher.captures[k] = TensorWrap::Get(c.As<Napi::Object>().Get(name), name);
        }
        train::checkTeacherCaptures(*m, teacher.captures);
      } else {
        teacher.inputs = parseFluxInputs(info[0]);
      }
      flux::Inputs student = parseFluxInputs(info[1]);
      const distill::Divergence div = distill::parseDivergence(info.Length() > 2 && info[2].IsString() ? argString(info, 2, "divergence") : "rkl");
      const double tau = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 3.0;
      if (!(tau > 0)) fail("ERR_INVALID_ARG", "distillationStep: temperature must be positive");
      const bool checkpoint = info.Length() > 4 && info[4].ToBoolean();
      auto out = std::make_shared<train::DistillResult>();
      return queue(info.Env(), [=] { *out = train::distillationStep(*m, teacher, student, div, tau, checkpoint); },
                   [out](Napi::Env env) -> Napi::Value {
                     auto o = Napi::Object::New(env), terms = Napi::Object::New(env);
                     for (int k = 0; k < 3; ++k) {
                       auto a = Napi::Array::New(env, out->terms[k].size());
                       for (size_t i = 0; i < out->terms[k].size(); ++i) a.Set(uint32_t(i), out->terms[k][i]);
                       terms.Set(train::kCaptureNames[k], a);
                     }
                     o.Set("loss", out->loss);
                     o.Set("terms", terms);
                     o.Set("skipped", double(out->skipped));
                     o.Set("grad", gradToJs(env, out->grad));
                     return o;
                   });
    });
  }

  // denoise(inputs, timesteps: number[], sigmas: number[], keepSteps = true) → Promise<{ latents, stepLatents? }>
  // (sample/euler.h); stepLatents [steps, ...] only when keepSteps.
  static Napi::Value denoise(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      flux::Inputs in = parseFluxInputs(info[0]);
      auto nums = [&](size_t i, const char* what) {
        if (info.Length() <= i || !info[i].IsArray()) fail("ERR_INVALID_ARG", std::string("denoise: expected an array of ") + what);
        std::vector<float> v;
        auto a = info[i].As<Napi::Array>();
        for (uint32_t k = 0; k < a.Length(); ++k) v.push_back(Napi::Value(a[k]).As<Napi::Number>().FloatValue());
        return v;
      };
      const std::vector<float> ts = nums(1, "timesteps"), sig = nums(2, "sigmas");
      if (sig.size() != ts.size() + 1) fail("ERR_INVALID_ARG", "denoise: sigmas must have one entry more than timesteps");
      const bool keepSteps = info.Length() <= 3 || info[3].IsUndefined() || info[3].ToBoolean().Value();
      auto out = std::make_shared<sample::Denoised>();
      return queue(info.Env(), [=] { *out = sample::denoise(*m, in, ts, sig, keepSteps); }, [out](Napi::Env env) -> Napi::Value {
        auto o = Napi::Object::New(env);
        o.Set("latents", TensorWrap::Wrap(env, out->latents));
        if (out->steps.defined()) o.Set("stepLatents", TensorWrap::Wrap(env, out->steps));
        return o;
      });
    });
  }

  // trainStep(inputs, target, { lr, beta1, beta2, weightDecay, eps, maxGradNorm }) → Promise<{ loss, gradNorm, step }>
  // (train::flowMatchingStep, with this handle's AdamW moments). float32 models only.
  static Napi::Value trainStep(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      if (m->dtype() != at::kFloat)
        fail("ERR_NOT_SUPPORTED", "trainStep: the transformer is trained in float32, this one is " + dtypeName(m->dtype()));
      flux::Inputs in = parseFluxInputs(info[0]);
      at::Tensor target = TensorWrap::Get(info[1], "target");
      auto o = info.Length() > 2 && info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(info.Env());
      double maxNorm = 1;
      const train::AdamW opt = readAdamW(o, maxNorm);
      if (!(opt.lr > 0) || !(opt.beta1 >= 0 && opt.beta1 < 1) || !(opt.beta2 >= 0 && opt.beta2 < 1) || !(opt.weightDecay >= 0) ||
          !(opt.eps > 0))
        fail("ERR_INVALID_ARG", "trainStep: lr > 0, 0 <= beta1, beta2 < 1, weightDecay >= 0 and eps > 0 expected");
      auto out = std::make_shared<train::FlowStepResult>();
      auto st = self.state();
      return queue(info.Env(), [=] { *out = train::flowMatchingStep(*m, in, target, opt, maxNorm, st->adamw); },
                   [out](Napi::Env env) -> Napi::Value {
                     auto r = Napi::Object::New(env);
                     r.Set("loss", out->loss);
                     r.Set("gradNorm", out->gradNorm);
                     r.Set("step", double(out->step));
                     return r;
                   });
    });
  }

  // loraAdd(name, parts: [{ target, row, A?, B?, rank?, rows?, scale }], scale, trainable, seed) → Promise<void>
  // (models/lora.h add)
  static Napi::Value loraAdd(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      const std::string name = argString(info, 0, "name");
      if (info.Length() < 2 || !info[1].IsArray()) fail("ERR_INVALID_ARG", "loraAdd: parts must be an array");
      std::vector<lora::PartSpec> parts;
      auto a = info[1].As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i) {
        Napi::Value e = a[i];
        if (!e.IsObject()) fail("ERR_INVALID_ARG", "loraAdd: each part must be an object");
        auto o = e.As<Napi::Object>();
        lora::PartSpec p;
        if (!o.Get("target").IsString()) fail("ERR_INVALID_ARG", "loraAdd: a part needs its target layer name");
        p.target = o.Get("target").ToString().Utf8Value();
        p.row = int64_t(numberOr(o, "row", 0)), p.rows = int64_t(numberOr(o, "rows", 0)), p.rank = int64_t(numberOr(o, "rank", 0));
        p.scale = numberOr(o, "scale", 1.0);
        p.A = optTensor(o, "A"), p.B = optTensor(o, "B");
        parts.push_back(std::move(p));
      }
      const double scale = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : 1.0;
      const bool trainable = info.Length() > 3 && info[3].ToBoolean();
      const uint64_t seed = info.Length() > 4 && info[4].IsNumber() ? uint64_t(info[4].As<Napi::Number>().Int64Value()) : 0;
      return queue(info.Env(), [=] { lora::add(*m, name, parts, scale, trainable, seed); syncDevice(m->imgIn.w); },
                   [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
    });
  }

  // loraOp('remove' | 'fuse' | 'unfuse', name?, scales?) → Promise<void> (scales set first)
  static Napi::Value loraOp(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      const std::string op = argString(info, 0, "op");
      const std::string name = info.Length() > 1 && info[1].IsString() ? info[1].ToString().Utf8Value() : "";
      if (op != "remove" && op != "fuse" && op != "unfuse") fail("ERR_INVALID_ARG", "loraOp: unknown operation '" + op + "'");
      const auto scales = info.Length() > 2 ? adapterScales(info[2], "loraOp: scales") : std::map<std::string, double>();
      return queue(info.Env(), [=] {
        c10::AutoGradMode noGrad(false);
        lora::applyScales(*m, scales);
        if (op == "remove") lora::remove(*m, name);
        else if (op == "fuse") lora::fuse(*m);
        else lora::unfuse(*m);
        syncDevice(m->imgIn.w);
      }, [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
    });
  }

  // loraWeights(name) → [{ target, row, A, B, scale }] (copies, float32)
  static Napi::Value loraWeights(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      const std::string name = argString(info, 0, "name");
      struct Out { std::string target; int64_t row; at::Tensor A, B; double scale; };
      auto out = std::make_shared<std::vector<Out>>();
      return queue(info.Env(), [=] {
        c10::NoGradGuard noGrad;
        for (auto& [target, p] : lora::parts(*m, name))
          out->push_back({target, p->row, p->A.detach().to(at::kFloat).clone(), p->B.detach().to(at::kFloat).clone(), p->scale});
        if (!out->empty()) syncDevice(out->front().A);
      }, [out](Napi::Env env) -> Napi::Value {
        auto arr = Napi::Array::New(env, out->size());
        for (size_t i = 0; i < out->size(); ++i) {
          auto o = Napi::Object::New(env);
          o.Set("target", (*out)[i].target);
          o.Set("row", double((*out)[i].row));
          o.Set("A", TensorWrap::Wrap(env, (*out)[i].A));
          o.Set("B", TensorWrap::Wrap(env, (*out)[i].B));
          o.Set("scale", (*out)[i].scale);
          arr.Set(uint32_t(i), o);
        }
        return arr;
      });
    });
  }

  template <class Self>
  static std::vector<typename Self::PropertyDescriptor> methods() {
    return {Self::template StaticMethod<&load>("load"), Self::template StaticMethod<&random>("random"),
            Self::template method<&info>("info"), Self::template method<&forward>("forward"),
            Self::template method<&forwardBackward>("forwardBackward"),
            Self::template method<&distillationStep>("distillationStep"), Self::template method<&trainStep>("trainStep"),
            Self::template method<&denoise>("denoise"), Self::template method<&loraAdd>("loraAdd"),
            Self::template method<&loraOp>("loraOp"), Self::template method<&loraWeights>("loraWeights")};
  }
};

}  // namespace

Napi::Function initFlux(Napi::Env env) { return ModelWrap<FluxSpec>::Init(env); }
std::shared_ptr<flux::Model> fluxOf(const Napi::Value& v, const char* what) { return ModelWrap<FluxSpec>::Get(v, what); }

}  // namespace x2i
