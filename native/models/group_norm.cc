#include "models/group_norm.h"
#include "core/dtype.h"
#include "core/errors.h"

namespace x2i {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Chunks per row: enough rows in all (≥ 4096) for every SM, chunks of at least 2048 elements, a power of two that
// divides the row.
int64_t splits(int64_t rows, int64_t len) {
  int64_t s = 1;
  while (rows * s < 4096 && len % (2 * s) == 0 && len / (2 * s) >= 2048) s *= 2;
  return s;
}

struct GroupNormFn : torch::autograd::Function<GroupNormFn> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor w, at::Tensor b, int64_t groups, double eps) {
    const int64_t N = x.size(0), C = x.size(1), HxW = x.numel() / std::max<int64_t>(N * C, 1);
    const int64_t R = N * groups, L = C / groups * HxW, S = splits(R, L);
    const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    x = x.contiguous();
    // [R, S] chunk statistics → [R]: μ = mean of the chunk means, σ² = mean of (chunk variance + (chunk mean − μ)²)
    auto [cv, cm] = at::var_mean(x.view({R, S, L / S}).to(acc), {2}, /*correction=*/0, /*keepdim=*/false);
    const at::Tensor mean = cm.mean(1), rstd = ((cv + (cm - mean.unsqueeze(1)).square()).mean(1) + eps).rsqrt();
    // y = x · a + s per (sample, channel): a = rstd · w, s = b − μ · a, computed in acc, rounded once on store
    const at::Tensor a = rstd.view({N, groups, 1}).expand({N, groups, C / groups}).reshape({N, C}) * w.to(acc);
    const at::Tensor s = b.to(acc) - mean.view({N, groups, 1}).expand({N, groups, C / groups}).reshape({N, C}) * a;
    at::Tensor y = at::empty_like(x), y3 = y.view({N, C, HxW});
    at::addcmul_out(y3, s.unsqueeze(-1), x.view({N, C, HxW}), a.unsqueeze(-1));
    // LibTorch's backward reads the statistics and γ in the input's dtype (as its own forward leaves them)
    const at::ScalarType t = x.scalar_type();
    ctx->save_for_backward({x, mean.view({N, groups}).to(t), rstd.view({N, groups}).to(t), w.to(t)});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["wType"] = int64_t(w.scalar_type());
    ctx->saved_data["bType"] = int64_t(b.scalar_type());
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    auto s = ctx->get_saved_variables();
    const at::Tensor& x = s[0];
    const int64_t N = x.size(0), C = x.size(1), HxW = x.numel() / std::max<int64_t>(N * C, 1);
    auto [dx, dw, db] = at::native_group_norm_backward(
        g[0].to(x.scalar_type()).contiguous(), x, s[1], s[2], s[3], N, C, HxW, ctx->saved_data["groups"].toInt(),
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)});
    if (dw.defined()) dw = dw.to(at::ScalarType(ctx->saved_data["wType"].toInt()));
    if (db.defined()) db = db.to(at::ScalarType(ctx->saved_data["bType"].toInt()));
    return {dx, dw, db, at::Tensor(), at::Tensor()};
  }
};
}  // namespace

at::Tensor groupNorm(const at::Tensor& x, int64_t groups, const at::Tensor& w, const at::Tensor& b, double eps) {
  if (!x.defined() || x.dim() < 2 || groups <= 0 || x.size(1) % groups != 0)
    fail("ERR_SHAPE_MISMATCH", "groupNorm: input " + (x.defined() ? shapeString(x.sizes()) : std::string("(none)")) +
                                   ", expected [N, C, *] with C a multiple of " + std::to_string(groups) + " groups");
  const int64_t C = x.size(1);
  if (!w.defined() || !b.defined() || w.numel() != C || b.numel() != C)
    fail("ERR_SHAPE_MISMATCH", "groupNorm: weight and bias must have " + std::to_string(C) + " elements, found " +
                                   (w.defined() ? shapeString(w.sizes()) : std::string("(none)")) + " and " +
                                   (b.defined() ? shapeString(b.sizes()) : std::string("(none)")));
  if (x.numel() == 0) return at::group_norm(x, groups, w, b, eps);
  return GroupNormFn::apply(x, w.reshape({C}), b.reshape({C}), groups, eps);
}

}  // namespace x2i
