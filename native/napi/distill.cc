// distillationLoss: the X2I loss over stacked captures (lib/train/distill.ts); the math: train/distill.cc.
#include "napi/bindings.h"
#include "napi/tensor.h"
#include "train/distill.h"

#include <c10/core/InferenceMode.h>

namespace x2i {

using namespace distill;

// distillationLoss(teacher {doubleImg, doubleTxt, single}, student {...}, temperature, divergence, wantGrad,
// method 'fused' (default) | 'autograd')
Napi::Value DistillationLoss(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    static const char* names[3] = {"doubleImg", "doubleTxt", "single"};
    std::array<at::Tensor, 3> T, S;
    for (int side = 0; side < 2; ++side) {
      if (info.Length() <= size_t(side) || !info[side].IsObject())
        fail("ERR_INVALID_ARG", "distillationLoss expects teacher and student captures { doubleImg, doubleTxt, single }");
      auto o = info[side].As<Napi::Object>();
      for (int k = 0; k < 3; ++k) (side ? S : T)[k] = TensorWrap::Get(o.Get(names[k]), names[k]);
    }
    const double tau = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : 3.0;
    if (!(tau > 0)) fail("ERR_INVALID_ARG", "distillationLoss: temperature must be positive");
    const Divergence div = parseDivergence(info.Length() > 3 && info[3].IsString() ? argString(info, 3, "divergence") : "rkl");
    const bool wantGrad = info.Length() > 4 && info[4].ToBoolean();
    const bool autograd = info.Length() > 5 && info[5].IsString() && info[5].As<Napi::String>().Utf8Value() == "autograd";
    auto out = std::make_shared<Result>();
    return queue(info.Env(), [=] {
      c10::InferenceMode guard(!autograd);
      *out = autograd ? composed(T, S, div, tau, wantGrad) : fused(T, S, div, tau, wantGrad);
    }, [out, wantGrad](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env), terms = Napi::Object::New(env);
      o.Set("loss", out->loss);
      for (int k = 0; k < 3; ++k) {
        auto a = Napi::Array::New(env, out->terms[k].size());
        for (size_t i = 0; i < out->terms[k].size(); ++i) a.Set(uint32_t(i), out->terms[k][i]);
        terms.Set(names[k], a);
      }
      o.Set("terms", terms);
      o.Set("skipped", double(out->skipped));
      if (wantGrad) {
        auto g = Napi::Object::New(env);
        for (int k = 0; k < 3; ++k) g.Set(names[k], TensorWrap::Wrap(env, out->grads[k]));
        o.Set("grads", g);
      }
      return o;
    });
  });
}

}  // namespace x2i
