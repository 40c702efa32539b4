#include "napi/common.h"

#include <cmath>
#include <vector>

namespace x2i {

Napi::Error makeError(Napi::Env env, const Caught& c) {
  auto err = Napi::Error::New(env, c.message);
  err.Set("code", Napi::String::New(env, c.code));
  return err;
}

void Job::Execute() {
  try {
    work_();
  } catch (...) {
    caught_ = translate(std::current_exception());
    SetError(caught_.message);
  }
}

void Job::OnOK() {
  Napi::HandleScope scope(Env());
  try {
    deferred_.Resolve(done_(Env()));
  } catch (const Napi::Error& e) {
    deferred_.Reject(e.Value());
  } catch (...) {
    deferred_.Reject(makeError(Env(), translate(std::current_exception())).Value());
  }
}

void Job::OnError(const Napi::Error&) {
  Napi::HandleScope scope(Env());
  deferred_.Reject(makeError(Env(), caught_).Value());
}

std::string argString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString())
    fail("ERR_INVALID_ARG", std::string("expected a string for ") + what);
  return info[i].As<Napi::String>().Utf8Value();
}

std::vector<int64_t> argShape(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsArray())
    fail("ERR_INVALID_ARG", std::string("expected an array of non-negative integers for ") + what);
  auto arr = info[i].As<Napi::Array>();
  std::vector<int64_t> shape;
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    Napi::Value v = arr[k];
    double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 0) || std::floor(x) != x || x > 9007199254740991.0)
      fail("ERR_INVALID_ARG", std::string("expected non-negative integers in ") + what + ", found " +
                                  v.ToString().Utf8Value() + " at index " + std::to_string(k));
    shape.push_back(static_cast<int64_t>(x));
  }
  return shape;
}

}  // namespace x2i
