// The X2I attention-distillation loss (shared/docs/x2i-method.md §2), as a composition of LibTorch ops
// with autograd for the gradient with respect to the student's taps. Per token: z-normalise over the D
// channels (unbiased std, eps 1e-7 added to the std), softmax of z/τ; term = Σ p_S (log p_S − log p_T) / B.
// Accumulates in float32 (float64 for float64 inputs). A term that is NaN/Inf is skipped and counted.
#include "distill.h"

#include "tensor.h"
#ifdef X2I_CUDA_KERNELS
#include "kernels.h"
#endif

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <cstdlib>

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

// Per row: the divergence and d/d student, as explicit formulas (no autograd). Rows are [..., D].
std::pair<at::Tensor, at::Tensor> rowsComposite(const at::Tensor& S, const at::Tensor& T, Divergence div, double tau,
                                                double eps, double gradScale) {
  const auto acc = S.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor s = S.to(acc), t = T.to(acc);
  const int64_t D = s.size(-1);
  if (div == Divergence::Mse) {
    at::Tensor d = s - t;
    return {d.pow(2).sum(-1).to(at::kFloat), (d * (2 * gradScale)).to(S.scalar_type())};
  }
  auto standardise = [&](const at::Tensor& x, at::Tensor& centred, at::Tensor& sigma) {
    centred = x - x.mean(-1, true);
    sigma = (centred.pow(2).sum(-1, true) / double(D - 1)).sqrt();
    return centred / (sigma + eps) / tau;
  };
  at::Tensor ds, sigS, dt, sigT;
  at::Tensor ls = at::log_softmax(standardise(s, ds, sigS), -1), lt = at::log_softmax(standardise(t, dt, sigT), -1);
  at::Tensor ps = ls.exp(), pt = lt.exp(), term, ga;
  if (div == Divergence::Rkl) {
    term = (ps * (ls - lt)).sum(-1, true);
    ga = ps * ((ls - lt) - term);
  } else if (div == Divergence::Kl) {
    term = (pt * (lt - ls)).sum(-1, true);
    ga = ps - pt;
  } else {
    at::Tensor lm = at::log(0.5 * (ps + pt));
    term = 0.5 * (ps * (ls - lm) + pt * (lt - lm)).sum(-1, true);
    at::Tensor g = 0.5 * (ls - lm);
    ga = ps * (g - (ps * g).sum(-1, true));
  }
  at::Tensor gz = ga / tau, inv = 1 / (sigS + eps);
  at::Tensor c = at::where(sigS > 0, inv * inv * (gz * ds).sum(-1, true) / (double(D - 1) * sigS), at::zeros_like(sigS));
  at::Tensor grad = (inv * (gz - gz.mean(-1, true)) - ds * c) * gradScale;
  return {term.squeeze(-1).to(at::kFloat), grad.to(S.scalar_type())};
}

}  // namespace

std::pair<at::Tensor, at::Tensor> tapLossGrad(const at::Tensor& teacher, const at::Tensor& student, Divergence div,
                                              double tau, const at::Tensor& incoming, bool composite) {
  if (teacher.sizes() != student.sizes())
    fail("ERR_SHAPE_MISMATCH", "distillation: teacher and student taps differ in shape (teacher " + shapeString(teacher.sizes()) +
                                   ", student " + shapeString(student.sizes()) + ")");
  if (student.dim() < 2) fail("ERR_SHAPE_MISMATCH", "distillation: taps must be [B, tokens, D], got " + shapeString(student.sizes()));
  const double B = double(student.size(0));
  const double norm = div == Divergence::Mse ? double(student.numel()) : B;
  const at::Tensor t = teacher.to(student.device(), student.scalar_type());
#ifdef X2I_CUDA_KERNELS
  if (!composite && student.is_cuda() && student.scalar_type() != at::kDouble &&
      kernels::distillRowsSupported(student.size(-1)) && std::getenv("X2I_NO_KERNELS") == nullptr)
    return kernels::distillRows(student, t, incoming, int(div), tau, 1e-7, 1.0 / norm, 1.0 / norm);
#endif
  auto [rowTerms, grad] = rowsComposite(student, t, div, tau, 1e-7, 1.0 / norm);
  at::Tensor term = rowTerms.sum() / norm;
  grad.masked_fill_(at::isfinite(term).logical_not(), 0);  // a skipped term sends no gradient
  if (incoming.defined()) grad.add_(incoming.to(grad.scalar_type()));
  return {term, grad};
}

namespace {
// X2I_DISTILL_PASSTHROUGH=1 (benchmarks only): the loss nodes hand the incoming gradient on unchanged and
// compute nothing, so that a step's time with and without the loss passes can be told apart.
bool passThrough() { return std::getenv("X2I_DISTILL_PASSTHROUGH") != nullptr; }

// The student's tap as one autograd node: forward passes the tap on unchanged (and an anchor to start the
// backward from); backward turns the gradient arriving at the tap into incoming + d term/d tap in one
// fused pass and writes the term to terms[slot].
struct TapLoss : torch::autograd::Function<TapLoss> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor tap,
                                                at::Tensor teacher, at::Tensor terms, int64_t slot, int64_t div,
                                                double tau) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({tap});
    ctx->saved_data["teacher"] = teacher;
    ctx->saved_data["terms"] = terms;
    ctx->saved_data["slot"] = slot;
    ctx->saved_data["div"] = div;
    ctx->saved_data["tau"] = tau;
    return {tap, at::empty({}, tap.options().dtype(at::kFloat))};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!ctx->saved_data.count("teacher"))
      fail("ERR_INTERNAL", "distillation: a tap's loss node was differentiated twice (its teacher tap is released after one backward)");
    const at::Tensor tap = ctx->get_saved_variables()[0];
    if (passThrough()) {  // the benchmark's baseline: the same graph and nodes, no loss pass (and no zeros:
      ctx->saved_data.clear();  // the backward's GEMMs would run on zeros, faster than on real gradients)
      return {grads[0].defined() ? grads[0] : tap.detach(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [term, grad] = tapLossGrad(ctx->saved_data["teacher"].toTensor(), tap,
                                    Divergence(ctx->saved_data["div"].toInt()), ctx->saved_data["tau"].toDouble(),
                                    grads[0]);
    ctx->saved_data["terms"].toTensor().select(0, ctx->saved_data["slot"].toInt()).copy_(term);
    ctx->saved_data.clear();  // the teacher's tap is not needed any more
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

std::pair<at::Tensor, at::Tensor> attachTapLoss(const at::Tensor& studentTap, const at::Tensor& teacherTap,
                                                Divergence div, double tau, const at::Tensor& terms, int64_t slot) {
  if (teacherTap.sizes() != studentTap.sizes())
    fail("ERR_SHAPE_MISMATCH", "distillation: teacher and student taps differ in shape (teacher " +
                                   shapeString(teacherTap.sizes()) + ", student " + shapeString(studentTap.sizes()) + ")");
  auto o = TapLoss::apply(studentTap, teacherTap, terms, slot, int64_t(div), tau);
  return {o[0], o[1]};
}

Result fused(const std::array<at::Tensor, 3>& teacher, const std::array<at::Tensor, 3>& student, Divergence div,
             double tau, bool wantGrad) {
  Result r;
  std::vector<at::Tensor> terms;
  std::array<int64_t, 3> counts{};
  for (int k = 0; k < 3; ++k) {
    const at::Tensor &T = teacher[k], &S = student[k];
    if (T.sizes() != S.sizes() || S.dim() != 4)
      fail("ERR_SHAPE_MISMATCH", "distillationLoss: captures must be [B, layers, tokens, D] of equal shapes");
    std::vector<at::Tensor> grads;
    for (int64_t i = 0; i < S.size(1); ++i) {
      auto [term, grad] = tapLossGrad(T.select(1, i), S.select(1, i), div, tau);
      terms.push_back(term.to(at::kDouble));
      if (wantGrad) grads.push_back(grad);
    }
    counts[k] = S.size(1);
    if (wantGrad) r.grads[k] = at::stack(grads, 1);
  }
  at::Tensor all = terms.empty() ? at::zeros({0}, at::kDouble) : at::stack(terms).cpu();  // one sync
  const double* v = all.data_ptr<double>();
  for (int k = 0, j = 0; k < 3; ++k)
    for (int64_t i = 0; i < counts[k]; ++i, ++j) {
      r.terms[k].push_back(v[j]);
      if (std::isfinite(v[j])) r.loss += v[j];
      else ++r.skipped;
    }
  return r;
}

// The arguments of one tap's call (distillTap, benchDistillTap): teacher, student, divergence, temperature,
// incoming? (moved to the student's device), method 'fused' (default) | 'composite'.
struct TapCall {
  at::Tensor T, S, In;
  Divergence div;
  double tau;
  bool composite;
};
TapCall parseTapCall(const Napi::CallbackInfo& info, const char* name) {
  TapCall c;
  c.T = TensorWrap::Get(info[0], "teacher"), c.S = TensorWrap::Get(info[1], "student");
  c.div = parseDivergence(argString(info, 2, "divergence"));
  c.tau = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0;
  if (!(c.tau > 0)) fail("ERR_INVALID_ARG", std::string(name) + ": temperature must be positive");
  if (info.Length() > 4 && info[4].IsObject()) c.In = TensorWrap::Get(info[4], "incoming");
  if (c.In.defined() && c.In.sizes() != c.S.sizes())
    fail("ERR_SHAPE_MISMATCH", std::string(name) + ": incoming gradient " + shapeString(c.In.sizes()) + " for a tap of " +
                                   shapeString(c.S.sizes()));
  if (c.In.defined()) c.In = c.In.to(c.S.device());
  c.composite = info.Length() > 5 && info[5].IsString() && info[5].As<Napi::String>().Utf8Value() == "composite";
  return c;
}

// benchDistillTap(teacher, student, divergence, temperature, incoming?, method?, iters) → mean ms of tapLossGrad
// over `iters` back-to-back calls (one device synchronisation at each end). 'composite' times the same formulas
// as unfused LibTorch ops (the baseline of the fused pass).
Napi::Value BenchTap(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const TapCall c = parseTapCall(info, "benchDistillTap");
    const int iters = info.Length() > 6 && info[6].IsNumber() ? info[6].As<Napi::Number>().Int32Value() : 100;
    if (iters < 1) fail("ERR_INVALID_ARG", "benchDistillTap: iters must be positive");
    auto ms = std::make_shared<double>(0);
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      auto sync = [&] { syncDevice(c.S); };
      for (int i = 0; i < 3; ++i) tapLossGrad(c.T, c.S, c.div, c.tau, c.In, c.composite);
      sync();
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) tapLossGrad(c.T, c.S, c.div, c.tau, c.In, c.composite);
      sync();
      *ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
    }, [ms](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *ms); });
  });
}

// distillTap(teacher, student, divergence, temperature, incoming?, method?) → Promise<{ term, grad }>: one tap
// through tapLossGrad (the form the training step's backward uses).
Napi::Value DistillTap(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const TapCall c = parseTapCall(info, "distillTap");
    struct Out { double term = 0; at::Tensor grad; };
    auto out = std::make_shared<Out>();
    return queue(info.Env(), [=] {
      c10::InferenceMode guard;
      auto [term, grad] = tapLossGrad(c.T, c.S, c.div, c.tau, c.In, c.composite);
      out->term = term.item<double>();
      out->grad = grad;
    }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      o.Set("term", out->term);
      o.Set("grad", TensorWrap::Wrap(env, out->grad));
      return o;
    });
  });
}

// narrowView(tensor, dim, start, length) → a view (internal: the GPU tests feed the kernel row-strided taps)
Napi::Value NarrowView(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "tensor");
    const int64_t dim = info[1].As<Napi::Number>().Int64Value(), start = info[2].As<Napi::Number>().Int64Value(),
                  len = info[3].As<Napi::Number>().Int64Value();
    if (dim < 0 || dim >= x.dim() || start < 0 || len < 0 || start + len > x.size(dim))
      fail("ERR_INVALID_ARG", "narrowView: [" + std::to_string(start) + ", " + std::to_string(start + len) +
                                  ") of dim " + std::to_string(dim) + " of " + shapeString(x.sizes()));
    return TensorWrap::Wrap(info.Env(), x.narrow(dim, start, len));
  });
}

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

}  // namespace x2i::distill
