// The X2I attention-distillation loss (shared/docs/x2i-method.md §2), as a composition of LibTorch ops
// with autograd for the gradient with respect to the student's taps. Per token: z-normalise over the D
// channels (unbiased std, eps 1e-7 added to the std), softmax of z/τ; term = Σ p_S (log p_S − log p_T) / B.
// Accumulates in float32 (float64 for float64 inputs). A term that is NaN/Inf is skipped and counted.
#include "distill.h"

#include "tensor.h"

#include <c10/core/GradMode.h>

#include <cmath>

namespace x2i::distill {
namespace {

at::Tensor zNorm(const at::Tensor& x) {
  return (x - x.mean(-1, true)) / (x.std(-1, /*unbiased=*/true, /*keepdim=*/true) + 1e-7);
}

at::Tensor kl(const at::Tensor& logP, const at::Tensor& logQ) { return (logP.exp() * (logP - logQ)).sum(); }

at::Tensor term(const at::Tensor& t, const at::Tensor& s, Divergence div, double tau) {
  const double B = double(s.size(0));
  if (div == Divergence::Mse) return (s - t).pow(2).mean();
  at::Tensor ls = at::log_softmax(zNorm(s) / tau, -1), lt = at::log_softmax(zNorm(t) / tau, -1);
  switch (div) {
    case Divergence::Rkl: return kl(ls, lt) / B;
    case Divergence::Kl: return kl(lt, ls) / B;
    default: {
      at::Tensor lm = at::log(0.5 * (ls.exp() + lt.exp()));
      return 0.5 * (kl(ls, lm) + kl(lt, lm)) / B;
    }
  }
}

}  // namespace

Divergence parseDivergence(const std::string& s) {
  if (s == "rkl") return Divergence::Rkl;
  if (s == "kl") return Divergence::Kl;
  if (s == "js") return Divergence::Js;
  if (s == "mse") return Divergence::Mse;
  fail("ERR_INVALID_ARG", "unknown divergence '" + s + "' (expected 'rkl', 'kl', 'js' or 'mse')");
}

Result composed(const std::array<at::Tensor, 3>& teacher, const std::array<at::Tensor, 3>& student, Divergence div,
                double tau, bool wantGrad) {
  static const char* names[3] = {"doubleImg", "doubleTxt", "single"};
  Result r;
  for (int k = 0; k < 3; ++k) {
    const at::Tensor &T = teacher[k], &S = student[k];
    if (T.sizes() != S.sizes())
      fail("ERR_SHAPE_MISMATCH", std::string("distillationLoss: teacher and student ") + names[k] + " captures differ in shape");
    if (S.dim() != 4) fail("ERR_SHAPE_MISMATCH", std::string("distillationLoss: ") + names[k] + " captures must be [B, layers, tokens, D]");
    const auto acc = S.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    std::vector<at::Tensor> grads;
    for (int64_t i = 0; i < S.size(1); ++i) {
      at::Tensor t = T.select(1, i).to(acc);
      at::Tensor s = S.select(1, i).to(acc);
      if (wantGrad) s = s.clone().set_requires_grad(true);  // a normal tensor even if S came from inference mode
      at::Tensor v;
      {
        c10::AutoGradMode mode(wantGrad);
        v = term(t, s, div, tau);
      }
      const double value = v.item<double>();
      r.terms[k].push_back(value);
      if (!std::isfinite(value)) {
        ++r.skipped;
        if (wantGrad) grads.push_back(at::zeros_like(S.select(1, i)));
        continue;
      }
      r.loss += value;
      if (wantGrad) {
        at::Tensor g = torch::autograd::grad({v}, {s})[0];
        grads.push_back(g.to(S.scalar_type()));
      }
    }
    if (wantGrad) r.grads[k] = at::stack(grads, 1);
  }
  return r;
}

// distillationLossComposed(teacher {doubleImg, doubleTxt, single}, student {...}, temperature, divergence, wantGrad)
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
    auto out = std::make_shared<Result>();
    return queue(info.Env(), [=] { *out = composed(T, S, div, tau, wantGrad); }, [out, wantGrad](Napi::Env env) -> Napi::Value {
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

}  // namespace x2i::distill
