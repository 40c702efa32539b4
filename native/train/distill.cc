// The X2I attention-distillation loss, as a composition of LibTorch ops
// with autograd for the gradient with respect to the student's taps. Per token: z-normalise over the D
// channels (unbiased std, eps 1e-7 added to the std), softmax of z/τ; term = Σ p_S (log p_S − log p_T) / B.
// Accumulates in float32 (float64 for float64 inputs). A term that is NaN/Inf is skipped and counted.
#include "train/distill.h"

#ifdef X2I_CUDA_KERNELS
#include "kernels/kernels.h"
#endif

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/custom_function.h>

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

}  // namespace x2i::distill
