#include "napi/tensor.h"

#include "core/transfer.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

namespace x2i {

// ---------------------------------------------------------------- live-handle accounting
namespace {
struct Counts {
  int64_t tensors = 0, bytes = 0;
};
std::mutex registryMu;
std::map<std::string, Counts> registry;

void track(const at::Tensor& t, int sign) {
  std::lock_guard<std::mutex> lock(registryMu);
  auto& c = registry[deviceName(t.device())];
  c.tensors += sign;
  c.bytes += sign * nbytesOf(t);
}
}  // namespace

Napi::Value Memory(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto out = Napi::Object::New(env), devices = Napi::Object::New(env);
  int64_t tensors = 0, bytes = 0;
  std::lock_guard<std::mutex> lock(registryMu);
  for (auto& [dev, c] : registry) {
    auto o = Napi::Object::New(env);
    o.Set("tensors", Napi::Number::New(env, double(c.tensors)));
    o.Set("bytes", Napi::Number::New(env, double(c.bytes)));
    devices.Set(dev, o);
    tensors += c.tensors;
    bytes += c.bytes;
  }
  out.Set("tensors", Napi::Number::New(env, double(tensors)));
  out.Set("bytes", Napi::Number::New(env, double(bytes)));
  out.Set("devices", devices);
  return out;
}

// ---------------------------------------------------------------- typed arrays <-> dtypes
namespace {
const char* typedArrayName(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "TypedArray";
  }
}

// The dtype whose bits a typed array holds when no dtype is given.
bool naturalDType(napi_typedarray_type t, at::ScalarType* out) {
  switch (t) {
    case napi_int8_array: *out = at::kChar; return true;
    case napi_uint8_array: case napi_uint8_clamped_array: *out = at::kByte; return true;
    case napi_int16_array: *out = at::kShort; return true;
    case napi_int32_array: *out = at::kInt; return true;
    case napi_uint32_array: *out = at::kUInt32; return true;
    case napi_float32_array: *out = at::kFloat; return true;
    case napi_float64_array: *out = at::kDouble; return true;
    case napi_bigint64_array: *out = at::kLong; return true;
    case napi_biguint64_array: *out = at::kUInt64; return true;
    default: return false;  // Uint16Array: float16, bfloat16 or uint16 bits, the caller must say which
  }
}

// dtypes whose raw bits a typed array may carry as they are.
bool bitsCompatible(napi_typedarray_type t, at::ScalarType s) {
  switch (t) {
    case napi_uint8_array: case napi_uint8_clamped_array:
      return s == at::kByte || s == at::kBool || s == at::kFloat8_e4m3fn || s == at::kFloat8_e5m2 ||
             s == at::kFloat8_e8m0fnu || s == at::kFloat4_e2m1fn_x2;
    case napi_uint16_array: return s == at::kHalf || s == at::kBFloat16 || s == at::kUInt16;
    case napi_float32_array: return s == at::kFloat || s == at::kComplexFloat;
    default: {
      at::ScalarType n;
      return naturalDType(t, &n) && n == s;
    }
  }
}

napi_typedarray_type arrayTypeFor(at::ScalarType s) {
  switch (s) {
    case at::kFloat: case at::kComplexFloat: return napi_float32_array;
    case at::kDouble: return napi_float64_array;
    case at::kInt: return napi_int32_array;
    case at::kLong: return napi_bigint64_array;
    case at::kUInt64: return napi_biguint64_array;
    case at::kUInt32: return napi_uint32_array;
    case at::kShort: return napi_int16_array;
    case at::kChar: return napi_int8_array;
    case at::kHalf: case at::kBFloat16: case at::kUInt16: return napi_uint16_array;
    default: return napi_uint8_array;  // uint8, bool, float8 and packed float4 bits
  }
}

size_t arrayElemSize(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: case napi_uint8_array: case napi_uint8_clamped_array: return 1;
    case napi_int16_array: case napi_uint16_array: return 2;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: return 4;
    default: return 8;
  }
}

}  // namespace

Napi::Value TypedArrayOf(Napi::Env env, at::Tensor owned) {
  const napi_typedarray_type type = arrayTypeFor(owned.scalar_type());
  const size_t nbytes = size_t(nbytesOf(owned));
  Napi::ArrayBuffer buf;
  if (nbytes == 0) {
    buf = Napi::ArrayBuffer::New(env, 0);
  } else {
    auto* keep = new at::Tensor(std::move(owned));
    try {
      buf = Napi::ArrayBuffer::New(env, keep->data_ptr(), nbytes, [](Napi::Env env, void*, at::Tensor* t) {
        Napi::MemoryManagement::AdjustExternalMemory(env, -int64_t(t->numel() * t->element_size()));
        delete t;
      }, keep);
      Napi::MemoryManagement::AdjustExternalMemory(env, int64_t(nbytes));
    } catch (const Napi::Error&) {  // runtimes that forbid external buffers (Electron): copy once
      buf = Napi::ArrayBuffer::New(env, nbytes);
      std::memcpy(buf.Data(), keep->data_ptr(), nbytes);
      delete keep;
    }
  }
  napi_value arr;
  NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, type, nbytes / arrayElemSize(type), buf, 0, &arr),
                       Napi::Value());
  return Napi::Value(env, arr);
}

// ---------------------------------------------------------------- TensorWrap
Napi::Function TensorWrap::Init(Napi::Env env) {
  auto fn = DefineClass(env, "NativeTensor", {
      StaticMethod<&TensorWrap::FromArray>("fromArray"),
      InstanceMethod<&TensorWrap::Info>("info"),
      InstanceMethod<&TensorWrap::ToArray>("toArray"),
      InstanceMethod<&TensorWrap::To>("to"),
      InstanceMethod<&TensorWrap::Dispose>("dispose"),
  });
  setCtor(env, "NativeTensor", fn);
  return fn;
}

TensorWrap::TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw makeError(info.Env(), {"ERR_INVALID_ARG", "NativeTensor is created by x2i, not with new"});
  auto* t = info[0].As<Napi::External<at::Tensor>>().Data();
  t_ = std::move(*t);
  delete t;
  live_ = true;
  track(t_, +1);
}

TensorWrap::~TensorWrap() { release(); }

void TensorWrap::release() {
  if (!live_) return;
  live_ = false;
  track(t_, -1);
  t_.reset();
}

Napi::Object TensorWrap::Wrap(Napi::Env env, at::Tensor t) {
  return ctorOf(env, "NativeTensor").New({Napi::External<at::Tensor>::New(env, new at::Tensor(std::move(t)))});
}

const at::Tensor& TensorWrap::tensor(const char* what) const {
  if (!live_) fail("ERR_DISPOSED", std::string(what) + " was disposed");
  return t_;
}

at::Tensor TensorWrap::Get(Napi::Value v, const char* what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(ctorOf(v.Env(), "NativeTensor").Value()))
    fail("ERR_INVALID_ARG", std::string("expected a Tensor for ") + what);
  return Napi::ObjectWrap<TensorWrap>::Unwrap(v.As<Napi::Object>())->tensor(what);
}

// fromArray(typedArray, shape, dtype?, device?): one copy into LibTorch-owned memory (pinned when the
// tensor goes on to a GPU, so that the upload is asynchronous on the current stream).
Napi::Value TensorWrap::FromArray(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray())
      fail("ERR_INVALID_ARG", "Tensor.fromArray expects a typed array as data");
    napi_typedarray_type type;
    size_t length;
    void* data;
    NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, info[0], &type, &length, &data, nullptr, nullptr),
                         Napi::Value());
    auto shape = argShape(info, 1, "shape");
    const bool hasDType = info.Length() > 2 && info[2].IsString();
    const c10::Device device = parseDevice(info.Length() > 3 && info[3].IsString() ? argString(info, 3, "device")
                                                                                   : std::string("cpu"));
    at::ScalarType natural, dtype;
    const bool hasNatural = naturalDType(type, &natural);
    if (hasDType) {
      dtype = parseDType(argString(info, 2, "dtype"));
    } else if (hasNatural) {
      dtype = natural;
    } else {
      fail("ERR_INVALID_DTYPE", std::string("a ") + typedArrayName(type) +
                                    " holds raw 16-bit values: pass { dtype: 'bfloat16' | 'float16' | 'uint16' }");
    }
    const bool bits = bitsCompatible(type, dtype);
    if (!bits && !hasNatural)
      fail("ERR_INVALID_DTYPE", std::string("a ") + typedArrayName(type) + " cannot hold dtype '" +
                                    dtypeName(dtype) + "'");
    // The tensor as stored in the array: the target dtype when the bits match, else the array's own.
    const at::ScalarType stored = bits ? dtype : natural;
    int64_t numel = 1;
    for (auto s : shape) numel *= s;
    const int64_t expected = (stored == at::kComplexFloat ? 2 : 1) * numel;
    if (int64_t(length) != expected)
      fail("ERR_SHAPE_MISMATCH", "shape " + shapeString(shape) + " (" + dtypeName(dtype) + ") needs " +
                                     std::to_string(expected) + " elements but the " + typedArrayName(type) +
                                     " has " + std::to_string(length));
    auto opts = at::TensorOptions().dtype(stored).pinned_memory(device.is_cuda() && bits);
    at::Tensor t = at::empty(shape, opts);
    // LibTorch's copy is parallel over the intra-op threads (a plain memcpy is one core)
    if (length) t.copy_(at::from_blob(data, t.sizes(), at::TensorOptions().dtype(stored)));
    if (stored == at::kBool) {  // bytes other than 0/1 are not valid bools: normalise
      auto* p = static_cast<uint8_t*>(t.data_ptr());
      for (int64_t i = 0; i < numel; ++i) p[i] = p[i] != 0;
    }
    if (stored != dtype) t = t.to(dtype);
    if (device.is_cuda()) t = t.to(device, /*non_blocking=*/true);
    return Wrap(env, std::move(t));
  });
}

Napi::Value TensorWrap::Info(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto env = info.Env();
    const at::Tensor& t = tensor("tensor");
    auto o = Napi::Object::New(env);
    auto shape = Napi::Array::New(env, t.dim());
    for (int64_t i = 0; i < t.dim(); ++i) shape.Set(uint32_t(i), Napi::Number::New(env, double(t.size(i))));
    o.Set("shape", shape);
    o.Set("dtype", dtypeName(t.scalar_type()));
    o.Set("device", deviceName(t.device()));
    o.Set("nbytes", Napi::Number::New(env, double(nbytesOf(t))));
    return o;
  });
}

// toArray(): the values as a typed array. One copy (device -> host, or host -> fresh host memory when
// the tensor is already a contiguous CPU tensor, so JS never aliases tensor storage), made off-thread;
// the fresh buffer is then handed to JS without another copy.
Napi::Value TensorWrap::ToArray(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto src = tensor("tensor");
    auto out = std::make_shared<at::Tensor>();
    return queue(info.Env(), [src, out] {
      at::Tensor c = moveTo(src, at::kCPU).contiguous();
      if (c.defined() && src.defined() && c.storage().is_alias_of(src.storage())) c = c.clone();
      *out = std::move(c);
    }, [out](Napi::Env env) { return TypedArrayOf(env, std::move(*out)); });
  });
}

// to(device?, dtype?): a new tensor (or the same storage where nothing changes, as in PyTorch).
Napi::Value TensorWrap::To(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    auto src = tensor("tensor");
    const c10::Device device = info.Length() > 0 && info[0].IsString() ? parseDevice(argString(info, 0, "device"))
                                                                      : src.device();
    const at::ScalarType dtype = info.Length() > 1 && info[1].IsString() ? parseDType(argString(info, 1, "dtype"))
                                                                        : src.scalar_type();
    return queueTensor(info.Env(), [src, device, dtype] {
      if (device.is_cuda() && !src.is_cuda()) return moveTo(src, device).to(dtype);  // cast on the GPU
      if (src.is_cuda() && device.is_cpu()) return moveTo(src.to(dtype), device);    // cast on the GPU
      return src.to(device, dtype);
    }, /*inference=*/false);
  });
}

Napi::Value TensorWrap::Dispose(const Napi::CallbackInfo& info) {
  release();
  return info.Env().Undefined();
}

}  // namespace x2i
