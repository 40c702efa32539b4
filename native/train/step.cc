#include "train/step.h"

#include "train/grad_norm.h"

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

namespace x2i::train {

const char* const kCaptureNames[3] = {"doubleImg", "doubleTxt", "single"};

namespace {
// Collects taps as the forward produces them, and stacks them per kind on dim 1: [B, blocks, tokens, D].
struct TapCollector {
  std::array<std::vector<at::Tensor>, 3> taps;
  flux::TapHook hook() {
    return [this](flux::Tap k, int64_t, const at::Tensor& t) { taps[int(k)].push_back(t); };
  }
  Captures stacked() const {
    Captures out;
    for (int k = 0; k < 3; ++k)
      if (!taps[k].empty()) out[k] = at::stack(taps[k], 1);
    return out;
  }
};

// The student's inputs prepared, with the conditioning as leaves of their own (clones: also when the inputs
// were made in inference mode).
flux::Inputs conditioningLeaves(const flux::Model& m, const flux::Inputs& in) {
  flux::Inputs p = flux::prepare(m, in);
  p.encoderHiddenStates = p.encoderHiddenStates.detach().clone().requires_grad_(true);
  p.pooledProjections = p.pooledProjections.detach().clone().requires_grad_(true);
  return p;
}

// d Σ outs·grads / d conditioning (zeros where the conditioning does not reach the outputs).
ConditioningGrad backwardToConditioning(const flux::Inputs& p, const std::vector<at::Tensor>& outs,
                                        const std::vector<at::Tensor>& grads) {
  auto g = torch::autograd::grad(outs, {p.encoderHiddenStates, p.pooledProjections}, grads,
                                 /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
  return {g[0].defined() ? g[0] : at::zeros_like(p.encoderHiddenStates),
          g[1].defined() ? g[1] : at::zeros_like(p.pooledProjections)};
}
}  // namespace

Prediction predict(const flux::Model& m, const flux::Inputs& in, bool capture) {
  c10::InferenceMode guard;
  TapCollector caps;
  Prediction out;
  flux::Inputs p = flux::prepare(m, in);
  out.sample = flux::forward(m, p, capture ? caps.hook() : flux::TapHook());
  if (capture) out.captures = caps.stacked();
  syncDevice(out.sample);
  return out;
}

std::pair<at::Tensor, ConditioningGrad> conditioningVjp(const flux::Model& m, const flux::Inputs& in,
                                                        const at::Tensor& gSample, const Captures& gCaps,
                                                        bool checkpoint) {
  c10::AutoGradMode enable(true);
  flux::Inputs p = conditioningLeaves(m, in);
  TapCollector caps;
  at::Tensor sample = flux::forward(m, p, caps.hook(), checkpoint);
  std::vector<at::Tensor> outs, grads;
  if (gSample.defined()) {
    if (gSample.sizes() != sample.sizes())
      fail("ERR_SHAPE_MISMATCH", "forwardBackward: gradSample must have the shape of sample");
    outs.push_back(sample);
    grads.push_back(gSample.to(sample.device(), sample.scalar_type()));
  }
  for (int k = 0; k < 3; ++k) {
    if (!gCaps[k].defined()) continue;
    const auto& taps = caps.taps[k];
    if (gCaps[k].dim() != 4 || gCaps[k].size(1) != int64_t(taps.size()) || gCaps[k].select(1, 0).sizes() != taps[0].sizes())
      fail("ERR_SHAPE_MISMATCH", std::string("forwardBackward: gradCaptures.") + kCaptureNames[k] + " must have the shape of captures." + kCaptureNames[k]);
    for (size_t i = 0; i < taps.size(); ++i) {
      outs.push_back(taps[i]);
      grads.push_back(gCaps[k].select(1, int64_t(i)).to(taps[i].device(), taps[i].scalar_type()));
    }
  }
  ConditioningGrad g = backwardToConditioning(p, outs, grads);
  sample = sample.detach();
  syncDevice(sample);
  return {sample, g};
}

void checkTeacherCaptures(const flux::Model& m, const Captures& c) {
  const int64_t counts[3] = {int64_t(m.doubles.size()), int64_t(m.doubles.size()), int64_t(m.singles.size())};
  for (int k = 0; k < 3; ++k)
    if (c[k].dim() != 4 || c[k].size(1) != counts[k])
      fail("ERR_SHAPE_MISMATCH", std::string("distillationStep: teacher.captures.") + kCaptureNames[k] + " has shape " +
                                     shapeString(c[k].sizes()) + ", expected [B, " + std::to_string(counts[k]) + ", tokens, D]");
}

// The teacher runs first (no autograd) and keeps its taps; each student tap passes through a loss node as it is
// produced: nothing of the student is stacked, and in the backward the gradient arriving at the tap and the tap's
// own loss gradient are one fused pass, so distillation adds one pass over each tap (reading student, teacher and
// the incoming gradient, writing the sum) to the backward and no tensor to the forward.
DistillResult distillationStep(const flux::Model& m, const Teacher& teacher, const flux::Inputs& student,
                               distill::Divergence div, double tau, bool checkpoint) {
  // teacher: taps kept as they are (the model dtype), nothing else
  std::array<std::vector<at::Tensor>, 3> tt;
  if (teacher.given) {
    for (int k = 0; k < 3; ++k)
      for (auto& t : teacher.captures[k].to(m.device(), m.dtype()).unbind(1)) tt[k].push_back(t.contiguous());  // no copy at B = 1
  } else {
    c10::InferenceMode guard;
    flux::Inputs p = flux::prepare(m, teacher.inputs);
    flux::forward(m, p, [&](flux::Tap k, int64_t, const at::Tensor& t) { tt[int(k)].push_back(t); });
  }
  // student: every tap through its loss node, in the order the taps come (per double block img, txt; then the
  // single blocks)
  c10::AutoGradMode enable(true);
  flux::Inputs p = conditioningLeaves(m, student);
  const int64_t nDouble = int64_t(m.doubles.size()), nSingle = int64_t(m.singles.size());
  at::Tensor terms = at::full({2 * nDouble + nSingle}, NAN, at::TensorOptions().dtype(at::kFloat).device(m.device()));
  std::vector<at::Tensor> anchors;
  std::array<size_t, 3> seen{};
  flux::forward(m, p, [&](flux::Tap k, int64_t, at::Tensor& tap) {
    auto& kind = tt[int(k)];
    if (seen[int(k)] >= kind.size()) fail("ERR_INTERNAL", "distillationStep: more student taps than teacher taps");
    auto [passOn, anchor] = distill::attachTapLoss(tap, kind[seen[int(k)]], div, tau, terms, int64_t(anchors.size()));
    kind[seen[int(k)]++] = at::Tensor();  // the loss node holds it now, until its backward
    tap = passOn;
    anchors.push_back(anchor);
  }, checkpoint);
  if (int64_t(anchors.size()) != terms.numel()) fail("ERR_INTERNAL", "distillationStep: fewer student taps than expected");
  DistillResult out;
  const at::Tensor one = at::ones({}, terms.options());
  out.grad = backwardToConditioning(p, anchors, std::vector<at::Tensor>(anchors.size(), one));
  at::Tensor all = terms.to(at::kDouble).cpu();  // one sync
  const double* v = all.data_ptr<double>();
  for (int64_t i = 0; i < nDouble; ++i) out.terms[0].push_back(v[2 * i]), out.terms[1].push_back(v[2 * i + 1]);
  for (int64_t i = 0; i < nSingle; ++i) out.terms[2].push_back(v[2 * nDouble + i]);
  for (int64_t j = 0; j < all.numel(); ++j) {
    if (std::isfinite(v[j])) out.loss += v[j];
    else ++out.skipped;
  }
  syncDevice(out.grad.encoderHiddenStates);
  return out;
}

FlowStepResult flowMatchingStep(flux::Model& m, const flux::Inputs& in, const at::Tensor& target, const AdamW& opt,
                                double maxNorm, AdamWState& st) {
  if (m.cfg.fp8) fail("ERR_NOT_SUPPORTED", "FluxTransformer.trainStep: the block weights are FP8 (frozen); load the model without quantize to train it");
  std::vector<at::Tensor*> params;
  m.forEachParameter([&](at::Tensor& t) { if (t.defined()) params.push_back(&t); });
  struct Frozen {  // the weights are frozen again however the step ends
    std::vector<at::Tensor*>& ps;
    ~Frozen() { for (auto* p : ps) p->requires_grad_(false); }
  } frozen{params};
  at::Tensor loss;
  std::vector<at::Tensor> grads;
  {
    c10::AutoGradMode enable(true);
    for (auto* p : params) p->requires_grad_(true);
    flux::Inputs p = flux::prepare(m, in);
    at::Tensor v = flux::forward(m, p);
    if (target.sizes() != v.sizes())
      fail("ERR_SHAPE_MISMATCH", "trainStep: target " + shapeString(target.sizes()) + " for a velocity of " + shapeString(v.sizes()));
    loss = at::mse_loss(v, target.to(v.device(), v.scalar_type()));
    std::vector<at::Tensor> ps;
    for (auto* q : params) ps.push_back(*q);
    grads = torch::autograd::grad({loss}, ps, {}, false, false, /*allow_unused=*/true);
  }
  c10::NoGradGuard noGrad;
  const double norm = globalNorm(grads, loss.options());  // float32 sums, accumulated in float32
  const double coef = clipCoefficient(norm, maxNorm);
  if (st.m.empty())
    for (auto* q : params) st.m.push_back(at::zeros_like(*q)), st.v.push_back(at::zeros_like(*q));
  const int64_t t = ++st.step;
  std::vector<at::Tensor> ps, ms, vs, gs;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!grads[i].defined()) continue;  // (a frozen piece of a fused kernel: no gradient)
    ps.push_back(*params[i]), ms.push_back(st.m[i]), vs.push_back(st.v[i]), gs.push_back(clipped(grads[i], coef));
  }
  adamwUpdate(opt, t, ps, ms, vs, gs);
  return {loss.item<double>(), norm, t};
}

}  // namespace x2i::train
