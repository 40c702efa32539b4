// X2I's AlignNet (shared/docs/x2i-method.md §1.2): a layer mixer over the MLLM's stacked hidden states
// [B, C, S, H] (Conv2d C→1 5×5, or a learned per-layer scale, or a plain mean), then LayerNorm + a two-layer
// MLP to the T5-replacement sequence, and GELU + Linear + mean over tokens to the CLIP-replacement vector.
#include "alignnet.h"

#include "tensor.h"
#include "weights.h"
#include "distributed.h"

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>


namespace x2i::alignnet {
namespace {

}  // namespace

// Takes the official names (module./state_dict. prefixes already stripped); shapes come from the weights.
std::shared_ptr<Model> load(std::map<std::string, at::Tensor> w, double eps, const std::string& source) {
  auto m = std::make_shared<Model>();
  m->eps = eps;
  auto take = [&](const std::string& k, bool required = true) {
    auto it = w.find(k);
    if (it == w.end()) {
      if (required) fail("ERR_CHECKPOINT_KEY", "AlignNet (" + source + "): missing tensor '" + k + "'");
      return at::Tensor();
    }
    at::Tensor t = it->second;
    w.erase(it);
    return t;
  };
  auto expect = [&](const char* k, const at::Tensor& t, std::vector<int64_t> shape) {
    if (t.sizes() != at::IntArrayRef(shape))
      fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): tensor '" + k + "' has shape " + shapeString(t.sizes()) +
                                       ", expected " + shapeString(shape));
  };
  m->convW = take("conv.weight", false);
  m->convB = take("conv.bias", false);
  m->scale = take("cha_scale", false);
  m->lnW = take("mlp.layernorm.weight");
  m->lnB = take("mlp.layernorm.bias");
  m->proj0 = take("mlp.projector.0.weight");
  m->proj2 = take("mlp.projector.2.weight");
  m->fcW = take("mlp.fc.1.weight");
  m->fcB = take("mlp.fc.1.bias");
  const int64_t H = m->lnW.size(0);
  if (m->lnW.dim() != 1) fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): mlp.layernorm.weight must be 1-D");
  expect("mlp.layernorm.bias", m->lnB, {H});
  if (m->proj0.dim() != 2 || m->proj0.size(1) != H)
    fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): mlp.projector.0.weight has shape " + shapeString(m->proj0.sizes()) +
                                     ", expected [*, " + std::to_string(H) + "]");
  const int64_t Dseq = m->proj0.size(0);
  expect("mlp.projector.2.weight", m->proj2, {Dseq, Dseq});
  if (m->fcW.dim() != 2 || m->fcW.size(1) != Dseq)
    fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): mlp.fc.1.weight has shape " + shapeString(m->fcW.sizes()) +
                                     ", expected [*, " + std::to_string(Dseq) + "]");
  expect("mlp.fc.1.bias", m->fcB, {m->fcW.size(0)});
  if (m->convW.defined()) {
    if (m->convW.dim() != 4 || m->convW.size(0) != 1 || m->convW.size(2) != m->convW.size(3) || m->convW.size(2) % 2 == 0)
      fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): conv.weight has shape " + shapeString(m->convW.sizes()) +
                                       ", expected [1, layers, k, k] with an odd k");
    m->layers = m->convW.size(1);
    if (!m->convB.defined()) fail("ERR_CHECKPOINT_KEY", "AlignNet (" + source + "): missing tensor 'conv.bias'");
    expect("conv.bias", m->convB, {1});
    m->variant = "conv";
  } else if (m->scale.defined()) {
    if (m->scale.dim() != 4 || m->scale.size(0) != 1 || m->scale.size(2) != 1 || m->scale.size(3) != 1)
      fail("ERR_CHECKPOINT_SHAPE", "AlignNet (" + source + "): cha_scale has shape " + shapeString(m->scale.sizes()) +
                                       ", expected [1, layers, 1, 1]");
    m->layers = m->scale.size(1);
    m->variant = "scale";
  } else {
    m->variant = "mean";
  }
  if (!w.empty()) {
    std::string extra;
    int n = 0;
    for (auto& [k, v] : w)
      if (n++ < 5) extra += (extra.empty() ? "'" : ", '") + k + "'";
    fail("ERR_CHECKPOINT_KEY", "AlignNet (" + source + "): " + std::to_string(w.size()) + " unexpected tensor(s): " + extra);
  }
  return m;
}

std::pair<at::Tensor, at::Tensor> forward(const Model& m, const at::Tensor& hiddenStates) {
  const int64_t H = m.lnW.size(0);
  if (hiddenStates.dim() != 4 || hiddenStates.size(3) != H || (m.layers > 0 && hiddenStates.size(1) != m.layers))
    fail("ERR_SHAPE_MISMATCH", "AlignNet.forward: hiddenStates has shape " + shapeString(hiddenStates.sizes()) +
                                   ", expected [B, " + (m.layers > 0 ? std::to_string(m.layers) : std::string("layers")) +
                                   ", tokens, " + std::to_string(H) + "]");
  const at::Tensor x = hiddenStates.to(m.lnW.device(), m.lnW.scalar_type());
  at::Tensor mixed;  // [B, S, H]
  if (m.variant == "conv") {
    const int64_t pad = m.convW.size(2) / 2;
    mixed = at::conv2d(x, m.convW, m.convB, {1, 1}, {pad, pad}).squeeze(1);
  } else if (m.variant == "scale") {
    mixed = (x * m.scale).mean(1);
  } else {
    mixed = x.mean(1);
  }
  at::Tensor h = at::layer_norm(mixed, {H}, m.lnW, m.lnB, m.eps);
  at::Tensor seq = at::linear(at::gelu(at::linear(h, m.proj0)), m.proj2);  // exact (erf) GELU
  at::Tensor pooled = at::linear(at::gelu(seq), m.fcW, m.fcB).mean(1);
  return {seq, pooled};
}

std::map<std::string, at::Tensor> weights(const Model& m) {
  std::map<std::string, at::Tensor> w{{"mlp.layernorm.weight", m.lnW}, {"mlp.layernorm.bias", m.lnB},
                                      {"mlp.projector.0.weight", m.proj0}, {"mlp.projector.2.weight", m.proj2},
                                      {"mlp.fc.1.weight", m.fcW}, {"mlp.fc.1.bias", m.fcB}};
  if (m.convW.defined()) w["conv.weight"] = m.convW, w["conv.bias"] = m.convB;
  if (m.scale.defined()) w["cha_scale"] = m.scale;
  return w;
}

// ---------------------------------------------------------------- training
namespace {
// The parameters by their official names (pointers into the model, so that updates land in place).
std::vector<std::pair<std::string, at::Tensor*>> params(Model& m) {
  std::vector<std::pair<std::string, at::Tensor*>> p{{"mlp.layernorm.weight", &m.lnW}, {"mlp.layernorm.bias", &m.lnB},
    {"mlp.projector.0.weight", &m.proj0}, {"mlp.projector.2.weight", &m.proj2}, {"mlp.fc.1.weight", &m.fcW}, {"mlp.fc.1.bias", &m.fcB}};
  if (m.convW.defined()) p.push_back({"conv.weight", &m.convW}), p.push_back({"conv.bias", &m.convB});
  if (m.scale.defined()) p.push_back({"cha_scale", &m.scale});
  return p;
}

Training& trainingOf(Model& m) {
  if (!m.training) {
    m.training = std::make_shared<Training>();
    for (auto& [k, t] : params(m)) {
      at::Tensor master = t->detach().to(at::kFloat).clone();
      m.training->master[k] = master;
      m.training->expAvg[k] = at::zeros_like(master);
      m.training->expAvgSq[k] = at::zeros_like(master);
    }
  }
  return *m.training;
}
}  // namespace

// d⟨gSeq, seq⟩ + ⟨gPooled, pooled⟩ / d parameters, recomputing the forward from the float32 master weights,
// added to the accumulated gradients. Returns nothing; optimizerStep() applies them.
void backward(Model& m, const at::Tensor& hiddenStates, const at::Tensor& gSeq, const at::Tensor& gPooled) {
  Training& tr = trainingOf(m);
  c10::AutoGradMode enable(true);
  Model shadow = m;  // the same structure over leaf copies of the master weights
  shadow.training = nullptr;
  std::map<std::string, at::Tensor> leaves;
  for (auto& [k, ptr] : params(shadow)) {
    leaves[k] = tr.master.at(k).detach().requires_grad_(true);
    *ptr = leaves[k];
  }
  auto [seq, pooled] = forward(shadow, hiddenStates.to(at::kFloat).detach());
  std::vector<at::Tensor> outs{seq, pooled}, grads{gSeq.to(seq.device(), at::kFloat), gPooled.to(pooled.device(), at::kFloat)};
  std::vector<at::Tensor> inputs;
  std::vector<std::string> names;
  for (auto& [k, t] : leaves) inputs.push_back(t), names.push_back(k);
  auto g = torch::autograd::grad(outs, inputs, grads, false, false, true);
  for (size_t i = 0; i < names.size(); ++i) {
    at::Tensor gi = g[i].defined() ? g[i] : at::zeros_like(inputs[i]);
    auto it = tr.grad.find(names[i]);
    if (it == tr.grad.end()) tr.grad[names[i]] = gi.detach().clone();
    else it->second.add_(gi.detach());
  }
  ++tr.accumulated;
}

// AdamW on the float32 masters (PyTorch's formula, decoupled weight decay) after averaging the accumulated
// gradients and clipping their global norm; the model's weights become the cast masters. Returns the
// pre-clipping gradient norm.
double optimizerStep(Model& m, double lr, double beta1, double beta2, double eps, double weightDecay, double maxNorm,
                     dist::Group* group) {
  Training& tr = trainingOf(m);
  if (tr.accumulated == 0) fail("ERR_INVALID_ARG", "AlignNet.optimizerStep: no gradients were accumulated");
  c10::InferenceMode guard;
  if (group && group->size > 1) {  // data parallel: the gradients and micro-batch counts of all ranks, one collective
    std::vector<at::Tensor> parts;
    for (auto& [k, g] : tr.grad) parts.push_back(g.reshape({-1}));
    parts.push_back(at::full({1}, double(tr.accumulated), parts[0].options()));
    at::Tensor flat = at::cat(parts);
    {
      std::lock_guard<std::mutex> lock(group->mutex);
      group->allReduceSum(flat);
    }
    int64_t off = 0;
    for (auto& [k, g] : tr.grad) {
      g.copy_(flat.narrow(0, off, g.numel()).view_as(g));
      off += g.numel();
    }
    tr.accumulated = int64_t(std::llround(flat[off].item<double>()));
  }
  double sq = 0;
  for (auto& [k, g] : tr.grad) {
    g.div_(double(tr.accumulated));
    sq += g.pow(2).sum().item<double>();
  }
  const double norm = std::sqrt(sq);
  const double clip = maxNorm > 0 && norm > maxNorm ? maxNorm / (norm + 1e-6) : 1.0;
  ++tr.step;
  const double bc1 = 1 - std::pow(beta1, double(tr.step)), bc2 = 1 - std::pow(beta2, double(tr.step));
  for (auto& [k, ptr] : params(m)) {
    at::Tensor g = tr.grad.at(k) * clip;
    at::Tensor& p = tr.master.at(k);
    p.mul_(1 - lr * weightDecay);
    tr.expAvg.at(k).mul_(beta1).add_(g, 1 - beta1);
    tr.expAvgSq.at(k).mul_(beta2).addcmul_(g, g, 1 - beta2);
    at::Tensor denom = (tr.expAvgSq.at(k) / bc2).sqrt_().add_(eps);
    p.addcdiv_(tr.expAvg.at(k), denom, -lr / bc1);
    *ptr = p.to(ptr->scalar_type());
  }
  tr.grad.clear();
  tr.accumulated = 0;
  return norm;
}

// ---------------------------------------------------------------- N-API
Napi::Function Wrap::Init(Napi::Env env) {
  auto fn = DefineClass(env, "NativeAlignNet", {
      StaticMethod<&Wrap::Load>("load"),
      StaticMethod<&Wrap::Random>("random"),
      InstanceMethod<&Wrap::Info>("info"),
      InstanceMethod<&Wrap::Forward>("forward"),
      InstanceMethod<&Wrap::Weights>("weights"),
      InstanceMethod<&Wrap::Backward>("backward"),
      InstanceMethod<&Wrap::OptimizerStep>("optimizerStep"),
      InstanceMethod<&Wrap::BroadcastWeights>("broadcastWeights"),
      InstanceMethod<&Wrap::TrainingState>("trainingState"),
      InstanceMethod<&Wrap::Dispose>("dispose"),
  });
  setCtor(env, "NativeAlignNet", fn);
  return fn;
}

Wrap::Wrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Wrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw makeError(info.Env(), {"ERR_INVALID_ARG", "NativeAlignNet is created by AlignNet.fromPretrained"});
  auto* p = info[0].As<Napi::External<std::shared_ptr<Model>>>().Data();
  model_ = std::move(*p);
  delete p;
}

std::shared_ptr<Model> Wrap::model() const {
  if (!model_) fail("ERR_DISPOSED", "AlignNet was disposed");
  return model_;
}

// load(weights: Record<string, NativeTensor>, eps, source) → Promise<NativeAlignNet>
Napi::Value Wrap::Load(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsNumber())
      fail("ERR_INVALID_ARG", "NativeAlignNet.load(weights, eps, source)");
    std::map<std::string, at::Tensor> w;
    auto o = info[0].As<Napi::Object>();
    for (const auto& e : o.GetPropertyNames()) {
      std::string k = Napi::Value(e.second).ToString().Utf8Value();
      w[k] = TensorWrap::Get(o.Get(k), k.c_str());
    }
    const double eps = info[1].As<Napi::Number>().DoubleValue();
    const std::string source = argString(info, 2, "source");
    auto out = std::make_shared<std::shared_ptr<Model>>();
    return queue(info.Env(), [=]() mutable { *out = load(std::move(w), eps, source); }, [out](Napi::Env env) -> Napi::Value {
      return ctorOf(env, "NativeAlignNet").New({Napi::External<std::shared_ptr<Model>>::New(env, new std::shared_ptr<Model>(*out))});
    });
  });
}

// random({ layers, inputDim, sequenceDim, pooledDim, kernelSize }, eps, device, dtype, seed) → Promise<NativeAlignNet>:
// the 'conv' variant with random weights (RandomInit's rules), for benchmarks at real sizes.
Napi::Value Wrap::Random(const Napi::CallbackInfo& info) {
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
    auto out = std::make_shared<std::shared_ptr<Model>>();
    return queue(info.Env(), [=] {
      c10::NoGradGuard guard;  // trainable weights: not inference tensors
      RandomInit init(device, dtype, seed);
      std::map<std::string, at::Tensor> w;
      for (auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
               {"conv.weight", {1, C, k, k}}, {"conv.bias", {1}}, {"mlp.layernorm.weight", {H}}, {"mlp.layernorm.bias", {H}},
               {"mlp.projector.0.weight", {D, H}}, {"mlp.projector.2.weight", {D, D}}, {"mlp.fc.1.weight", {P, D}},
               {"mlp.fc.1.bias", {P}}})
        w[name] = init.draw(name, shape);
      *out = load(std::move(w), eps, "random weights, seed " + std::to_string(seed));
      syncDevice(device);
    }, [out](Napi::Env env) -> Napi::Value {
      return ctorOf(env, "NativeAlignNet").New({Napi::External<std::shared_ptr<Model>>::New(env, new std::shared_ptr<Model>(*out))});
    });
  });
}

Napi::Value Wrap::Info(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto m = model();
    auto env = info.Env();
    auto o = Napi::Object::New(env);
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

Napi::Value Wrap::Forward(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    at::Tensor x = TensorWrap::Get(info[0], "hiddenStates");
    auto out = std::make_shared<std::pair<at::Tensor, at::Tensor>>();
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      *out = forward(*m, x);
      syncDevice(out->first);
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("encoderHiddenStates", TensorWrap::Wrap(env, out->first));
      o.Set("pooledProjections", TensorWrap::Wrap(env, out->second));
      return o;
    });
  });
}

Napi::Value Wrap::Weights(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto o = Napi::Object::New(info.Env());
    for (auto& [k, v] : weights(*model())) o.Set(k, TensorWrap::Wrap(info.Env(), v));
    return o;
  });
}

// backward(hiddenStates, gradEncoderHiddenStates, gradPooledProjections) → Promise<void>
Napi::Value Wrap::Backward(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    at::Tensor x = TensorWrap::Get(info[0], "hiddenStates"), gs = TensorWrap::Get(info[1], "gradEncoderHiddenStates"),
               gp = TensorWrap::Get(info[2], "gradPooledProjections");
    return queue(info.Env(), [=] { backward(*m, x, gs, gp); }, [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
  });
}

// optimizerStep({ lr, beta1, beta2, eps, weightDecay, maxGradNorm }, group?) → Promise<gradient norm>; with a
// process group, the gradients are averaged over every rank's micro-batches first (data parallel).
Napi::Value Wrap::OptimizerStep(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    auto o = info[0].As<Napi::Object>();
    auto num = [&](const char* k, double d) { return o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().DoubleValue() : d; };
    const double lr = num("lr", 1e-4), b1 = num("beta1", 0.9), b2 = num("beta2", 0.999), eps = num("eps", 1e-8),
                 wd = num("weightDecay", 1e-2), clip = num("maxGradNorm", 1.0);
    std::shared_ptr<dist::Group> group = info.Length() > 1 && info[1].IsObject() ? dist::Wrap::Get(info[1]) : nullptr;
    auto norm = std::make_shared<double>(0);
    return queue(info.Env(), [=] { *norm = optimizerStep(*m, lr, b1, b2, eps, wd, clip, group.get()); },
                 [norm](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *norm); });
  });
}

// broadcastWeights(group, root) → Promise<void>: root's float32 masters (and so its weights) on every rank, e.g.
// before data-parallel training from differently initialised copies.
Napi::Value Wrap::BroadcastWeights(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto m = model();
    auto group = dist::Wrap::Get(info[0]);
    const int root = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
    if (root < 0 || root >= group->size) fail("ERR_INVALID_ARG", "AlignNet.broadcastWeights: root " + std::to_string(root) + " is not a rank");
    return queue(info.Env(), [=] {
      c10::NoGradGuard guard;  // the masters stay usable as autograd leaves
      Training& tr = trainingOf(*m);
      std::vector<at::Tensor> parts;
      for (auto& [k, t] : tr.master) parts.push_back(t.reshape({-1}));
      at::Tensor flat = at::cat(parts);
      {
        std::lock_guard<std::mutex> lock(group->mutex);
        group->broadcast(flat, root);
      }
      int64_t off = 0;
      for (auto& [k, t] : tr.master) t.copy_(flat.narrow(0, off, t.numel()).view_as(t)), off += t.numel();
      for (auto& [k, ptr] : params(*m)) *ptr = tr.master.at(k).to(ptr->scalar_type());
      syncDevice(flat);
    }, [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
  });
}

// trainingState() → { step, master: {...}, expAvg: {...}, expAvgSq: {...} } (for checkpoints); setTrainingState
// is done through load + this object's tensors on the JS side.
Napi::Value Wrap::TrainingState(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto m = model();
    Training& tr = trainingOf(*m);
    auto env = info.Env();
    auto o = Napi::Object::New(env);
    if (info.Length() > 0 && info[0].IsObject()) {  // restore
      auto in = info[0].As<Napi::Object>();
      tr.step = in.Get("step").As<Napi::Number>().Int64Value();
      for (const char* part : {"master", "expAvg", "expAvgSq"}) {
        auto src = in.Get(part).As<Napi::Object>();
        auto& dst = std::string(part) == "master" ? tr.master : std::string(part) == "expAvg" ? tr.expAvg : tr.expAvgSq;
        for (auto& [k, t] : dst) {
          at::Tensor v = TensorWrap::Get(src.Get(k), k.c_str());
          if (v.sizes() != t.sizes()) fail("ERR_CHECKPOINT_SHAPE", "AlignNet optimizer state: '" + k + "' has another shape");
          t.copy_(v);
        }
      }
      for (auto& [k, ptr] : params(*m)) *ptr = tr.master.at(k).to(ptr->scalar_type());
      tr.grad.clear();
      tr.accumulated = 0;
    }
    o.Set("step", double(tr.step));
    for (auto [name, map] : {std::make_pair("master", &tr.master), std::make_pair("expAvg", &tr.expAvg), std::make_pair("expAvgSq", &tr.expAvgSq)}) {
      auto t = Napi::Object::New(env);
      for (auto& [k, v] : *map) t.Set(k, TensorWrap::Wrap(env, v.clone()));
      o.Set(name, t);
    }
    return o;
  });
}

Napi::Value Wrap::Dispose(const Napi::CallbackInfo& info) {
  model_.reset();
  return info.Env().Undefined();
}

}  // namespace x2i::alignnet
