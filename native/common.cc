#include "common.h"

#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <new>
#include <utility>
#include <vector>

namespace x2i {

Caught translate(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    return {err.code, err.what()};
  } catch (const c10::OutOfMemoryError& err) {
    return {"ERR_OUT_OF_MEMORY", err.what_without_backtrace()};
  } catch (const c10::Error& err) {
    std::string msg = err.what_without_backtrace();
    const char* code = msg.find("CUDA") != std::string::npos ? "ERR_CUDA" : "ERR_TORCH";
    return {code, msg};
  } catch (const std::bad_alloc&) {
    return {"ERR_OUT_OF_MEMORY", "out of host memory"};
  } catch (const std::exception& err) {
    return {"ERR_NATIVE", err.what()};
  } catch (...) {
    return {"ERR_NATIVE", "unknown native exception"};
  }
}

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

namespace {
const std::vector<std::pair<std::string, at::ScalarType>>& dtypeTable() {
  static const std::vector<std::pair<std::string, at::ScalarType>> t = {
      {"float32", at::kFloat},       {"float64", at::kDouble},       {"float16", at::kHalf},
      {"bfloat16", at::kBFloat16},   {"int64", at::kLong},           {"int32", at::kInt},
      {"int16", at::kShort},         {"int8", at::kChar},            {"uint8", at::kByte},
      {"bool", at::kBool},           {"uint16", at::kUInt16},        {"uint32", at::kUInt32},
      {"uint64", at::kUInt64},       {"complex64", at::kComplexFloat},
      {"float8_e4m3fn", at::kFloat8_e4m3fn}, {"float8_e5m2", at::kFloat8_e5m2},
      {"float8_e8m0fnu", at::kFloat8_e8m0fnu}, {"float4_e2m1fn_x2", at::kFloat4_e2m1fn_x2},
  };
  return t;
}
}  // namespace

at::ScalarType parseDType(const std::string& name) {
  for (auto& [n, t] : dtypeTable())
    if (n == name) return t;
  std::string known;
  for (auto& [n, t] : dtypeTable()) known += (known.empty() ? "" : ", ") + n;
  fail("ERR_INVALID_DTYPE", "unknown dtype '" + name + "' (expected one of " + known + ")");
}

std::string dtypeName(at::ScalarType s) {
  for (auto& [n, t] : dtypeTable())
    if (t == s) return n;
  return std::string(c10::toString(s));
}

c10::Device parseDevice(const std::string& name) {
  c10::Device d = c10::kCPU;
  try {
    d = c10::Device(name);
  } catch (const c10::Error&) {
    fail("ERR_INVALID_DEVICE", "invalid device '" + name + "' (expected 'cpu', 'cuda' or 'cuda:N')");
  }
  if (d.is_cpu()) return d;
  if (!d.is_cuda())
    fail("ERR_INVALID_DEVICE", "unsupported device '" + name + "' (expected 'cpu', 'cuda' or 'cuda:N')");
  const int64_t n = at::hasCUDA() ? static_cast<int64_t>(at::detail::getCUDAHooks().getNumGPUs()) : 0;
  if (n == 0)
    fail("ERR_CUDA_UNAVAILABLE", "device '" + name + "' requested but CUDA is not available (LibTorch " +
                                     X2I_LIBTORCH_VERSION + ", " + X2I_LIBTORCH_FLAVOUR + " build)");
  if (!d.has_index()) d = c10::Device(c10::kCUDA, 0);
  if (d.index() >= n)
    fail("ERR_INVALID_DEVICE", "device '" + name + "' requested but only " + std::to_string(n) +
                                   " CUDA device(s) exist");
  return d;
}

std::string deviceName(const c10::Device& d) {
  if (d.is_cpu()) return "cpu";
  return d.str();
}

std::string shapeString(at::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

void syncDevice(const c10::Device& d) {
  if (d.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(d.index());
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
