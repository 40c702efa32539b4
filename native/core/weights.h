// Name-checked taking of checkpoint tensors, shared by every model loader: take() checks the shape,
// finish() reports what the checkpoint holds beyond the model. Messages name the model, the file and the
// expectation (`context`, e.g. "(from config.json)" or the config the shapes were derived from).
#pragma once
#include "core/dtype.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace x2i {

// Random weights for a model built from its config alone (benchmarks and tests at real sizes, no checkpoint):
// while a RandomInit is alive on a thread, WeightMap::take draws each missing tensor on the device instead of
// failing, with PyTorch's default Linear/Conv init (uniform ±1/√fan_in), norm weights 1, biases 0 and
// embedding tables N(0, 1), in the order the loader asks for them (so a seed gives the same model every time).
class RandomInit {
 public:
  RandomInit(c10::Device device, at::ScalarType dtype, uint64_t seed)
      : opts_(at::TensorOptions().device(device).dtype(dtype)),
        gen_(device.is_cpu() ? at::detail::createCPUGenerator(seed) : at::globalContext().defaultGenerator(device)),
        prev_(current()) {
    if (!device.is_cpu()) {
      std::lock_guard<std::mutex> lock(gen_.mutex());
      gen_.set_current_seed(seed);
    }
    current() = this;
  }
  ~RandomInit() { current() = prev_; }
  RandomInit(const RandomInit&) = delete;
  RandomInit& operator=(const RandomInit&) = delete;
  static RandomInit* active() { return current(); }

  at::Tensor draw(const std::string& name, const std::vector<int64_t>& shape) {
    auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
    const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (shape.size() == 1) return bias ? at::zeros(shape, opts_) : at::ones(shape, opts_);  // norms, scales, biases
    if (shape.size() == 2 && (has("embed") || has("shared.") || has("relative_attention_bias")))  // lookup tables
      return at::empty(shape, opts_).normal_(0, 1, gen_);
    int64_t fanIn = 1;
    for (size_t i = 1; i < shape.size(); ++i) fanIn *= shape[i];
    const double b = 1.0 / std::sqrt(double(fanIn));
    return at::empty(shape, opts_).uniform_(-b, b, gen_);
  }

 private:
  static RandomInit*& current() {
    thread_local RandomInit* p = nullptr;
    return p;
  }
  at::TensorOptions opts_;
  at::Generator gen_;
  RandomInit* prev_;
};

class WeightMap {
 public:
  WeightMap(std::map<std::string, at::Tensor> w, std::string model, std::string source,
            std::string context = "(from config.json)")
      : w_(std::move(w)), model_(std::move(model)), source_(std::move(source)), context_(std::move(context)) {}
  // The first of `names` present (aliases, e.g. with and without a prefix).
  at::Tensor take(const std::vector<std::string>& names, const std::vector<int64_t>& shape) {
    for (auto& n : names) {
      auto it = w_.find(n);
      if (it == w_.end()) continue;
      at::Tensor t = it->second;
      w_.erase(it);
      if (t.sizes() != at::IntArrayRef(shape))
        fail("ERR_CHECKPOINT_SHAPE", where() + "tensor '" + n + "' has shape " + shapeString(t.sizes()) + ", expected " +
                                         shapeString(shape) + " " + context_);
      return t;
    }
    if (RandomInit* r = RandomInit::active()) return r->draw(names[0], shape);
    fail("ERR_CHECKPOINT_KEY", where() + "missing tensor '" + names[0] + "' (expected shape " + shapeString(shape) + ")");
  }
  at::Tensor take(const std::string& name, const std::vector<int64_t>& shape) { return take(std::vector<std::string>{name}, shape); }
  // A linear layer's name.weight [out, in] and name.bias [out].
  std::pair<at::Tensor, at::Tensor> linear(const std::string& name, int64_t out, int64_t in) {
    at::Tensor W = take(name + ".weight", {out, in});
    return {W, take(name + ".bias", {out})};
  }
  void drop(const std::string& name) { w_.erase(name); }
  bool has(const std::string& name) const { return w_.count(name) > 0; }
  void finish() {
    if (w_.empty()) return;
    std::string extra;
    int n = 0;
    for (auto& [k, v] : w_)
      if (n++ < 5) extra += (extra.empty() ? "'" : ", '") + k + "'";
    fail("ERR_CHECKPOINT_KEY", where() + std::to_string(w_.size()) + " unexpected tensor(s) " + context_ + ": " + extra +
                                   (w_.size() > 5 ? ", ..." : ""));
  }

 private:
  std::map<std::string, at::Tensor> w_;
  std::string model_, source_, context_;
  std::string where() const { return model_ + " (" + source_ + "): "; }
};

}  // namespace x2i
