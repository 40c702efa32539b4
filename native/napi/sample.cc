// Sampling and evaluation entry points (lib/sample/*.ts): image resizing, FLUX's latent layout, image agreement.
// The math: sample/image.cc, sample/latents.cc, sample/evaluate.cc.
#include "napi/bindings.h"
#include "napi/tensor.h"
#include "sample/evaluate.h"
#include "sample/image.h"
#include "sample/latents.h"

namespace x2i {

// resizeImage(rgb: uint8 [H, W, 3], outH, outW) → Promise<uint8 tensor [outH, outW, 3]>
Napi::Value ResizeImage(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor img = TensorWrap::Get(info[0], "image");
    sample::checkResizeInput(img);
    const int64_t oh = info[1].As<Napi::Number>().Int64Value(), ow = info[2].As<Napi::Number>().Int64Value();
    sample::checkResizeOutput(oh, ow);
    const std::string method = info.Length() > 3 && info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : "torch";
    if (method != "torch" && method != "pil") fail("ERR_INVALID_ARG", "resizeImage: method must be 'torch' or 'pil', found '" + method + "'");
    const bool pil = method == "pil";
    return queueTensor(info.Env(), [img, oh, ow, pil] { return sample::resizeImage(img, oh, ow, pil); });
  });
}

// packLatents(z [B, C, h, w]) → [B, (h/2)(w/2), 4C]
Napi::Value PackLatents(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor z = TensorWrap::Get(info[0], "latents");
    return queueTensor(info.Env(), [=] { return sample::packLatents(z); });
  });
}

// unpackLatents(x [B, N, 4C], h, w, scale, shift) → z / scale + shift as [B, C, h, w]
Napi::Value UnpackLatents(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "latents");
    const int64_t h = info[1].As<Napi::Number>().Int64Value(), w = info[2].As<Napi::Number>().Int64Value();
    const double scale = info[3].As<Napi::Number>().DoubleValue(), shift = info[4].As<Napi::Number>().DoubleValue();
    return queueTensor(info.Env(), [=] { return sample::unpackLatents(x, h, w, scale, shift); });
  });
}

// encodeLatents(z [B, C, h, w], scale, shift) → pack((z − shift)·scale) [B, (h/2)(w/2), 4C] in float32
Napi::Value EncodeLatents(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor z = TensorWrap::Get(info[0], "latents");
    const double scale = info[1].As<Napi::Number>().DoubleValue(), shift = info[2].As<Napi::Number>().DoubleValue();
    return queueTensor(info.Env(), [=] { return sample::encodeLatents(z, scale, shift); });
  });
}

// noiseLatents(x0, noise, sigma) → σ·noise + (1 − σ)·x0 (noise's dtype and device)
Napi::Value NoiseLatents(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x0 = TensorWrap::Get(info[0], "x0"), noise = TensorWrap::Get(info[1], "noise");
    const double sigma = info[2].As<Napi::Number>().DoubleValue();
    return queueTensor(info.Env(), [=] { return sample::noiseLatents(x0, noise, sigma); });
  });
}

// blendLatents(x, known, mask) → (1 − m)·known + m·x (x's dtype and device)
Napi::Value BlendLatents(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "x"), known = TensorWrap::Get(info[1], "known"), mask = TensorWrap::Get(info[2], "mask");
    return queueTensor(info.Env(), [=] { return sample::blendLatents(x, known, mask); });
  });
}

// toImage(decoded) → (x/2 + 0.5) clamped to [0, 1] in float32
Napi::Value ToImage(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "decoded");
    return queueTensor(info.Env(), [=] { return sample::toImage(x); });
  });
}

// imageToUint8(images [B, 3, H, W] in [0, 1]) → uint8 [B, H, W, 3]
Napi::Value ImageToUint8(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor x = TensorWrap::Get(info[0], "images");
    return queueTensor(info.Env(), [=] { return sample::imageToUint8(x); });
  });
}

// imageAgreement(a, b [B, 3, H, W] in [0, 1]) → { ssim: number[], psnr: number[] } per image
Napi::Value ImageAgreement(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor a = TensorWrap::Get(info[0], "a"), b = TensorWrap::Get(info[1], "b");
    sample::checkAgreement(a, b);
    auto out = std::make_shared<sample::Agreement>();
    return queue(info.Env(), [=] { *out = sample::imageAgreement(a, b); }, [out](Napi::Env env) -> Napi::Value {
      auto o = Napi::Object::New(env);
      auto s = Napi::Array::New(env), p = Napi::Array::New(env);
      for (size_t i = 0; i < out->ssim.size(); ++i) s.Set(uint32_t(i), out->ssim[i]), p.Set(uint32_t(i), out->psnr[i]);
      o.Set("ssim", s);
      o.Set("psnr", p);
      return o;
    });
  });
}

// relativeError(a, b) → Promise<‖a − b‖ / ‖b‖> (float64, on a's device)
Napi::Value RelativeError(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    at::Tensor a = TensorWrap::Get(info[0], "a"), b = TensorWrap::Get(info[1], "b");
    if (a.sizes() != b.sizes()) fail("ERR_SHAPE_MISMATCH", "relativeError: the tensors differ in shape");
    auto out = std::make_shared<double>(0);
    return queue(info.Env(), [a, b, out] { *out = sample::relativeError(a, b); },
                 [out](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *out); });
  });
}

}  // namespace x2i
