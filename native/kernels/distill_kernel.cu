// The X2I distillation loss on the GPU: the one-pass row kernel of distill_rows.cuh behind an ATen
// interface (dtype dispatch, alignment, the persistent grid, the fixed-order finalisation).
#include "kernels/distill_rows.cuh"
#include "kernels/kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>


namespace x2i::kernels {
namespace {

// Rows of x viewed as [rows, D] with unit channel stride and one row stride (a narrow of a wider tensor, as
// the gradient arriving at a single-stream tap is), or -1 when x is not such a view.
int64_t rowStride(const at::Tensor& x) {
  const int64_t n = x.dim(), D = x.size(n - 1);
  if (x.stride(n - 1) != 1 && D > 1) return -1;
  int64_t rs = -1, expect = 0;
  for (int64_t i = n - 2; i >= 0; --i) {
    if (x.size(i) == 1) continue;
    if (rs < 0) {
      rs = x.stride(i), expect = rs * x.size(i);
      continue;
    }
    if (x.stride(i) != expect) return -1;
    expect *= x.size(i);
  }
  if (rs < 0) return D;
  return rs >= D ? rs : -1;
}

template <typename T>
void run(const at::Tensor& s, const at::Tensor& t, const at::Tensor& in, at::Tensor& grad, at::Tensor& term,
         int div, double tau, double eps, double gradScale, double termScale) {
  const int D = int(s.size(-1));
  const int64_t rows = s.numel() / D;
  const int64_t ss = rowStride(s), ts = rowStride(t), is = in.defined() ? rowStride(in) : D;
  auto aligned16 = [](const at::Tensor& x, int64_t stride) {
    return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && (stride * x.element_size()) % 16 == 0;
  };
  const bool aligned = aligned16(s, ss) && aligned16(t, ts) && aligned16(grad, D) && (!in.defined() || aligned16(in, is));
  const rows::Choice c = rows::choose<T>(D, aligned, div, in.defined());
  TORCH_CHECK(c.fn, "distillRows: no kernel for D = ", D);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int grid = rows::gridFor(c, rows, sms);
  at::Tensor partials = at::empty({grid}, s.options().dtype(at::kFloat));
  rows::Params p{s.data_ptr(), t.data_ptr(), in.defined() ? in.data_ptr() : nullptr, grad.data_ptr(),
                 partials.data_ptr<float>(), rows, D, ss, ts, is, aligned, float(1.0 / tau), float(eps), float(gradScale)};
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
  // row-strided views (the gradient at a single-stream tap is a narrow of a wider one) are read in place
  auto rowsOf = [](const at::Tensor& x) { return rowStride(x) >= 0 ? x : x.contiguous(); };
  const at::Tensor s = rowsOf(student), t = rowsOf(teacher);
  const at::Tensor in = incoming.defined() ? rowsOf(incoming.to(s.scalar_type())) : at::Tensor();
  at::Tensor grad = at::empty(s.sizes(), s.options());  // packed rows
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
