#include "train/finetune.h"

#include "models/lora.h"
#include "train/grad_norm.h"

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <mutex>

namespace x2i::train {

void addAdapterParameters(FineTune& ft, const std::string& adapter) {
  auto it = ft.model->adapters.find(adapter);
  if (it == ft.model->adapters.end() || !it->second->trainable)
    fail("ERR_INVALID_ARG", "fine-tuning: '" + adapter + "' is not a trainable adapter of this transformer");
  ft.adapter = adapter;
  for (auto& [target, part] : lora::parts(*ft.model, adapter)) {
    const std::string base = target + "." + std::to_string(part->row) + ".";
    ft.names.push_back(base + "lora_A"), ft.params.push_back(part->A);
    ft.names.push_back(base + "lora_B"), ft.params.push_back(part->B);
  }
}

void addParameters(FineTune& ft, const std::vector<std::pair<std::string, at::Tensor*>>& named) {
  c10::NoGradGuard noGrad;
  for (auto& [name, t] : named) {
    if (t->scalar_type() != at::kFloat)
      fail("ERR_INVALID_DTYPE", "fine-tuning: parameter '" + name + "' is " + dtypeName(t->scalar_type()) +
                                    "; trained parameters are float32 (load the branches in float32)");
    if (!t->requires_grad()) *t = t->detach().requires_grad_(true);
    ft.names.push_back(name), ft.params.push_back(*t);
  }
}


double backward(FineTune& ft, const FineTuneBatch& b) {
  const flux::Model& m = *ft.model;
  if (ft.params.empty()) fail("ERR_INVALID_ARG", "fine-tuning: nothing to train");
  const at::Tensor& x0in = b.inputs.hiddenStates;
  if (!x0in.defined() || !b.noise.defined() || b.noise.sizes() != x0in.sizes())
    fail("ERR_SHAPE_MISMATCH", "fine-tuning: noise must have the shape of the latents " +
                                   (x0in.defined() ? shapeString(x0in.sizes()) : std::string("(missing)")));
  const int64_t B = x0in.size(0);
  if (!b.sigma.defined() || b.sigma.dim() != 1 || b.sigma.size(0) != B)
    fail("ERR_SHAPE_MISMATCH", "fine-tuning: sigma must be [" + std::to_string(B) + "]");
  c10::AutoGradMode enable(true);
  const auto dev = m.device();
  const at::Tensor x0 = x0in.to(dev, at::kFloat), eps = b.noise.to(dev, at::kFloat);
  const at::Tensor sigma = b.sigma.to(dev, at::kFloat);
  const at::Tensor s = sigma.view({B, 1, 1});
  flux::Inputs in = b.inputs;
  in.hiddenStates = (1 - s) * x0 + s * eps;  // x_σ
  // checkpointed blocks are autograd nodes of their inputs only: one input that requires grad makes their outputs
  // (and so the loss) reach the adapter's parts, which the recomputation then sends their gradients
  if (b.checkpoint) in.hiddenStates.requires_grad_(true);
  in.timestep = sigma;
  if (ft.controlForward) {
    if (!b.hint.defined()) fail("ERR_INVALID_ARG", "LightControl training: the batch needs a hint image");
    in.controlResiduals = ft.controlForward(b.hint.to(dev), sigma.to(m.dtype()), m.dtype());
    in.controlScale = b.controlScale;
  }
  flux::Inputs p = flux::prepare(m, in);
  at::Tensor v = flux::forward(m, p, nullptr, b.checkpoint);
  at::Tensor loss = at::mse_loss(v.to(at::kFloat), eps - x0);
  for (auto& t : ft.params) t.mutable_grad() = at::Tensor();
  // every leaf that requires grad (not `inputs = params`: that would prune the checkpointed blocks, whose graphs
  // reach the parts only when they are recomputed)
  torch::autograd::backward({loss});
  c10::NoGradGuard noGrad;
  if (ft.grads.empty()) ft.grads.resize(ft.params.size());
  for (size_t i = 0; i < ft.params.size(); ++i) {
    at::Tensor g = ft.params[i].grad();  // a tensor of its own once the parameter lets go of it
    ft.params[i].mutable_grad() = at::Tensor();
    if (!g.defined()) continue;
    if (ft.grads[i].defined()) ft.grads[i].add_(g);
    else ft.grads[i] = g;
  }
  ++ft.accumulated;
  return loss.item<double>();
}

double step(FineTune& ft, const AdamW& opt, double maxNorm, dist::Group* group) {
  if (ft.accumulated == 0) fail("ERR_INVALID_ARG", "fine-tuning: optimizer step without accumulated gradients");
  c10::NoGradGuard noGrad;
  for (size_t i = 0; i < ft.params.size(); ++i)
    if (!ft.grads[i].defined()) ft.grads[i] = at::zeros_like(ft.params[i]);
  double count = double(ft.accumulated);
  if (group && group->size > 1) {  // data parallel: every rank's gradients and micro-batch count, one collective
    std::vector<at::Tensor> flat;
    for (auto& g : ft.grads) flat.push_back(g.reshape({-1}));
    flat.push_back(at::full({1}, count, flat[0].options()));
    at::Tensor all = at::cat(flat);
    {
      std::lock_guard<std::mutex> lock(group->mutex);
      group->allReduceSum(all);
    }
    int64_t off = 0;
    for (auto& g : ft.grads) g.copy_(all.narrow(0, off, g.numel()).view_as(g)), off += g.numel();
    count = all[off].item<double>();
  }
  for (auto& g : ft.grads) g.div_(count);
  const double norm = globalNorm(ft.grads, ft.grads[0].options().dtype(at::kDouble));
  const double coef = clipCoefficient(norm, maxNorm);
  if (ft.adamw.m.empty())
    for (auto& p : ft.params) ft.adamw.m.push_back(at::zeros_like(p)), ft.adamw.v.push_back(at::zeros_like(p));
  const int64_t t = ++ft.adamw.step;
  std::vector<at::Tensor> g;
  for (auto& gi : ft.grads) g.push_back(clipped(gi, coef));
  adamwUpdate(opt, t, ft.params, ft.adamw.m, ft.adamw.v, g);
  ft.grads.assign(ft.params.size(), at::Tensor());
  ft.accumulated = 0;
  syncDevice(ft.params[0]);
  return norm;
}

FineTuneState state(const FineTune& ft) {
  c10::NoGradGuard noGrad;
  FineTuneState s;
  s.step = ft.adamw.step;
  for (size_t i = 0; i < ft.params.size(); ++i) {
    s.params[ft.names[i]] = ft.params[i].detach().clone();
    s.expAvg[ft.names[i]] = ft.adamw.m.empty() ? at::zeros_like(s.params[ft.names[i]]) : ft.adamw.m[i].clone();
    s.expAvgSq[ft.names[i]] = ft.adamw.v.empty() ? at::zeros_like(s.params[ft.names[i]]) : ft.adamw.v[i].clone();
  }
  return s;
}

void restore(FineTune& ft, const FineTuneState& s) {
  c10::NoGradGuard noGrad;
  auto get = [&](const std::map<std::string, at::Tensor>& from, const char* what, size_t i) {
    auto it = from.find(ft.names[i]);
    if (it == from.end()) fail("ERR_BAD_CHECKPOINT", std::string("fine-tuning state: missing ") + what + " '" + ft.names[i] + "'");
    if (it->second.sizes() != ft.params[i].sizes())
      fail("ERR_BAD_CHECKPOINT", std::string("fine-tuning state: ") + what + " '" + ft.names[i] + "' has shape " +
                                     shapeString(it->second.sizes()) + ", expected " + shapeString(ft.params[i].sizes()));
    return it->second.to(ft.params[i].device(), at::kFloat);
  };
  if (s.params.size() != ft.params.size())
    fail("ERR_BAD_CHECKPOINT", "fine-tuning state: " + std::to_string(s.params.size()) + " parameters, expected " +
                                   std::to_string(ft.params.size()));
  ft.adamw.m.clear(), ft.adamw.v.clear();
  for (size_t i = 0; i < ft.params.size(); ++i) {
    ft.params[i].copy_(get(s.params, "parameter", i));
    ft.adamw.m.push_back(get(s.expAvg, "expAvg", i));
    ft.adamw.v.push_back(get(s.expAvgSq, "expAvgSq", i));
  }
  ft.adamw.step = s.step;
  ft.grads.assign(ft.params.size(), at::Tensor());
  ft.accumulated = 0;
}

}  // namespace x2i::train
