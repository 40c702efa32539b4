// NativeFlux: the JS handle of a loaded FLUX transformer (lib/flux.ts wraps it).
#include "flux.h"
#include "flux_wrap.h"
#include "distill.h"
#include "tensor.h"

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

namespace x2i {
namespace {

int64_t intField(const Napi::Object& o, const char* k) {
  Napi::Value v = o.Get(k);
  if (!v.IsNumber()) fail("ERR_CONFIG", std::string("FluxTransformer config: '") + k + "' must be a number");
  return v.As<Napi::Number>().Int64Value();
}

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
  c.theta = o.Get("theta").IsNumber() ? o.Get("theta").As<Napi::Number>().DoubleValue() : 10000.0;
  c.fast = !o.Get("fast").IsBoolean() || o.Get("fast").ToBoolean();
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

flux::Inputs parseInputs(const Napi::Value& v) {
  if (!v.IsObject()) fail("ERR_INVALID_ARG", "FluxTransformer.forward expects an inputs object");
  auto o = v.As<Napi::Object>();
  return {optTensor(o, "hiddenStates"), optTensor(o, "encoderHiddenStates"), optTensor(o, "pooledProjections"),
          optTensor(o, "timestep"), optTensor(o, "guidance"), optTensor(o, "imgIds"), optTensor(o, "txtIds")};
}

// Collects taps and stacks them per kind on dim 1: [B, blocks, tokens, D].
struct Captures {
  std::array<std::vector<at::Tensor>, 3> taps;
  flux::TapHook hook() {
    return [this](flux::Tap k, int64_t, const at::Tensor& t) { taps[int(k)].push_back(t); };
  }
  std::array<at::Tensor, 3> stacked() const {
    std::array<at::Tensor, 3> out;
    for (int k = 0; k < 3; ++k)
      if (!taps[k].empty()) out[k] = at::stack(taps[k], 1);
    return out;
  }
};

Napi::Object capturesToJs(Napi::Env env, const std::array<at::Tensor, 3>& c) {
  auto o = Napi::Object::New(env);
  const char* names[3] = {"doubleImg", "doubleTxt", "single"};
  for (int k = 0; k < 3; ++k)
    if (c[k].defined()) o.Set(names[k], TensorWrap::Wrap(env, c[k]));
  return o;
}

}  // namespace

Napi::Function FluxWrap::Init(Napi::Env env) {
  auto fn = DefineClass(env, "NativeFlux", {
      StaticMethod<&FluxWrap::Load>("load"),
      StaticMethod<&FluxWrap::Random>("random"),
      InstanceMethod<&FluxWrap::Info>("info"),
      InstanceMethod<&FluxWrap::Forward>("forward"),
      InstanceMethod<&FluxWrap::ForwardBackward>("forwardBackward"),
      InstanceMethod<&FluxWrap::DistillationStep>("distillationStep"),
      InstanceMethod<&FluxWrap::TrainStep>("trainStep"),
      InstanceMethod<&FluxWrap::Denoise>("denoise"),
      InstanceMethod<&FluxWrap::Dispose>("dispose"),
  });
  setCtor(env, "NativeFlux", fn);
  return fn;
}

FluxWrap::FluxWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FluxWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw makeError(info.Env(), {"ERR_INVALID_ARG", "NativeFlux is created by FluxTransformer.fromPretrained"});
  auto* p = info[0].As<Napi::External<std::shared_ptr<flux::Model>>>().Data();
  model_ = std::move(*p);
  delete p;
}

std::shared_ptr<flux::Model> FluxWrap::model() const {
  if (!model_) fail("ERR_DISPOSED", "FluxTransformer was disposed");
  return model_;
}

// load(config, weights: Record<string, NativeTensor>, layout, source) → Promise<NativeFlux>
Napi::Value FluxWrap::Load(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    if (info.Length() < 4 || !info[0].IsObject() || !info[1].IsObject())
      fail("ERR_INVALID_ARG", "NativeFlux.load(config, weights, layout, source)");
    flux::Config cfg = parseConfig(info[0].As<Napi::Object>());
    std::map<std::string, at::Tensor> weights;
    auto w = info[1].As<Napi::Object>();
    for (const auto& e : w.GetPropertyNames()) {
      std::string k = Napi::Value(e.second).ToString().Utf8Value();
      weights[k] = TensorWrap::Get(w.Get(k), k.c_str());
    }
    const std::string layout = argString(info, 2, "layout"), source = argString(info, 3, "source");
    auto out = std::make_shared<std::shared_ptr<flux::Model>>();
    return queue(info.Env(), [=]() mutable {
      c10::AutoGradMode noGrad(false);  // not inference mode: backward passes save these weights
      *out = flux::load(cfg, std::move(weights), layout, source);
      syncDevice((*out)->imgIn.w);
    }, [out](Napi::Env env) -> Napi::Value {
      return ctorOf(env, "NativeFlux").New({Napi::External<std::shared_ptr<flux::Model>>::New(env, new std::shared_ptr<flux::Model>(*out))});
    });
  });
}

// random(config, device, dtype, seed) → Promise<NativeFlux>
Napi::Value FluxWrap::Random(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    if (info.Length() < 4 || !info[0].IsObject() || !info[3].IsNumber())
      fail("ERR_INVALID_ARG", "NativeFlux.random(config, device, dtype, seed)");
    flux::Config cfg = parseConfig(info[0].As<Napi::Object>());
    const c10::Device device = parseDevice(argString(info, 1, "device"));
    const at::ScalarType dtype = parseDType(argString(info, 2, "dtype"));
    const uint64_t seed = uint64_t(info[3].As<Napi::Number>().Int64Value());
    auto out = std::make_shared<std::shared_ptr<flux::Model>>();
    return queue(info.Env(), [=] {
      c10::AutoGradMode noGrad(false);
      *out = flux::random(cfg, device, dtype, seed);
      syncDevice((*out)->imgIn.w);
    }, [out](Napi::Env env) -> Napi::Value {
      return ctorOf(env, "NativeFlux").New({Napi::External<std::shared_ptr<flux::Model>>::New(env, new std::shared_ptr<flux::Model>(*out))});
    });
  });
}

Napi::Value FluxWrap::Info(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto m = model();
    auto env = info.Env();
    auto o = Napi::Object::New(env);
    o.Set("device", deviceName(m->device()));
    o.Set("dtype", dtypeName(m->dtype()));
    int64_t params = 0;
    m->forEachParameter([&](const at::Tensor& t) { if (t.defined()) params += t.numel(); });
    o.Set("parameters", double(params));
    return o;
  });
}

// forward(inputs, capture) → Promise<{ sample, captures? }>
Napi::Value FluxWrap::Forward(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    flux::Inputs in = parseInputs(info[0]);
    const bool capture = info.Length() > 1 && info[1].ToBoolean();
    struct Out { at::Tensor sample; std::array<at::Tensor, 3> caps; };
    auto out = std::make_shared<Out>();
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      Captures caps;
      flux::Inputs p = flux::prepare(*m, in);
      out->sample = flux::forward(*m, p, capture ? caps.hook() : flux::TapHook());
      if (capture) out->caps = caps.stacked();
      syncDevice(out->sample);
    }, [out, capture](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("sample", TensorWrap::Wrap(env, out->sample));
      if (capture) o.Set("captures", capturesToJs(env, out->caps));
      return o;
    });
  });
}

// forwardBackward(inputs, gradSample?, gradCaptures?, checkpoint?) → Promise<{ sample, grad: { encoderHiddenStates,
// pooledProjections } }>: the vector-Jacobian product of the frozen transformer with respect to its
// conditioning inputs, for the given gradients of the output and/or of the stacked captures.
Napi::Value FluxWrap::ForwardBackward(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    flux::Inputs in = parseInputs(info[0]);
    at::Tensor gSample = info.Length() > 1 && info[1].IsObject() ? TensorWrap::Get(info[1], "gradSample") : at::Tensor();
    std::array<at::Tensor, 3> gCaps;
    if (info.Length() > 2 && info[2].IsObject()) {
      auto o = info[2].As<Napi::Object>();
      const char* names[3] = {"doubleImg", "doubleTxt", "single"};
      for (int k = 0; k < 3; ++k) gCaps[k] = optTensor(o, names[k]);
    }
    const bool checkpoint = info.Length() > 3 && info[3].ToBoolean();
    if (!gSample.defined() && !gCaps[0].defined() && !gCaps[1].defined() && !gCaps[2].defined())
      fail("ERR_INVALID_ARG", "forwardBackward needs gradSample and/or gradCaptures");
    struct Out { at::Tensor sample, gEhs, gPooled; };
    auto out = std::make_shared<Out>();
    return queue(info.Env(), [=] {
      c10::AutoGradMode enable(true);
      flux::Inputs p = flux::prepare(*m, in);
      // clones: leaves of their own, also when the inputs were made in inference mode
      p.encoderHiddenStates = p.encoderHiddenStates.detach().clone().requires_grad_(true);
      p.pooledProjections = p.pooledProjections.detach().clone().requires_grad_(true);
      Captures caps;
      at::Tensor sample = flux::forward(*m, p, caps.hook(), checkpoint);
      std::vector<at::Tensor> outs, grads;
      if (gSample.defined()) {
        if (gSample.sizes() != sample.sizes())
          fail("ERR_SHAPE_MISMATCH", "forwardBackward: gradSample must have the shape of sample");
        outs.push_back(sample);
        grads.push_back(gSample.to(sample.device(), sample.scalar_type()));
      }
      const char* names[3] = {"doubleImg", "doubleTxt", "single"};
      for (int k = 0; k < 3; ++k) {
        if (!gCaps[k].defined()) continue;
        const auto& taps = caps.taps[k];
        if (gCaps[k].dim() != 4 || gCaps[k].size(1) != int64_t(taps.size()) || gCaps[k].select(1, 0).sizes() != taps[0].sizes())
          fail("ERR_SHAPE_MISMATCH", std::string("forwardBackward: gradCaptures.") + names[k] + " must have the shape of captures." + names[k]);
        for (size_t i = 0; i < taps.size(); ++i) {
          outs.push_back(taps[i]);
          grads.push_back(gCaps[k].select(1, int64_t(i)).to(taps[i].device(), taps[i].scalar_type()));
        }
      }
      auto g = torch::autograd::grad(outs, {p.encoderHiddenStates, p.pooledProjections}, grads,
                                     /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
      out->sample = sample.detach();
      out->gEhs = g[0].defined() ? g[0] : at::zeros_like(p.encoderHiddenStates);
      out->gPooled = g[1].defined() ? g[1] : at::zeros_like(p.pooledProjections);
      syncDevice(out->sample);
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env), g = Napi::Object::New(env);
      o.Set("sample", TensorWrap::Wrap(env, out->sample));
      g.Set("encoderHiddenStates", TensorWrap::Wrap(env, out->gEhs));
      g.Set("pooledProjections", TensorWrap::Wrap(env, out->gPooled));
      o.Set("grad", g);
      return o;
    });
  });
}

// distillationStep(teacherInputs, studentInputs, divergence, temperature, checkpoint) → Promise<{ loss, terms,
// skipped, grad: { encoderHiddenStates, pooledProjections } }>: the X2I training step through the frozen
// transformer. The teacher runs first (no autograd) and keeps its taps; each student tap passes through a
// loss node as it is produced (distill::attachTapLoss): nothing of the student is stacked, and in the
// backward the gradient arriving at the tap and the tap's own loss gradient are one fused pass, so
// distillation adds one pass over each tap (reading student, teacher and the incoming gradient, writing
// the sum) to the backward and no tensor to the forward.
Napi::Value FluxWrap::DistillationStep(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    // the teacher: its inputs (it runs here), or its taps computed elsewhere ({ captures }, e.g. on another GPU)
    const bool given = info[0].IsObject() && info[0].As<Napi::Object>().Has("captures");
    std::array<at::Tensor, 3> givenTaps;
    flux::Inputs tin;
    if (given) {
      auto c = info[0].As<Napi::Object>().Get("captures");
      if (!c.IsObject()) fail("ERR_INVALID_ARG", "distillationStep: teacher.captures must be { doubleImg, doubleTxt, single }");
      const char* names[3] = {"doubleImg", "doubleTxt", "single"};
      const int64_t counts[3] = {int64_t(m->doubles.size()), int64_t(m->doubles.size()), int64_t(m->singles.size())};
      for (int k = 0; k < 3; ++k) {
        givenTaps[k] = TensorWrap::Get(c.As<Napi::Object>().Get(names[k]), names[k]);
        if (givenTaps[k].dim() != 4 || givenTaps[k].size(1) != counts[k])
          fail("ERR_SHAPE_MISMATCH", std::string("distillationStep: teacher.captures.") + names[k] + " has shape " +
                                         shapeString(givenTaps[k].sizes()) + ", expected [B, " + std::to_string(counts[k]) + ", tokens, D]");
      }
    } else {
      tin = parseInputs(info[0]);
    }
    flux::Inputs sin = parseInputs(info[1]);
    const distill::Divergence div = distill::parseDivergence(info.Length() > 2 && info[2].IsString() ? argString(info, 2, "divergence") : "rkl");
    const double tau = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 3.0;
    if (!(tau > 0)) fail("ERR_INVALID_ARG", "distillationStep: temperature must be positive");
    const bool checkpoint = info.Length() > 4 && info[4].ToBoolean();
    struct Out {
      std::array<std::vector<double>, 3> terms;
      double loss = 0;
      int64_t skipped = 0;
      at::Tensor gEhs, gPooled;
    };
    auto out = std::make_shared<Out>();
    return queue(info.Env(), [=] {
      // teacher: taps kept as they are (the model dtype), nothing else
      std::array<std::vector<at::Tensor>, 3> teacher;
      if (given) {
        for (int k = 0; k < 3; ++k)
          for (auto& t : givenTaps[k].to(m->device(), m->dtype()).unbind(1)) teacher[k].push_back(t.contiguous());  // no copy at B = 1
      } else {
        c10::InferenceMode guard;
        flux::Inputs p = flux::prepare(*m, tin);
        flux::forward(*m, p, [&](flux::Tap k, int64_t, const at::Tensor& t) { teacher[int(k)].push_back(t); });
      }
      // student: every tap through its loss node, in the order the taps come (per double block img, txt;
      // then the single blocks)
      c10::AutoGradMode enable(true);
      flux::Inputs p = flux::prepare(*m, sin);
      p.encoderHiddenStates = p.encoderHiddenStates.detach().clone().requires_grad_(true);
      p.pooledProjections = p.pooledProjections.detach().clone().requires_grad_(true);
      const int64_t nDouble = int64_t(m->doubles.size()), nSingle = int64_t(m->singles.size());
      at::Tensor terms = at::full({2 * nDouble + nSingle}, NAN, at::TensorOptions().dtype(at::kFloat).device(m->device()));
      std::vector<at::Tensor> anchors;
      std::array<size_t, 3> seen{};
      flux::forward(*m, p, [&](flux::Tap k, int64_t, at::Tensor& tap) {
        auto& tt = teacher[int(k)];
        if (seen[int(k)] >= tt.size()) fail("ERR_INTERNAL", "distillationStep: more student taps than teacher taps");
        auto [passOn, anchor] = distill::attachTapLoss(tap, tt[seen[int(k)]], div, tau, terms, int64_t(anchors.size()));
        tt[seen[int(k)]++] = at::Tensor();  // the loss node holds it now, until its backward
        tap = passOn;
        anchors.push_back(anchor);
      }, checkpoint);
      if (int64_t(anchors.size()) != terms.numel()) fail("ERR_INTERNAL", "distillationStep: fewer student taps than expected");
      const at::Tensor one = at::ones({}, terms.options());
      auto g = torch::autograd::grad(anchors, {p.encoderHiddenStates, p.pooledProjections},
                                     std::vector<at::Tensor>(anchors.size(), one),
                                     /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
      out->gEhs = g[0].defined() ? g[0] : at::zeros_like(p.encoderHiddenStates);
      out->gPooled = g[1].defined() ? g[1] : at::zeros_like(p.pooledProjections);
      at::Tensor all = terms.to(at::kDouble).cpu();  // one sync
      const double* v = all.data_ptr<double>();
      for (int64_t i = 0; i < nDouble; ++i) out->terms[0].push_back(v[2 * i]), out->terms[1].push_back(v[2 * i + 1]);
      for (int64_t i = 0; i < nSingle; ++i) out->terms[2].push_back(v[2 * nDouble + i]);
      for (int64_t j = 0; j < all.numel(); ++j) {
        if (std::isfinite(v[j])) out->loss += v[j];
        else ++out->skipped;
      }
      syncDevice(out->gEhs);
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env), terms = Napi::Object::New(env), g = Napi::Object::New(env);
      const char* names[3] = {"doubleImg", "doubleTxt", "single"};
      for (int k = 0; k < 3; ++k) {
        auto a = Napi::Array::New(env, out->terms[k].size());
        for (size_t i = 0; i < out->terms[k].size(); ++i) a.Set(uint32_t(i), out->terms[k][i]);
        terms.Set(names[k], a);
      }
      o.Set("loss", out->loss);
      o.Set("terms", terms);
      o.Set("skipped", double(out->skipped));
      g.Set("encoderHiddenStates", TensorWrap::Wrap(env, out->gEhs));
      g.Set("pooledProjections", TensorWrap::Wrap(env, out->gPooled));
      o.Set("grad", g);
      return o;
    });
  });
}

// denoise(inputs, timesteps: number[], sigmas: number[], keepSteps = true) → Promise<{ latents, stepLatents? }>:
// FLUX's Euler loop (FluxPipeline): at step i the transformer sees timestep t_i / 1000, and
// x ← x + (σ_{i+1} − σ_i)·v in float32. stepLatents [steps, ...] only when keepSteps.
Napi::Value FluxWrap::Denoise(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    flux::Inputs in = parseInputs(info[0]);
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
    struct Out { at::Tensor latents, steps; };
    auto out = std::make_shared<Out>();
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      flux::Inputs p = flux::prepare(*m, [&] { flux::Inputs q = in; q.timestep = at::zeros({in.hiddenStates.size(0)}); return q; }());
      at::Tensor x = p.hiddenStates;
      std::vector<at::Tensor> steps;
      const int64_t B = x.size(0);
      for (size_t i = 0; i < ts.size(); ++i) {
        // the pipeline's timestep: t / 1000 in the latents' dtype (the model multiplies by 1000 again)
        p.timestep = (at::full({B}, ts[i], at::TensorOptions().dtype(at::kFloat)).to(x.device(), x.scalar_type()) / 1000);
        p.hiddenStates = x;
        at::Tensor v = flux::forward(*m, p);
        x = (x.to(at::kFloat) + v.to(at::kFloat) * (sig[i + 1] - sig[i])).to(x.scalar_type());
        if (keepSteps) steps.push_back(x);
      }
      out->latents = x;
      if (keepSteps) out->steps = at::stack(steps, 0);
      syncDevice(x);
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("latents", TensorWrap::Wrap(env, out->latents));
      if (out->steps.defined()) o.Set("stepLatents", TensorWrap::Wrap(env, out->steps));
      return o;
    });
  });
}

// trainStep(inputs, target, { lr, beta1, beta2, weightDecay, eps, maxGradNorm }) → Promise<{ loss, gradNorm, step }>:
// one step of training the transformer itself (a teacher trained from scratch, as in `x2i demo`): the mean
// squared error of the velocity against `target`, backward to every parameter, gradient clipping by the global
// norm, AdamW (PyTorch's formula, decoupled weight decay) with moments kept by this model. float32 models only.
Napi::Value FluxWrap::TrainStep(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    if (m->dtype() != at::kFloat)
      fail("ERR_NOT_SUPPORTED", "trainStep: the transformer is trained in float32, this one is " + dtypeName(m->dtype()));
    flux::Inputs in = parseInputs(info[0]);
    at::Tensor target = TensorWrap::Get(info[1], "target");
    auto o = info.Length() > 2 && info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(info.Env());
    auto num = [&](const char* k, double d) { return o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().DoubleValue() : d; };
    const double lr = num("lr", 1e-4), b1 = num("beta1", 0.9), b2 = num("beta2", 0.999), wd = num("weightDecay", 1e-2),
                 eps = num("eps", 1e-8), maxNorm = num("maxGradNorm", 1.0);
    if (!(lr > 0) || !(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1) || !(wd >= 0) || !(eps > 0))
      fail("ERR_INVALID_ARG", "trainStep: lr > 0, 0 <= beta1, beta2 < 1, weightDecay >= 0 and eps > 0 expected");
    struct Out { double loss = 0, gradNorm = 0; int64_t step = 0; };
    auto out = std::make_shared<Out>();
    auto st = train_;
    return queue(info.Env(), [=] {
      std::vector<at::Tensor*> params;
      m->forEachParameter([&](at::Tensor& t) { if (t.defined()) params.push_back(&t); });
      struct Frozen {  // the weights are frozen again however the step ends
        std::vector<at::Tensor*>& ps;
        ~Frozen() { for (auto* p : ps) p->requires_grad_(false); }
      } frozen{params};
      at::Tensor loss;
      std::vector<at::Tensor> grads;
      {
        c10::AutoGradMode enable(true);
        for (auto* p : params) p->requires_grad_(true);
        flux::Inputs p = flux::prepare(*m, in);
        at::Tensor v = flux::forward(*m, p);
        if (target.sizes() != v.sizes())
          fail("ERR_SHAPE_MISMATCH", "trainStep: target " + shapeString(target.sizes()) + " for a velocity of " + shapeString(v.sizes()));
        loss = at::mse_loss(v, target.to(v.device(), v.scalar_type()));
        std::vector<at::Tensor> ps;
        for (auto* q : params) ps.push_back(*q);
        grads = torch::autograd::grad({loss}, ps, {}, false, false, /*allow_unused=*/true);
      }
      c10::NoGradGuard noGrad;
      at::Tensor sq = at::zeros({}, loss.options());
      for (auto& g : grads) if (g.defined()) sq += g.pow(2).sum();
      const double norm = std::sqrt(sq.item<double>());
      const double clip = maxNorm > 0 && norm > maxNorm ? maxNorm / (norm + 1e-6) : 1.0;
      if (st->m.empty())
        for (auto* q : params) st->m.push_back(at::zeros_like(*q)), st->v.push_back(at::zeros_like(*q));
      const int64_t t = ++st->step;
      const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
      for (size_t i = 0; i < params.size(); ++i) {
        if (!grads[i].defined()) continue;  // (a frozen piece of a fused kernel: no gradient)
        at::Tensor& p = *params[i];
        const at::Tensor g = clip == 1.0 ? grads[i] : grads[i] * clip;
        p.mul_(1 - lr * wd);
        st->m[i].mul_(b1).add_(g, 1 - b1);
        st->v[i].mul_(b2).addcmul_(g, g, 1 - b2);
        p.addcdiv_(st->m[i], (st->v[i] / bc2).sqrt_().add_(eps), -lr / bc1);
      }
      out->loss = loss.item<double>();
      out->gradNorm = norm;
      out->step = t;
    }, [out](Napi::Env env) -> Napi::Value {
      auto r = Napi::Object::New(env);
      r.Set("loss", out->loss);
      r.Set("gradNorm", out->gradNorm);
      r.Set("step", double(out->step));
      return r;
    });
  });
}

Napi::Value FluxWrap::Dispose(const Napi::CallbackInfo& info) {
  model_.reset();
  return info.Env().Undefined();
}

}  // namespace x2i
