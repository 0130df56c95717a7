#include "server/step/step_pipeline.h"

#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/step/grad_norm.h"

namespace sherd {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

absl::Status ValidateStepArgs(const StepArgs& a) {
  if (!std::isfinite(a.lr) || a.lr < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("learning rate must be finite and >= 0, got ", a.lr));
  }
  if (!std::isfinite(a.grad_scale) || a.grad_scale <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad_scale must be finite and > 0, got ", a.grad_scale));
  }
  if (!std::isfinite(a.max_grad_norm) || a.max_grad_norm < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_grad_norm must be finite and >= 0, got ", a.max_grad_norm));
  }
  return absl::OkStatus();
}

absl::StatusOr<StepOutcome> RunStep(ModelState& model, Collective& collective,
                                    AdamW& optimizer, const StepArgs& args) {
  RETURN_IF_ERROR(ValidateStepArgs(args));
  StepOutcome out;
  const auto t_start = Clock::now();
  const int64_t slice = model.layout().slice_size();
  const int world = collective.world_size();

  // 1. Reduce-scatter: the owned slice of G becomes the sum over ranks.
  auto t = Clock::now();
  RETURN_IF_ERROR(collective.ReduceScatter(model.grads(), slice));
  out.reduce_scatter_ms = MsSince(t);

  // 2. Global norm and non-finite check, from all-reduced scalars.
  t = Clock::now();
  GradSummary local = SummarizeGrads(model.owned_grads(), slice);
  double sums[2] = {local.sum_sq, static_cast<double>(local.non_finite)};
  RETURN_IF_ERROR(collective.AllReduce(sums));
  // The reduced gradient is the sum over ranks; the mean divides by world.
  const double to_mean = 1.0 / (static_cast<double>(world) * args.grad_scale);
  out.grad_norm = std::sqrt(sums[0]) * to_mean;
  out.norm_ms = MsSince(t);
  if (sums[1] > 0) {
    out.skip_reason = absl::StrCat(static_cast<int64_t>(sums[1]),
                                   " non-finite gradient values");
    out.grad_norm = std::numeric_limits<double>::quiet_NaN();
    out.total_ms = MsSince(t_start);
    return out;
  }
  if (args.max_grad_norm > 0 && out.grad_norm > args.max_grad_norm) {
    // torch.nn.utils.clip_grad_norm_'s coefficient.
    out.clip_coef = args.max_grad_norm / (out.grad_norm + 1e-6);
  }

  // 3 + 4. AdamW on the owned slice, writing p_r into P in the same pass.
  t = Clock::now();
  AdamWBuffers buf;
  buf.grad = model.owned_grads();
  buf.param = model.master();
  buf.exp_avg = model.exp_avg();
  buf.exp_avg_sq = model.exp_avg_sq();
  buf.param_out = model.owned_params();
  buf.param_out_type = ParamOutType::kFloat32;
  std::vector<AdamWSegment> segs = model.Segments(args.lr);
  optimizer.Apply(buf, segs, args.adam_step,
                  static_cast<float>(to_mean * out.clip_coef));
  out.optimizer_ms = MsSince(t);

  // 5. All-gather the updated params.
  t = Clock::now();
  RETURN_IF_ERROR(collective.AllGather(model.params(), slice));
  out.all_gather_ms = MsSince(t);
  out.applied = true;
  out.total_ms = MsSince(t_start);
  return out;
}

}  // namespace sherd
