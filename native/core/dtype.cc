#include "core/dtype.h"

#include <utility>
#include <vector>

namespace x2i {
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

}  // namespace x2i
