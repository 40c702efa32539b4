// The encoders' JS handles: NativeT5Encoder, NativeClipTextEncoder, NativeClipVisionEncoder, NativeQwenVLEncoder (and qwenRopeIndex),
// NativeInternVLEncoder, NativeMiniCPMOEncoder, NativeAutoencoderKL (lib/models/*.ts wrap them). Each reads its config and inputs here and runs models/<name>.cc.
#include "models/clip.h"
#include "models/internvl.h"
#include "models/minicpm.h"
#include "models/qwen.h"
#include "models/t5.h"
#include "models/vae.h"
#include "napi/bindings.h"
#include "napi/model_wrap.h"

namespace x2i {
namespace {
// An optional tensor field of an inputs object (undefined or null: absent).
at::Tensor optTensor(const Napi::Object& o, const char* k) {
  Napi::Value x = o.Get(k);
  return x.IsUndefined() || x.IsNull() ? at::Tensor() : TensorWrap::Get(x, k);
}
// A vision transformer's config fields (InternViT, SigLIP), read the same way for every student.
template <class V>
void readVit(const Napi::Object& v, V& c, const char* n) {
  c.hidden = configInt(v, "hiddenSize", n);
  c.layers = configInt(v, "numHiddenLayers", n);
  c.heads = configInt(v, "numAttentionHeads", n);
  c.intermediate = configInt(v, "intermediateSize", n);
  c.imageSize = configInt(v, "imageSize", n);
  c.patch = configInt(v, "patchSize", n);
  c.channels = configInt(v, "numChannels", n);
  c.eps = v.Get("layerNormEps").As<Napi::Number>().DoubleValue();
  if (c.hidden % c.heads) fail("ERR_CONFIG", std::string(n) + " config: vision hidden_size must be a multiple of num_attention_heads");
}
// { hiddenStates } of the students' language models
Napi::Value hiddenToJs(Napi::Env env, const qwen::Outputs& o) {
  auto r = Napi::Object::New(env);
  r.Set("hiddenStates", TensorWrap::Wrap(env, o.hidden));
  return r;
}
}  // namespace

namespace t5 {
namespace {

Config parseConfig(const Napi::Object& o) {
  Config c;
  c.vocab = configInt(o, "vocabSize", "T5Encoder");
  c.dModel = configInt(o, "dModel", "T5Encoder");
  c.dKv = configInt(o, "dKv", "T5Encoder");
  c.dFf = configInt(o, "dFf", "T5Encoder");
  c.layers = configInt(o, "numLayers", "T5Encoder");
  c.heads = configInt(o, "numHeads", "T5Encoder");
  c.buckets = configInt(o, "relativeAttentionNumBuckets", "T5Encoder");
  c.maxDistance = configInt(o, "relativeAttentionMaxDistance", "T5Encoder");
  c.eps = o.Get("layerNormEpsilon").As<Napi::Number>().DoubleValue();
  c.gated = o.Get("gated").ToBoolean();
  c.act = o.Get("act").ToString().Utf8Value();
  if (c.act != "gelu_new" && c.act != "gelu_pytorch_tanh" && c.act != "relu" && c.act != "gelu")
    fail("ERR_CONFIG", "T5Encoder config: unsupported activation '" + c.act + "' (expected gelu_new, gelu or relu)");
  return c;
}

Inputs parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "T5Encoder.forward expects { inputIds, attentionMask? }");
  auto o = info[0].As<Napi::Object>();
  Inputs in;
  in.ids = TensorWrap::Get(o.Get("inputIds"), "inputIds");
  if (!o.Get("attentionMask").IsUndefined() && !o.Get("attentionMask").IsNull())
    in.mask = TensorWrap::Get(o.Get("attentionMask"), "attentionMask");
  return in;
}

Napi::Value toJs(Napi::Env env, Outputs& o) {
  auto r = Napi::Object::New(env);
  r.Set("lastHiddenState", TensorWrap::Wrap(env, o.last));
  r.Set("hiddenStates", TensorWrap::Wrap(env, o.hidden));
  return r;
}

}  // namespace
}  // namespace t5

namespace clip {

// What both CLIP towers' configs must satisfy: a supported activation, heads dividing the width.
void checkTower(const std::string& model, const std::string& act, int64_t hidden, int64_t heads) {
  if (act != "quick_gelu" && act != "gelu")
    fail("ERR_CONFIG", model + " config: unsupported hidden_act '" + act + "' (expected quick_gelu or gelu)");
  if (hidden % heads) fail("ERR_CONFIG", model + " config: hidden_size is not a multiple of num_attention_heads");
}

namespace {

Config parseConfig(const Napi::Object& o) {
  Config c;
  c.vocab = configInt(o, "vocabSize", "ClipTextEncoder");
  c.hidden = configInt(o, "hiddenSize", "ClipTextEncoder");
  c.intermediate = configInt(o, "intermediateSize", "ClipTextEncoder");
  c.heads = configInt(o, "numAttentionHeads", "ClipTextEncoder");
  c.layers = configInt(o, "numHiddenLayers", "ClipTextEncoder");
  c.maxPositions = configInt(o, "maxPositionEmbeddings", "ClipTextEncoder");
  c.eosTokenId = configInt(o, "eosTokenId", "ClipTextEncoder");
  c.eps = o.Get("layerNormEps").As<Napi::Number>().DoubleValue();
  c.act = o.Get("hiddenAct").ToString().Utf8Value();
  checkTower("ClipTextEncoder", c.act, c.hidden, c.heads);
  if (o.Has("projectionDim") && !o.Get("projectionDim").IsUndefined()) c.projectionDim = configInt(o, "projectionDim", "ClipTextEncoder");
  return c;
}

Inputs parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "ClipTextEncoder.forward expects { inputIds }");
  return {TensorWrap::Get(info[0].As<Napi::Object>().Get("inputIds"), "inputIds")};
}

Napi::Value toJs(Napi::Env env, Outputs& o) {
  auto r = Napi::Object::New(env);
  r.Set("lastHiddenState", TensorWrap::Wrap(env, o.last));
  r.Set("pooledOutput", TensorWrap::Wrap(env, o.pooled));
  r.Set("hiddenStates", TensorWrap::Wrap(env, o.hidden));
  if (o.embeds.defined()) r.Set("textEmbeds", TensorWrap::Wrap(env, o.embeds));
  return r;
}

}  // namespace
}  // namespace clip

// CLIP's vision tower (models/clip.cc): the EncoderSpec names over clip::loadVision / clip::forwardVision.
namespace clipvision {
using Model = clip::VisionModel;
using Outputs = clip::VisionOutputs;
struct Inputs {
  at::Tensor pixelValues;
};
std::shared_ptr<Model> load(const clip::VisionConfig& c, std::map<std::string, at::Tensor> w, const std::string& source) {
  return clip::loadVision(c, std::move(w), source);
}
Outputs forward(const Model& m, const Inputs& in) { return clip::forwardVision(m, in.pixelValues); }
namespace {

clip::VisionConfig parseConfig(const Napi::Object& o) {
  const char* n = "ClipVisionEncoder";
  clip::VisionConfig c;
  c.hidden = configInt(o, "hiddenSize", n);
  c.intermediate = configInt(o, "intermediateSize", n);
  c.heads = configInt(o, "numAttentionHeads", n);
  c.layers = configInt(o, "numHiddenLayers", n);
  c.imageSize = configInt(o, "imageSize", n);
  c.patchSize = configInt(o, "patchSize", n);
  c.channels = configInt(o, "numChannels", n);
  c.eps = o.Get("layerNormEps").As<Napi::Number>().DoubleValue();
  c.act = o.Get("hiddenAct").ToString().Utf8Value();
  if (o.Has("projectionDim") && !o.Get("projectionDim").IsUndefined()) c.projectionDim = configInt(o, "projectionDim", n);
  clip::checkTower(n, c.act, c.hidden, c.heads);
  if (c.imageSize % c.patchSize)
    fail("ERR_CONFIG", "ClipVisionEncoder config: image_size " + std::to_string(c.imageSize) + " is not a multiple of patch_size " +
                           std::to_string(c.patchSize));
  return c;
}

Inputs parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "ClipVisionEncoder.forward expects { pixelValues }");
  return {TensorWrap::Get(info[0].As<Napi::Object>().Get("pixelValues"), "pixelValues")};
}

Napi::Value toJs(Napi::Env env, Outputs& o) {
  auto r = Napi::Object::New(env);
  r.Set("lastHiddenState", TensorWrap::Wrap(env, o.last));
  r.Set("poolerOutput", TensorWrap::Wrap(env, o.pooled));
  if (o.embeds.defined()) r.Set("imageEmbeds", TensorWrap::Wrap(env, o.embeds));
  return r;
}

}  // namespace
}  // namespace clipvision

namespace qwen {
namespace {

FullConfig parseConfig(const Napi::Object& o) {
  FullConfig full;
  Config& c = full.text;
  const char* n = "QwenVLEncoder";
  c.vocab = configInt(o, "vocabSize", n);
  c.hidden = configInt(o, "hiddenSize", n);
  c.intermediate = configInt(o, "intermediateSize", n);
  c.layers = configInt(o, "numHiddenLayers", n);
  c.heads = configInt(o, "numAttentionHeads", n);
  c.kvHeads = configInt(o, "numKeyValueHeads", n);
  c.eps = o.Get("rmsNormEps").As<Napi::Number>().DoubleValue();
  c.theta = o.Get("ropeTheta").As<Napi::Number>().DoubleValue();
  auto s = o.Get("mropeSection").As<Napi::Array>();
  if (s.Length() != 3) fail("ERR_CONFIG", "QwenVLEncoder config: mrope_section must have 3 entries");
  for (uint32_t i = 0; i < 3; ++i) c.mropeSection[i] = Napi::Value(s[i]).As<Napi::Number>().Int64Value();
  if (c.hidden % c.heads || c.heads % c.kvHeads)
    fail("ERR_CONFIG", "QwenVLEncoder config: hidden_size, num_attention_heads and num_key_value_heads do not divide");
  if (2 * (c.mropeSection[0] + c.mropeSection[1] + c.mropeSection[2]) != c.hidden / c.heads)
    fail("ERR_CONFIG", "QwenVLEncoder config: 2 × sum(mrope_section) must equal the head dim " + std::to_string(c.hidden / c.heads));
  Napi::Value vv = o.Get("vision");
  if (vv.IsObject()) {
    auto v = vv.As<Napi::Object>();
    VisionConfig& vc = full.vision;
    vc.present = true;
    vc.depth = configInt(v, "depth", n);
    vc.hidden = configInt(v, "hiddenSize", n);
    vc.heads = configInt(v, "numHeads", n);
    vc.intermediate = configInt(v, "intermediateSize", n);
    vc.outHidden = configInt(v, "outHiddenSize", n);
    vc.patch = configInt(v, "patchSize", n);
    vc.merge = configInt(v, "spatialMergeSize", n);
    vc.temporalPatch = configInt(v, "temporalPatchSize", n);
    vc.windowSize = configInt(v, "windowSize", n);
    vc.inChannels = configInt(v, "inChannels", n);
    vc.tokensPerSecond = v.Get("tokensPerSecond").As<Napi::Number>().DoubleValue();
    auto fa = v.Get("fullAttBlockIndexes").As<Napi::Array>();
    for (uint32_t i = 0; i < fa.Length(); ++i) vc.fullAttBlocks.push_back(Napi::Value(fa[i]).As<Napi::Number>().Int64Value());
    vc.imageTokenId = configInt(v, "imageTokenId", n);
    vc.videoTokenId = configInt(v, "videoTokenId", n);
    vc.visionStartId = configInt(v, "visionStartTokenId", n);
    if (vc.hidden % vc.heads || (vc.hidden / vc.heads) % 4)
      fail("ERR_CONFIG", "QwenVLEncoder config: vision hidden_size / num_heads must be a multiple of 4");
  }
  return full;
}

Inputs parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "QwenVLEncoder.forward expects { inputIds, attentionMask? }");
  auto o = info[0].As<Napi::Object>();
  Inputs in;
  in.ids = TensorWrap::Get(o.Get("inputIds"), "inputIds");
  if (!o.Get("attentionMask").IsUndefined() && !o.Get("attentionMask").IsNull())
    in.mask = TensorWrap::Get(o.Get("attentionMask"), "attentionMask");
  auto opt = [&](const char* k) { return optTensor(o, k); };
  in.pixelValues = opt("pixelValues");
  in.imageGridThw = opt("imageGridThw");
  in.pixelValuesVideos = opt("pixelValuesVideos");
  in.videoGridThw = opt("videoGridThw");
  if (o.Get("secondPerGridT").IsNumber()) in.secondPerGridT = o.Get("secondPerGridT").As<Napi::Number>().DoubleValue();
  in.padRule = o.Get("padRule").IsString() ? o.Get("padRule").ToString().Utf8Value() : "x2i";
  in.capture = o.Get("capture").IsUndefined() || o.Get("capture").ToBoolean().Value();
  if (o.Get("maxNewTokens").IsNumber()) in.maxNewTokens = o.Get("maxNewTokens").As<Napi::Number>().Int64Value();
  if (in.maxNewTokens < 0 || in.maxNewTokens > 4096) fail("ERR_INVALID_ARG", "QwenVLEncoder.generate: maxNewTokens must be in [0, 4096]");
  if (o.Get("eosTokenIds").IsArray()) {
    auto a = o.Get("eosTokenIds").As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) in.eosIds.push_back(Napi::Value(a[i]).As<Napi::Number>().Int64Value());
  }
  in.positions = o.Get("positions").IsString() ? o.Get("positions").ToString().Utf8Value() : "mrope";
  if (in.positions != "mrope" && in.positions != "sequential")
    fail("ERR_INVALID_ARG", "QwenVLEncoder.forward: positions must be 'mrope' or 'sequential'");
  if (in.padRule != "x2i" && in.padRule != "mask")
    fail("ERR_INVALID_ARG", "QwenVLEncoder.forward: padRule must be 'x2i' or 'mask'");
  return in;
}

Napi::Value toJs(Napi::Env env, Outputs& o) {
  auto r = Napi::Object::New(env);
  r.Set("hiddenStates", TensorWrap::Wrap(env, o.hidden));
  if (o.answer.defined()) {
    r.Set("answerStates", TensorWrap::Wrap(env, o.answer));
    auto t = Napi::Array::New(env, o.tokens.size());
    for (size_t i = 0; i < o.tokens.size(); ++i) t.Set(uint32_t(i), double(o.tokens[i]));
    r.Set("tokens", t);
  }
  return r;
}

}  // namespace
}  // namespace qwen

namespace internvl {
namespace {

Config parseConfig(const Napi::Object& o) {
  Config c;
  const char* n = "InternVLEncoder";
  if (!o.Get("vision").IsObject() || !o.Get("llm").IsObject()) fail("ERR_CONFIG", "InternVLEncoder config: { vision, llm, ... }");
  readVit(o.Get("vision").As<Napi::Object>(), c.vision, n);
  c.llm = qwen::parseConfig(o.Get("llm").As<Napi::Object>());
  c.downsample = o.Get("downsampleRatio").As<Napi::Number>().DoubleValue();
  c.imgContextId = o.Get("imgContextTokenId").As<Napi::Number>().Int64Value();
  if (c.vision.imageSize % c.vision.patch) fail("ERR_CONFIG", "InternVLEncoder config: image_size must be a multiple of patch_size");
  return c;
}

Inputs parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "InternVLEncoder.forward expects { inputIds, attentionMask?, pixelValues? }");
  auto o = info[0].As<Napi::Object>();
  Inputs in;
  auto opt = [&](const char* k) { return optTensor(o, k); };
  in.embedsOnly = o.Get("embedsOnly").ToBoolean().Value();
  if (!in.embedsOnly) in.ids = TensorWrap::Get(o.Get("inputIds"), "inputIds");
  in.mask = opt("attentionMask");
  in.pixelValues = opt("pixelValues");
  in.capture = o.Get("capture").IsUndefined() || o.Get("capture").ToBoolean().Value();
  return in;
}

Napi::Value toJs(Napi::Env env, Outputs& o) { return hiddenToJs(env, o); }

}  // namespace
}  // namespace internvl

namespace minicpm {
namespace {

Config parseConfig(const Napi::Object& o) {
  Config c;
  const char* n = "MiniCPMOEncoder";
  if (!o.Get("llm").IsObject()) fail("ERR_CONFIG", "MiniCPMOEncoder config: { llm, vision?, audio?, ... }");
  c.llm = qwen::parseConfig(o.Get("llm").As<Napi::Object>());
  c.vision = o.Get("vision").IsObject();
  if (c.vision) {
    readVit(o.Get("vision").As<Napi::Object>(), c.vcfg, n);
    c.queryNum = configInt(o, "queryNum", n);
  }
  c.audio = o.Get("audio").IsObject();
  if (c.audio) {
    auto a = o.Get("audio").As<Napi::Object>();
    c.acfg.dModel = configInt(a, "dModel", n);
    c.acfg.layers = configInt(a, "encoderLayers", n);
    c.acfg.heads = configInt(a, "encoderAttentionHeads", n);
    c.acfg.ffn = configInt(a, "encoderFfnDim", n);
    c.acfg.mels = configInt(a, "numMelBins", n);
    c.acfg.maxPositions = configInt(a, "maxSourcePositions", n);
    c.poolStep = configInt(o, "audioPoolStep", n);
    c.chunkLength = o.Get("audioChunkLength").As<Napi::Number>().DoubleValue();
    if (c.acfg.dModel % c.acfg.heads) fail("ERR_CONFIG", "MiniCPMOEncoder config: d_model must be a multiple of encoder_attention_heads");
  }
  return c;
}

Inputs parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "MiniCPMOEncoder.forward expects { inputIds, ... }");
  auto o = info[0].As<Napi::Object>();
  Inputs in;
  auto opt = [&](const char* k) { return optTensor(o, k); };
  in.only = o.Get("only").IsString() ? o.Get("only").ToString().Utf8Value() : "";
  if (in.only != "" && in.only != "image" && in.only != "audio") fail("ERR_INVALID_ARG", "MiniCPMOEncoder: only must be 'image' or 'audio'");
  if (in.only.empty()) in.ids = TensorWrap::Get(o.Get("inputIds"), "inputIds");
  in.mask = opt("attentionMask");
  if (o.Get("pixelValues").IsArray()) {
    auto a = o.Get("pixelValues").As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) in.pixelValues.push_back(TensorWrap::Get(a.Get(i), "pixelValues[i]"));
  }
  in.tgtSizes = opt("tgtSizes");
  in.imageBound = opt("imageBound");
  in.audioFeatures = opt("audioFeatures");
  in.audioFeatureLens = opt("audioFeatureLens");
  in.audioBounds = opt("audioBounds");
  in.capture = o.Get("capture").IsUndefined() || o.Get("capture").ToBoolean().Value();
  return in;
}

Napi::Value toJs(Napi::Env env, Outputs& o) { return hiddenToJs(env, o); }

}  // namespace
}  // namespace minicpm

namespace vae {
namespace {

Config parseConfig(const Napi::Object& o) {
  Config c;
  const char* n = "AutoencoderKL";
  c.inChannels = configInt(o, "inChannels", n);
  c.outChannels = configInt(o, "outChannels", n);
  c.latentChannels = configInt(o, "latentChannels", n);
  c.groups = configInt(o, "normNumGroups", n);
  c.layersPerBlock = configInt(o, "layersPerBlock", n);
  c.midAttention = o.Get("midBlockAddAttention").ToBoolean();
  auto b = o.Get("blockOutChannels").As<Napi::Array>();
  for (uint32_t i = 0; i < b.Length(); ++i) c.blockOut.push_back(Napi::Value(b[i]).As<Napi::Number>().Int64Value());
  if (c.blockOut.empty()) fail("ERR_CONFIG", "AutoencoderKL config: block_out_channels is empty");
  for (auto ch : c.blockOut)
    if (ch % c.groups) fail("ERR_CONFIG", "AutoencoderKL config: block_out_channels must be multiples of norm_num_groups");
  return c;
}

Inputs parseInputs(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[1].IsString()) fail("ERR_INVALID_ARG", "AutoencoderKL: forward(x, 'encode' | 'decode')");
  const std::string mode = info[1].As<Napi::String>().Utf8Value();
  if (mode != "encode" && mode != "decode") fail("ERR_INVALID_ARG", "AutoencoderKL: mode must be 'encode' or 'decode'");
  return {TensorWrap::Get(info[0], mode == "encode" ? "image" : "latents"), mode == "encode"};
}

Napi::Value toJs(Napi::Env env, Outputs& o) { return TensorWrap::Wrap(env, o.y); }

}  // namespace
}  // namespace vae

namespace {

// The encoders' one shape: load(config, weights, source), random(config, device, dtype, seed), forward(inputs...),
// each through S's parseConfig, make (the model's load), parseInputs, run (its forward) and toJs.
template <class S, class M>
struct EncoderSpec : ModelSpec<M> {
  static constexpr const char* createdBy = "fromPretrained";
  using W = ModelWrap<S>;

  // load(config, weights, source) → Promise<handle>
  static Napi::Value load(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 3 || !info[0].IsObject()) fail("ERR_INVALID_ARG", std::string(S::jsName) + ".load(config, weights, source)");
      auto cfg = S::parseConfig(info[0].template As<Napi::Object>());
      auto weights = std::make_shared<std::map<std::string, at::Tensor>>(weightsFromJs(info[1]));
      const std::string source = argString(info, 2, "source");
      return W::build(info.Env(), [=] { return S::make(cfg, std::move(*weights), source); });
    });
  }

  // random(config, device, dtype, seed) → Promise<handle>: the model of a config with random weights (RandomInit)
  static Napi::Value random(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 4 || !info[0].IsObject() || !info[3].IsNumber())
        fail("ERR_INVALID_ARG", std::string(S::jsName) + ".random(config, device, dtype, seed)");
      auto cfg = S::parseConfig(info[0].template As<Napi::Object>());
      const c10::Device device = parseDevice(argString(info, 1, "device"));
      const at::ScalarType dtype = parseDType(argString(info, 2, "dtype"));
      const uint64_t seed = uint64_t(info[3].template As<Napi::Number>().Int64Value());
      return W::build(info.Env(), [=] {
        c10::InferenceMode guard;
        RandomInit init(device, dtype, seed);
        auto m = S::make(cfg, {}, "random weights, seed " + std::to_string(seed));
        syncDevice(device);
        return m;
      });
    });
  }

  static Napi::Value forward(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto m = self.model();
      auto in = S::parseInputs(info);
      auto out = std::make_shared<decltype(S::run(*m, in))>();
      return queue(info.Env(), [=] {
        c10::InferenceMode guard;
        *out = S::run(*m, in);
      }, [out](Napi::Env env) -> Napi::Value { return S::toJs(env, *out); });
    });
  }

  template <class Self>
  static std::vector<typename Self::PropertyDescriptor> methods() {
    return {Self::template StaticMethod<&load>("load"), Self::template StaticMethod<&random>("random"),
            Self::template method<&forward>("forward")};
  }
};

#define X2I_ENCODER_SPEC(Name, ns, js)                                                         \
  struct Name : EncoderSpec<Name, ns::Model> {                                                 \
    static constexpr const char* jsName = js;                                                  \
    static constexpr const char* label = js;                                                   \
    static auto parseConfig(const Napi::Object& o) { return ns::parseConfig(o); }              \
    static auto parseInputs(const Napi::CallbackInfo& info) { return ns::parseInputs(info); }  \
    template <class C>                                                                         \
    static auto make(const C& c, std::map<std::string, at::Tensor> w, const std::string& s) {  \
      return ns::load(c, std::move(w), s);                                                     \
    }                                                                                          \
    static auto run(const ns::Model& m, const ns::Inputs& in) { return ns::forward(m, in); }   \
    static Napi::Value toJs(Napi::Env env, ns::Outputs& o) { return ns::toJs(env, o); }        \
  }
X2I_ENCODER_SPEC(T5Spec, t5, "NativeT5Encoder");
X2I_ENCODER_SPEC(ClipSpec, clip, "NativeClipTextEncoder");
X2I_ENCODER_SPEC(ClipVisionSpec, clipvision, "NativeClipVisionEncoder");
X2I_ENCODER_SPEC(QwenSpec, qwen, "NativeQwenVLEncoder");
X2I_ENCODER_SPEC(VaeSpec, vae, "NativeAutoencoderKL");
X2I_ENCODER_SPEC(InternVLSpec, internvl, "NativeInternVLEncoder");
X2I_ENCODER_SPEC(MiniCPMSpec, minicpm, "NativeMiniCPMOEncoder");
#undef X2I_ENCODER_SPEC

}  // namespace

Napi::Function initT5(Napi::Env env) { return ModelWrap<T5Spec>::Init(env); }
Napi::Function initClip(Napi::Env env) { return ModelWrap<ClipSpec>::Init(env); }
Napi::Function initClipVision(Napi::Env env) { return ModelWrap<ClipVisionSpec>::Init(env); }
Napi::Function initQwen(Napi::Env env) { return ModelWrap<QwenSpec>::Init(env); }
Napi::Function initVae(Napi::Env env) { return ModelWrap<VaeSpec>::Init(env); }
Napi::Function initInternVL(Napi::Env env) { return ModelWrap<InternVLSpec>::Init(env); }
Napi::Function initMiniCPM(Napi::Env env) { return ModelWrap<MiniCPMSpec>::Init(env); }

// qwenRopeIndex(inputIds, attentionMask?, imageGridThw?, videoGridThw?, { imageTokenId, videoTokenId, merge,
// tokensPerSecond, secondPerGridT }) → the [3, B, S] M-RoPE position ids (synchronous: small integer work).
Napi::Value QwenRopeIndex(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto opt = [&](size_t i) { return info.Length() > i && info[i].IsObject() ? TensorWrap::Get(info[i], "tensor") : at::Tensor(); };
    at::Tensor ids = TensorWrap::Get(info[0], "inputIds"), mask = opt(1), ig = opt(2), vg = opt(3);
    if (ids.dim() != 2) fail("ERR_SHAPE_MISMATCH", "qwenRopeIndex: inputIds must be [B, S]");
    auto o = info[4].As<Napi::Object>();
    qwen::RopeIndexOptions r;
    r.imageTokenId = configInt(o, "imageTokenId", "qwenRopeIndex");
    r.videoTokenId = configInt(o, "videoTokenId", "qwenRopeIndex");
    r.merge = configInt(o, "merge", "qwenRopeIndex");
    r.tokensPerSecond = o.Get("tokensPerSecond").As<Napi::Number>().DoubleValue();
    r.secondPerGridT = numberOr(o, "secondPerGridT", 1.0);
    if (!mask.defined()) mask = at::ones_like(ids, at::kLong);
    return TensorWrap::Wrap(info.Env(), qwen::ropeIndex(ids.to(at::kLong), mask.to(at::kLong), ig, vg, r));
  });
}

}  // namespace x2i
