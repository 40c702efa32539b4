// Tensor creation and plain ops: randn, zeros, matmul (lib/core/tensor.ts).
#include "core/random.h"
#include "napi/bindings.h"
#include "napi/tensor.h"

namespace x2i {

// randn(shape, dtype, device, seed?): standard normal values drawn on the CPU (the same numbers on every
// device for a seed, as diffusers recommends), then moved and cast.
Napi::Value Randn(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto shape = argShape(info, 0, "shape");
    const at::ScalarType dtype = parseDType(argString(info, 1, "dtype"));
    const c10::Device device = parseDevice(argString(info, 2, "device"));
    const bool seeded = info.Length() > 3 && info[3].IsNumber();
    const uint64_t seed = seeded ? uint64_t(info[3].As<Napi::Number>().Int64Value()) : 0;
    if (!at::isFloatingType(dtype)) fail("ERR_INVALID_DTYPE", "randn needs a floating dtype, found " + dtypeName(dtype));
    return queueTensor(info.Env(), [=] { return randn(shape, dtype, device, seeded, seed); },
                       /*inference=*/false);  // a plain tensor: usable where autograd records
  });
}

// zeros(shape, dtype, device) → Promise<NativeTensor>, allocated on the device (no host copy)
Napi::Value Zeros(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto shape = argShape(info, 0, "shape");
    const at::ScalarType dtype = parseDType(argString(info, 1, "dtype"));
    const c10::Device device = parseDevice(argString(info, 2, "device"));
    return queueTensor(info.Env(), [=] { return at::zeros(shape, at::TensorOptions().dtype(dtype).device(device)); },
                       /*inference=*/false);
  });
}

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor a = TensorWrap::Get(info[0], "a"), b = TensorWrap::Get(info[1], "b");
    return queueTensor(info.Env(), [a, b] { return at::matmul(a, b); });
  });
}

}  // namespace x2i
