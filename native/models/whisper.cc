#include "models/whisper.h"
#include "core/dtype.h"
#include "core/errors.h"

#include <cmath>
#include <numeric>

namespace x2i::whisper {
namespace {

// Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4)
double hzToMel(double f) {
  const double minLogHz = 1000, minLogMel = 15, logStep = 27 / std::log(6.4);
  return f < minLogHz ? 3 * f / 200 : minLogMel + std::log(f / minLogHz) * logStep;
}
double melToHz(double m) {
  const double minLogHz = 1000, minLogMel = 15, logStep = std::log(6.4) / 27;
  return m < minLogMel ? 200 * m / 3 : minLogHz * std::exp(logStep * (m - minLogMel));
}

void check(const FeatureConfig& c) {
  if (c.mels < 1 || c.samplingRate < 1 || c.nFft < 2 || c.hop < 1 || c.chunkSeconds < 1 || !(c.maxHz > 0))
    fail("ERR_CONFIG", "audio features: mels, sampling rate, n_fft, hop length and chunk length must be positive (n_fft ≥ 2)");
}

// One piece of at most chunkSeconds: [mels, ceil(n / hop)]
at::Tensor pieceLogMel(const at::Tensor& x, const FeatureConfig& c, const at::Tensor& filters, const at::Tensor& window) {
  const int64_t padded = c.chunkSeconds * c.samplingRate, n = x.size(0);
  const at::Tensor w = at::constant_pad_nd(x, {0, padded - n});
  const at::Tensor spec = at::stft(w, c.nFft, c.hop, c.nFft, window, /*center=*/true, "reflect", /*normalized=*/false,
                                   /*onesided=*/true, /*return_complex=*/true);  // [nFft/2+1, frames + 1]
  const at::Tensor power = spec.narrow(1, 0, spec.size(1) - 1).abs().square();
  at::Tensor logSpec = at::matmul(filters.t(), power).clamp_min(1e-10).log10();
  logSpec = at::maximum(logSpec, logSpec.max() - 8.0);
  const int64_t frames = (n + c.hop - 1) / c.hop;
  return ((logSpec + 4.0) / 4.0).narrow(1, 0, std::min(frames, logSpec.size(1)));
}

}  // namespace

at::Tensor melFilters(const FeatureConfig& c) {
  check(c);
  const int64_t bins = c.nFft / 2 + 1, M = c.mels;
  const double top = double(c.samplingRate / 2);
  std::vector<double> edges(size_t(M + 2));  // M + 2 filter edges, equally spaced in mels
  const double m0 = hzToMel(0), m1 = hzToMel(c.maxHz);
  for (int64_t i = 0; i < M + 2; ++i) edges[size_t(i)] = melToHz(m0 + (m1 - m0) * double(i) / double(M + 1));
  at::Tensor f = at::zeros({bins, M}, at::kDouble);
  auto a = f.accessor<double, 2>();
  for (int64_t k = 0; k < bins; ++k) {
    const double hz = top * double(k) / double(bins - 1);
    for (int64_t m = 0; m < M; ++m) {
      const double lo = edges[size_t(m)], mid = edges[size_t(m + 1)], hi = edges[size_t(m + 2)];
      const double down = (hz - lo) / (mid - lo), up = (hi - hz) / (hi - mid);
      a[k][m] = std::max(0.0, std::min(down, up)) * 2.0 / (hi - lo);  // triangle, area-normalised (Slaney)
    }
  }
  return f.to(at::kFloat);
}

at::Tensor logMel(const at::Tensor& waveform, const FeatureConfig& c) {
  check(c);
  if (!waveform.defined() || waveform.dim() != 1 || waveform.numel() == 0 || !at::isFloatingType(waveform.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "audio features: the waveform must be a non-empty 1-D float tensor [samples], found " +
                                   (waveform.defined() ? dtypeName(waveform.scalar_type()) + " " + shapeString(waveform.sizes())
                                                       : std::string("(none)")));
  const at::Tensor x = waveform.to(at::kFloat).contiguous();
  if (!at::isfinite(x).all().item<bool>()) fail("ERR_INVALID_ARG", "audio features: the waveform holds a non-finite sample");
  const at::Tensor filters = melFilters(c).to(x.device());
  const at::Tensor window = at::hann_window(c.nFft, /*periodic=*/true, x.options());
  const int64_t piece = c.chunkSeconds * c.samplingRate;
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < x.size(0); s += piece)
    parts.push_back(pieceLogMel(x.narrow(0, s, std::min(piece, x.size(0) - s)), c, filters, window));
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

at::Tensor resample(const at::Tensor& waveform, int64_t from, int64_t to) {
  if (from < 1 || to < 1) fail("ERR_INVALID_ARG", "resample: rates must be positive, found " + std::to_string(from) + " → " + std::to_string(to));
  if (!waveform.defined() || waveform.dim() != 1 || !at::isFloatingType(waveform.scalar_type()))
    fail("ERR_SHAPE_MISMATCH", "resample: the waveform must be a 1-D float tensor [samples], found " +
                                   (waveform.defined() ? shapeString(waveform.sizes()) : std::string("(none)")));
  if (from == to || waveform.numel() == 0) return waveform;
  const int64_t g = std::gcd(from, to), orig = from / g, target = to / g;
  // sinc kernels, one per output phase j: taps at (i − width)/orig − j/target (in input periods of the lower rate)
  const double rolloff = 0.99, zeros = 6;
  const double base = std::min(orig, target) * rolloff;
  const int64_t width = int64_t(std::ceil(zeros * double(orig) / base));
  at::Tensor idx = at::arange(-width, width + orig, at::kDouble).view({1, -1}) / double(orig);
  at::Tensor t = (-at::arange(target, at::kDouble).view({-1, 1}) / double(target) + idx) * base;
  t = t.clamp(-zeros, zeros);
  const at::Tensor window = at::cos(t * M_PI / zeros / 2).square();
  t = t * M_PI;
  const at::Tensor kernel = (at::where(t == 0, at::ones_like(t), at::sin(t) / t) * window * (base / double(orig)))
                                .to(waveform.scalar_type() == at::kDouble ? at::kDouble : at::kFloat)
                                .to(waveform.device())
                                .unsqueeze(1);  // [target, 1, K]
  const int64_t n = waveform.size(0);
  at::Tensor x = at::constant_pad_nd(waveform.to(kernel.scalar_type()).view({1, 1, n}), {width, width + orig});
  at::Tensor y = at::conv1d(x, kernel, {}, orig).squeeze(0).t().reshape({-1});  // phases interleaved
  const int64_t outLen = (target * n + orig - 1) / orig;
  return y.narrow(0, 0, std::min(outLen, y.size(0))).contiguous();
}

}  // namespace x2i::whisper
