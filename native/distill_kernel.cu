// The X2I distillation loss on the GPU: the one-pass row kernel of distill_rows.cuh behind an ATen
// interface (dtype dispatch, alignment, the persistent grid, the fixed-order finalisation).
#include "distill_rows.cuh"
#include "kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>


namespace x2i::kernels {
namespace {

template <typename T>
void run(const at::Tensor& s, const at::Tensor& t, const at::Tensor& in, at::Tensor& grad, at::Tensor& term,
         int div, double tau, double eps, double gradScale, double termScale) {
  const int D = int(s.size(-1));
  const int64_t rows = s.numel() / D;
  auto aligned16 = [](const at::Tensor& x) { return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0; };
  const bool aligned = (D * s.element_size()) % 16 == 0 && aligned16(s) && aligned16(t) && aligned16(grad) &&
                       (!in.defined() || aligned16(in));
  const rows::Choice c = rows::choose<T>(D, aligned, div);
  TORCH_CHECK(c.fn, "distillRows: no kernel for D = ", D);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int grid = rows::gridFor(c, rows, sms);
  at::Tensor partials = at::empty({grid}, s.options().dtype(at::kFloat));
  rows::Params p{s.data_ptr(), t.data_ptr(), in.defined() ? in.data_ptr() : nullptr, grad.data_ptr(),
                 partials.data_ptr<float>(), rows, D, aligned, float(1.0 / tau), float(eps), float(gradScale)};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  c.fn<<<grid, c.threads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // finalisation: one block sums the partials in a fixed order (and rewrites the tap where the term is not finite)
  rows::distillFinalize<T><<<1, 1024, 0, stream>>>(partials.data_ptr<float>(), grid, float(termScale), term.data_ptr<float>(),
                                                   static_cast<T*>(grad.data_ptr()),
                                                   in.defined() ? static_cast<const T*>(in.data_ptr()) : nullptr, s.numel());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool distillRowsSupported(int64_t D) { return D >= 2 && D <= rows::kMaxD; }

std::pair<at::Tensor, at::Tensor> distillRows(const at::Tensor& student, const at::Tensor& teacher,
                                              const at::Tensor& incoming, int divergence, double temperature,
                                              double eps, double gradScale, double termScale) {
  TORCH_CHECK(student.is_cuda() && teacher.is_cuda() && student.sizes() == teacher.sizes(), "distillRows: bad inputs");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "distillRows: dtypes differ");
  TORCH_CHECK(!incoming.defined() || incoming.sizes() == student.sizes(), "distillRows: incoming gradient shape");
  const int64_t D = student.size(-1);
  TORCH_CHECK(distillRowsSupported(D), "distillRows: D out of range");
  c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor in = incoming.defined() ? incoming.to(s.scalar_type()).contiguous() : at::Tensor();
  at::Tensor grad = at::empty_like(s, at::MemoryFormat::Contiguous);
  at::Tensor term = at::empty({}, s.options().dtype(at::kFloat));
  if (s.numel() == 0) {
    term.zero_();
    in.defined() ? grad.copy_(in) : grad.zero_();
    return {term, grad};
  }
  switch (s.scalar_type()) {
    case at::kFloat: run<float>(s, t, in, grad, term, divergence, temperature, eps, gradScale, termScale); break;
    case at::kBFloat16: run<__nv_bfloat16>(s, t, in, grad, term, divergence, temperature, eps, gradScale, termScale); break;
    case at::kHalf: run<__half>(s, t, in, grad, term, divergence, temperature, eps, gradScale, termScale); break;
    default: TORCH_CHECK(false, "distillRows: float32, bfloat16 or float16 expected, got ", s.scalar_type());
  }
  return {term, grad};
}

}  // namespace x2i::kernels
