// N-API wrapper of flux::Model (see flux_wrap.cc).
#pragma once
#include "common.h"
#include "flux.h"

namespace x2i {

class FluxWrap : public Napi::ObjectWrap<FluxWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit FluxWrap(const Napi::CallbackInfo& info);

 private:
  std::shared_ptr<flux::Model> model_;  // jobs in flight hold their own reference
  struct TrainState {                   // AdamW moments of every parameter (trainStep), made on first use
    std::vector<at::Tensor> m, v;
    int64_t step = 0;
  };
  std::shared_ptr<TrainState> train_ = std::make_shared<TrainState>();
  std::shared_ptr<flux::Model> model() const;
  static Napi::Value Load(const Napi::CallbackInfo& info);
  static Napi::Value Random(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value ForwardBackward(const Napi::CallbackInfo& info);
  Napi::Value DistillationStep(const Napi::CallbackInfo& info);
  Napi::Value Denoise(const Napi::CallbackInfo& info);
  Napi::Value TrainStep(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
};

}  // namespace x2i
