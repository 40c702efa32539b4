#include "train/alignnet.h"

#include "train/grad_norm.h"

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <mutex>

namespace x2i::alignnet {
namespace {
// The weights become the cast masters.
void castMasters(Model& m, Training& tr) {
  for (auto& [k, ptr] : parameters(m)) *ptr = tr.master.at(k).to(ptr->scalar_type());
}
}  // namespace

Training& trainingOf(Model& m) {
  if (!m.training) {
    m.training = std::make_shared<Training>();
    for (auto& [k, t] : parameters(m)) {
      at::Tensor master = t->detach().to(at::kFloat).clone();
      m.training->master[k] = master;
      m.training->expAvg[k] = at::zeros_like(master);
      m.training->expAvgSq[k] = at::zeros_like(master);
    }
  }
  return *m.training;
}

void backward(Model& m, const at::Tensor& hiddenStates, const at::Tensor& gSeq, const at::Tensor& gPooled) {
  Training& tr = trainingOf(m);
  c10::AutoGradMode enable(true);
  Model shadow = m;  // the same structure over leaf copies of the master weights
  shadow.training = nullptr;
  std::map<std::string, at::Tensor> leaves;
  for (auto& [k, ptr] : parameters(shadow)) {
    leaves[k] = tr.master.at(k).detach().requires_grad_(true);
    *ptr = leaves[k];
  }
  // an encoder's output is an inference tensor (its forward ran under InferenceMode): a float32 one is copied out
  // of it, since autograd cannot save it
  at::Tensor x = hiddenStates.to(at::kFloat).detach();
  if (x.is_inference()) x = x.clone();
  auto [seq, pooled] = forward(shadow, x);
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

double optimizerStep(Model& m, const train::AdamW& opt, double maxNorm, dist::Group* group) {
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
  std::vector<at::Tensor> grads;
  for (auto& [k, g] : tr.grad) grads.push_back(g.div_(double(tr.accumulated)));
  // float32 sums per tensor, accumulated in float64
  const double norm = train::globalNorm(grads, grads[0].options().dtype(at::kDouble));
  const double coef = train::clipCoefficient(norm, maxNorm);
  const int64_t t = ++tr.step;
  std::vector<at::Tensor> ps, ms, vs, gs;
  for (auto& [k, ptr] : parameters(m))
    ps.push_back(tr.master.at(k)), ms.push_back(tr.expAvg.at(k)), vs.push_back(tr.expAvgSq.at(k)),
        gs.push_back(train::clipped(tr.grad.at(k), coef));
  train::adamwUpdate(opt, t, ps, ms, vs, gs);
  castMasters(m, tr);
  tr.grad.clear();
  tr.accumulated = 0;
  return norm;
}

void broadcastWeights(Model& m, dist::Group& group, int root) {
  c10::NoGradGuard guard;  // the masters stay usable as autograd leaves
  Training& tr = trainingOf(m);
  std::vector<at::Tensor> parts;
  for (auto& [k, t] : tr.master) parts.push_back(t.reshape({-1}));
  at::Tensor flat = at::cat(parts);
  {
    std::lock_guard<std::mutex> lock(group.mutex);
    group.broadcast(flat, root);
  }
  int64_t off = 0;
  for (auto& [k, t] : tr.master) t.copy_(flat.narrow(0, off, t.numel()).view_as(t)), off += t.numel();
  castMasters(m, tr);
  syncDevice(flat);
}

void restoreTraining(Model& m, int64_t step, const std::map<std::string, std::map<std::string, at::Tensor>>& parts) {
  Training& tr = trainingOf(m);
  tr.step = step;
  for (auto [name, dst] : {std::make_pair("master", &tr.master), std::make_pair("expAvg", &tr.expAvg),
                           std::make_pair("expAvgSq", &tr.expAvgSq)})
    for (auto& [k, t] : *dst) t.copy_(parts.at(name).at(k));
  castMasters(m, tr);
  tr.grad.clear();
  tr.accumulated = 0;
}

}  // namespace x2i::alignnet
