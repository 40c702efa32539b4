// NativeAlignNet: the JS handle of an AlignNet (lib/models/alignnet.ts wraps it). The math: models/alignnet.cc
// (load, forward), train/alignnet.cc (training).
#include "models/alignnet.h"
#include "napi/bindings.h"
#include "napi/model_wrap.h"
#include "train/alignnet.h"

#include <c10/core/GradMode.h>

namespace x2i {
namespace {

struct AlignNetSpec : ModelSpec<alignnet::Model> {
  static constexpr const char* jsName = "NativeAlignNet";
  static constexpr const char* label = "AlignNet";
  static constexpr const char* createdBy = "AlignNet.fromPretrained";
  using W = ModelWrap<AlignNetSpec>;

  // load(weights: Record<string, NativeTensor>, eps, source) → Promise<NativeAlignNet>
  static Napi::Value load(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsNumber())
        fail("ERR_INVALID_ARG", "NativeAlignNet.load(weights, eps, source)");
      auto w = std::make_shared<std::map<std::string, at::Tensor>>(weightsFromJs(info[0]));
      const double eps = info[1].As<Napi::Number>().DoubleValue();
      const std::string source = argString(info, 2, "source");
      return W::build(info.Env(), [=] { return alignnet::load(std::move(*w), eps, source); });
    });
  }

  // random({ layers, inputDim, sequenceDim, pooledDim, kernelSize }, eps, device, dtype, seed) → Promise<NativeAlignNet>:
  // the 'conv' variant with random weights (RandomInit's rules), for benchmarks at real sizes.
  static Napi::Value random(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 5 || !info[0].IsObject() || !info[1].IsNumber() || !info[4].IsNumber())
        fail("ERR_INVALID_ARG", "NativeAlignNet.random(config, eps, device, dtype, seed)");
      auto o = info[0].As<Napi::Object>();
      auto num = [&](const char* k) {
        Napi::Value v = o.Get(k);
        if (!v.IsNumber() || v.As<Napi::Number>().Int64Value() < 1)
          fail("ERR_CONFIG", std::string("AlignNet config: '") + k + "' must be a positive integer");
        return v.As<Napi::Number>().Int64Value();
      };
      const int64_t C = num("layers"), H = num("inputDim"), D = num("sequenceDim"), P = num("pooledDim"), k = num("kernelSize");
      if (k % 2 == 0) fail("ERR_CONFIG", "AlignNet config: 'kernelSize' must be odd, got " + std::to_string(k));
      const double eps = info[1].As<Napi::Number>().DoubleValue();
      const c10::Device device = parseDevice(argString(info, 2, "device"));
      const at::ScalarType dtype = parseDType(argString(info, 3, "dtype"));
      const uint64_t seed = uint64_t(info[4].As<Napi::Number>().Int64Value());
      return W::build(info.Env(), [=] {
        c10::NoGradGuard guard;  // trainable weights: not inference tensors
        RandomInit init(device, dtype, seed);
        std::map<std::string, at::Tensor> w;
        for (auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
                 {"conv.weight", {1, C, k, k}}, {"conv.bias", {1}}, {"mlp.layernorm.weight", {H}}, {"mlp.layernorm.bias", {H}},
                 {"mlp.projector.0.weight", {D, H}}, {"mlp.projector.2.weight", {D, D}}, {"mlp.fc.1.weight", {P, D}},
                 {"mlp.fc.1.bias", {P}}})
          w[name] = init.draw(name, shape);
        auto m = alignnet::load(std::move(w), eps, "random weights, seed " + std::to_string(seed));
        syncDevice(device);
        return m;
      });
    });
  }

  // info() → { variant, layers, inputDim, sequenceDim, pooledDim, kernelSize, device, dtype }
  static Napi::Value info(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      auto m = self.model();
      auto o = Napi::Object::New(info.Env());
      o.Set("variant", m->variant);
      o.Set("layers", double(m->layers));
      o.Set("inputDim", double(m->lnW.size(0)));
      o.Set("sequenceDim", double(m->proj0.size(0)));
      o.Set("pooledDim", double(m->fcW.size(0)));
      o.Set("kernelSize", double(m->convW.defined() ? m->convW.size(2) : 0));
      o.Set("device", deviceName(m->lnW.device()));
      o.Set("dtype", dtypeName(m->lnW.scalar_type()));
      return o;
    });
  }

  // forward(hiddenStates) → Promise<{ encoderHiddenStates, pooledProjections }>
  static Napi::Value forward(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      at::Tensor x = TensorWrap::Get(info[0], "hiddenStates");
      auto out = std::make_shared<std::pair<at::Tensor, at::Tensor>>();
      return queue(info.Env(), [=] {
        c10::InferenceMode guard;
        *out = alignnet::forward(*m, x);
        syncDevice(out->first);
      }, [out](Napi::Env env) -> Napi::Value {
        auto o = Napi::Object::New(env);
        o.Set("encoderHiddenStates", TensorWrap::Wrap(env, out->first));
        o.Set("pooledProjections", TensorWrap::Wrap(env, out->second));
        return o;
      });
    });
  }

  // weights() → Record<string, NativeTensor> (the official names)
  static Napi::Value weights(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      return weightsToJs(info.Env(), alignnet::weights(*self.model()));
    });
  }

  // backward(hiddenStates, gradEncoderHiddenStates, gradPooledProjections) → Promise<void>
  static Napi::Value backward(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      at::Tensor x = TensorWrap::Get(info[0], "hiddenStates"), gs = TensorWrap::Get(info[1], "gradEncoderHiddenStates"),
                 gp = TensorWrap::Get(info[2], "gradPooledProjections");
      return queue(info.Env(), [=] { alignnet::backward(*m, x, gs, gp); }, [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
    });
  }

  // optimizerStep({ lr, beta1, beta2, eps, weightDecay, maxGradNorm }, group?) → Promise<gradient norm>; with a
  // process group, the gradients are averaged over every rank's micro-batches first (data parallel).
  static Napi::Value optimizerStep(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      auto o = info[0].As<Napi::Object>();
      double clip = 1;
      const train::AdamW opt = readAdamW(o, clip);
      std::shared_ptr<dist::Group> group = info.Length() > 1 && info[1].IsObject() ? processGroupOf(info[1]) : nullptr;
      auto norm = std::make_shared<double>(0);
      return queue(info.Env(), [=] { *norm = alignnet::optimizerStep(*m, opt, clip, group.get()); },
                   [norm](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *norm); });
    });
  }

  // broadcastWeights(group, root) → Promise<void>: root's float32 masters (and so its weights) on every rank, e.g.
  // before data-parallel training from differently initialised copies.
  static Napi::Value broadcastWeights(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      auto group = processGroupOf(info[0]);
      const int root = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
      if (root < 0 || root >= group->size) fail("ERR_INVALID_ARG", "AlignNet.broadcastWeights: root " + std::to_string(root) + " is not a rank");
      return queue(info.Env(), [=] { alignnet::broadcastWeights(*m, *group, root); },
                   [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
    });
  }

  // trainingState(restore?) → { step, master: {...}, expAvg: {...}, expAvgSq: {...} } (for checkpoints); with an
  // object of that form, restores it first.
  static Napi::Value trainingState(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      auto m = self.model();
      alignnet::Training& tr = alignnet::trainingOf(*m);
      auto env = info.Env();
      const std::pair<const char*, std::map<std::string, at::Tensor>*> parts[3] = {
          {"master", &tr.master}, {"expAvg", &tr.expAvg}, {"expAvgSq", &tr.expAvgSq}};
      if (info.Length() > 0 && info[0].IsObject()) {  // restore
        auto in = info[0].As<Napi::Object>();
        const int64_t step = in.Get("step").As<Napi::Number>().Int64Value();
        std::map<std::string, std::map<std::string, at::Tensor>> given;
        for (auto [part, dst] : parts) {
          auto src = in.Get(part).As<Napi::Object>();
          for (auto& [k, t] : *dst) {
            at::Tensor v = TensorWrap::Get(src.Get(k), k.c_str());
            if (v.sizes() != t.sizes()) fail("ERR_CHECKPOINT_SHAPE", "AlignNet optimizer state: '" + k + "' has another shape");
            given[part][k] = v;
          }
        }
        alignnet::restoreTraining(*m, step, given);
      }
      auto o = Napi::Object::New(env);
      o.Set("step", double(tr.step));
      for (auto [part, map] : parts) {
        auto t = Napi::Object::New(env);
        for (auto& [k, v] : *map) t.Set(k, TensorWrap::Wrap(env, v.clone()));
        o.Set(part, t);
      }
      return o;
    });
  }

  template <class Self>
  static std::vector<typename Self::PropertyDescriptor> methods() {
    return {Self::template StaticMethod<&load>("load"), Self::template StaticMethod<&random>("random"),
            Self::template method<&info>("info"), Self::template method<&forward>("forward"),
            Self::template method<&weights>("weights"), Self::template method<&backward>("backward"),
            Self::template method<&optimizerStep>("optimizerStep"),
            Self::template method<&broadcastWeights>("broadcastWeights"),
            Self::template method<&trainingState>("trainingState")};
  }
};

}  // namespace

Napi::Function initAlignNet(Napi::Env env) { return ModelWrap<AlignNetSpec>::Init(env); }

}  // namespace x2i
