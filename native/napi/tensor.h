// TensorWrap: the JS handle of one at::Tensor. The handle owns one reference; dispose() drops it at
// once, the GC finalizer is the safety net. Live handles are counted per device for x2i.memory().
#pragma once
#include "core/transfer.h"
#include "napi/common.h"

#include <c10/core/InferenceMode.h>

#include <memory>

namespace x2i {

class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, at::Tensor t);   // a new JS handle owning t
  static at::Tensor Get(Napi::Value v, const char* what);  // throws a coded error on bad input

  explicit TensorWrap(const Napi::CallbackInfo& info);
  ~TensorWrap() override;
  const at::Tensor& tensor(const char* what) const;

 private:
  at::Tensor t_;
  bool live_ = false;
  void release();

  static Napi::Value FromArray(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value ToArray(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
};

// Live tensor handles and their bytes per device: { tensors, bytes, devices: { cpu: {...}, ... } }.
Napi::Value Memory(const Napi::CallbackInfo& info);

// A JS typed array viewing (or, where external buffers are not allowed, copying) a contiguous CPU
// tensor that nobody else references.
Napi::Value TypedArrayOf(Napi::Env env, at::Tensor owned);

// The async op that makes one tensor: fn() runs on a worker thread (under InferenceMode unless told
// otherwise), the Promise settles once the device has finished it, with a new handle owning the result.
template <class F>
Napi::Promise queueTensor(Napi::Env env, F fn, bool inference = true) {
  auto out = std::make_shared<at::Tensor>();
  return queue(env, [fn = std::move(fn), out, inference] {
    c10::InferenceMode guard(inference);
    *out = fn();
    syncDevice(*out);
  }, [out](Napi::Env env) -> Napi::Value { return TensorWrap::Wrap(env, std::move(*out)); });
}

}  // namespace x2i
