// Name-checked taking of checkpoint tensors, shared by every model loader: take() checks the shape,
// finish() reports what the checkpoint holds beyond the model. Messages name the model, the file and the
// expectation (`context`, e.g. "(from config.json)" or the config the shapes were derived from).
#pragma once
#include "common.h"

#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace x2i {

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
    fail("ERR_CHECKPOINT_KEY", where() + "missing tensor '" + names[0] + "' (expected shape " + shapeString(shape) + ")");
  }
  at::Tensor take(const std::string& name, const std::vector<int64_t>& shape) { return take(std::vector<std::string>{name}, shape); }
  // A linear layer's name.weight [out, in] and name.bias [out].
  std::pair<at::Tensor, at::Tensor> linear(const std::string& name, int64_t out, int64_t in) {
    at::Tensor W = take(name + ".weight", {out, in});
    return {W, take(name + ".bias", {out})};
  }
  void drop(const std::string& name) { w_.erase(name); }
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
