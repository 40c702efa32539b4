// Audio for the MLLM students: Whisper's log-mel features and resampling (models/whisper.cc; lib/models/audio.ts).
#include "models/whisper.h"
#include "napi/bindings.h"
#include "napi/tensor.h"

namespace x2i {

// audioLogMel(waveform [n] float, config? { mels, samplingRate, nFft, hop, chunkSeconds }) → Promise<[mels, F]>
Napi::Value AudioLogMel(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor w = TensorWrap::Get(info[0], "waveform");
    whisper::FeatureConfig c;
    if (info.Length() > 1 && info[1].IsObject()) {
      const Napi::Object o = info[1].As<Napi::Object>();
      auto num = [&](const char* k, int64_t& v) {
        if (o.Has(k) && o.Get(k).IsNumber()) v = o.Get(k).As<Napi::Number>().Int64Value();
      };
      num("mels", c.mels), num("samplingRate", c.samplingRate), num("nFft", c.nFft), num("hop", c.hop);
      num("chunkSeconds", c.chunkSeconds);
    }
    return queueTensor(info.Env(), [w, c] { return whisper::logMel(w, c); });
  });
}

// audioResample(waveform [n] float, from, to) → Promise<[ceil(n·to/from)]>
Napi::Value AudioResample(const Napi::CallbackInfo& info) {
  return guardAsync(info, [&]() -> Napi::Value {
    const at::Tensor w = TensorWrap::Get(info[0], "waveform");
    const int64_t from = info[1].As<Napi::Number>().Int64Value(), to = info[2].As<Napi::Number>().Int64Value();
    return queueTensor(info.Env(), [w, from, to] { return whisper::resample(w, from, to).clone(); });
  });
}

}  // namespace x2i
