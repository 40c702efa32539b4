#include "sample/latents.h"

namespace x2i::sample {

at::Tensor packLatents(const at::Tensor& z) {
  if (z.dim() != 4 || z.size(2) % 2 || z.size(3) % 2)
    fail("ERR_SHAPE_MISMATCH", "packLatents: expected [B, C, h, w] with even h and w");
  const int64_t B = z.size(0), C = z.size(1), h = z.size(2), w = z.size(3);
  return z.view({B, C, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({B, (h / 2) * (w / 2), C * 4});
}

at::Tensor unpackLatents(const at::Tensor& x, int64_t h, int64_t w, double scale, double shift) {
  if (x.dim() != 3 || h % 2 || w % 2 || x.size(1) != (h / 2) * (w / 2) || x.size(2) % 4)
    fail("ERR_SHAPE_MISMATCH", "unpackLatents: expected [B, (h/2)(w/2), 4C] for even h, w");
  const int64_t B = x.size(0), C = x.size(2) / 4;
  return x.view({B, h / 2, w / 2, C, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({B, C, h, w}) / scale + shift;
}

at::Tensor toImage(const at::Tensor& x) { return (x.to(at::kFloat) / 2 + 0.5).clamp(0, 1); }

at::Tensor imageToUint8(const at::Tensor& x) {
  if (x.dim() != 4 || x.size(1) != 3) fail("ERR_SHAPE_MISMATCH", "images must be [B, 3, H, W], found " + std::to_string(x.dim()) + "-D");
  return (x.to(at::kCPU, at::kFloat) * 255).round().clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
}

at::Tensor encodeLatents(const at::Tensor& z, double scale, double shift) {
  if (z.dim() != 4) fail("ERR_SHAPE_MISMATCH", "encodeLatents: expected [B, C, h, w], found " + std::to_string(z.dim()) + "-D");
  return packLatents((z.to(at::kFloat) - shift) * scale);
}

at::Tensor noiseLatents(const at::Tensor& x0, const at::Tensor& noise, double sigma) {
  if (x0.sizes() != noise.sizes()) fail("ERR_SHAPE_MISMATCH", "noiseLatents: x0 " + shapeString(x0.sizes()) + " and noise " + shapeString(noise.sizes()) + " differ in shape");
  if (!(sigma >= 0 && sigma <= 1)) fail("ERR_INVALID_ARG", "noiseLatents: sigma must be in [0, 1]");
  const at::Tensor n = noise.to(at::kFloat), x = x0.to(noise.device(), at::kFloat);
  return (n * sigma + x * (1 - sigma)).to(noise.scalar_type());
}

at::Tensor blendLatents(const at::Tensor& x, const at::Tensor& known, const at::Tensor& mask) {
  if (x.sizes() != known.sizes() || x.sizes() != mask.sizes())
    fail("ERR_SHAPE_MISMATCH", "blendLatents: x " + shapeString(x.sizes()) + ", known " + shapeString(known.sizes()) + " and mask " +
         shapeString(mask.sizes()) + " differ in shape");
  const at::Tensor m = mask.to(x.device(), at::kFloat);
  return ((1 - m) * known.to(x.device(), at::kFloat) + m * x.to(at::kFloat)).to(x.scalar_type());
}

}  // namespace x2i::sample
