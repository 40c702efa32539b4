// Whisper's input features, as MiniCPM-o's processor computes them (transformers' WhisperFeatureExtractor, torch
// path, float32), and the resampling in front of them.
#pragma once
#include <torch/torch.h>

namespace x2i::whisper {

// WhisperFeatureExtractor's settings (preprocessor_config.json: feature_size, sampling_rate, n_fft, hop_length,
// chunk_length); the defaults are Whisper's.
struct FeatureConfig {
  int64_t mels = 80, samplingRate = 16000, nFft = 400, hop = 160, chunkSeconds = 30;
  double maxHz = 8000;  // the filters' top edge (the extractor fixes it at 8 kHz)
};

// The mel filter bank [nFft/2 + 1, mels] (Slaney mel scale and area normalisation, 0 Hz to maxHz; the bins'
// frequencies 0 to samplingRate/2),
// computed in float64, returned in float32.
at::Tensor melFilters(const FeatureConfig& c);

// waveform [n] (any float dtype, at c.samplingRate) → log-mel [mels, F], F = Σ ceil(n_i / hop) over the clip's
// pieces of at most chunkSeconds (MiniCPM-o's processor cuts longer clips there). Each piece: zero-padded to
// chunkSeconds, centred STFT (reflect padding, periodic Hann window), power, mel, log10 of at least 1e-10, floored
// at the padded piece's maximum − 8, (x + 4) / 4, then its first ceil(n_i / hop) frames. Float32, on the
// waveform's device.
at::Tensor logMel(const at::Tensor& waveform, const FeatureConfig& c);

// waveform [n] from rate `from` to rate `to` (Hz): band-limited sinc interpolation with a Hann window, 6 zero
// crossings, roll-off 0.99 (torchaudio.functional.resample's defaults), as one strided convolution per output
// phase; ceil(n · to / from) samples. The same tensor when the rates are equal.
at::Tensor resample(const at::Tensor& waveform, int64_t from, int64_t to);

}  // namespace x2i::whisper
