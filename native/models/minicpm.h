// MiniCPM-o 2.6 as an X2I student (see minicpm.cc): the SigLIP NaViT vision encoder + perceiver resampler, the
// Whisper audio encoder + projection + pooling, and the Qwen2.5 language model (models/qwen.cc, 1-D RoPE) with
// all-layer capture.
#pragma once
#include "models/qwen.h"

namespace x2i::minicpm {

struct VisionConfig {  // vision_config (siglip_vision_model)
  int64_t hidden = 0, layers = 0, heads = 0, intermediate = 0, imageSize = 980, patch = 14, channels = 3;
  double eps = 1e-6;
};
struct AudioConfig {  // audio_config (whisper)
  int64_t dModel = 0, layers = 0, heads = 0, ffn = 0, mels = 80, maxPositions = 1500;
};
struct Config {
  bool vision = true, audio = true;
  VisionConfig vcfg;
  AudioConfig acfg;
  qwen::FullConfig llm;  // the language model only, mrope_section {hd/2, 0, 0}
  int64_t queryNum = 64, poolStep = 2;
  double chunkLength = 1.0;  // seconds of audio per attention chunk (50 frames per second after the conv)
};
struct SiglipLayer {
  at::Tensor ln1W, ln1B, qW, qB, kW, kB, vW, vB, oW, oB, ln2W, ln2B, fc1W, fc1B, fc2W, fc2B;
};
struct WhisperLayer {
  at::Tensor lnW, lnB, qW, qB, kW, vW, vB, oW, oB, ln2W, ln2B, fc1W, fc1B, fc2W, fc2B;
};
struct Model {
  Config cfg;
  // vpm
  at::Tensor patchW, patchB, posEmbed, postW, postB;
  std::vector<SiglipLayer> vlayers;
  // resampler
  at::Tensor query, kvProj, inProjW, inProjB, outW, outB, lnQW, lnQB, lnKvW, lnKvB, lnPostW, lnPostB, proj;
  // apm + projection
  at::Tensor conv1W, conv1B, conv2W, conv2B, audioPos, audioLnW, audioLnB, proj1W, proj1B, proj2W, proj2B;
  std::vector<WhisperLayer> alayers;
  std::shared_ptr<qwen::Model> llm;
};
struct Inputs {
  at::Tensor ids, mask;
  std::vector<at::Tensor> pixelValues;  // one [3, patch, n·patch] strip per image slice (the processor's layout)
  at::Tensor tgtSizes, imageBound;      // [n, 2] patch grid per slice; [n, 2] token spans the slices' queries fill
  at::Tensor audioFeatures, audioFeatureLens, audioBounds;  // [n, mels, T] log-mel, [n] frames, [m, 2] token spans
  bool capture = true;
  std::string only;  // "" (the language model), "image" or "audio": only that tower's features
};
using Outputs = qwen::Outputs;

// The released names: llm.*, vpm.*, resampler.*, apm.*, audio_projection_layer.* (tts.* are not read).
std::shared_ptr<Model> load(const Config& c, std::map<std::string, at::Tensor> weights, const std::string& source);
// The slices' features [n, queryNum, H] (vpm, then the resampler with the slices' 2-D sin-cos positions).
at::Tensor imageEmbeds(const Model& m, const std::vector<at::Tensor>& pixelValues, const at::Tensor& tgtSizes);
// The audios' features, concatenated in order [Σ N_i, H] (Whisper encoder with MiniCPM-o's chunked attention mask,
// projection, average pooling; N_i = ((F_i − 1)/2 + 1 − poolStep)/poolStep + 1 tokens per audio).
at::Tensor audioEmbeds(const Model& m, const at::Tensor& features, const at::Tensor& lens);
// The embeddings with the image and audio features written into their spans, one pass of the language model with
// every layer's state kept ([B, L+1, S, H]); positions cumsum(mask) − 1, pads at 1 (0..S−1 without padding).
Outputs forward(const Model& m, const Inputs& in);

}  // namespace x2i::minicpm
