#include "server/step/step_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/step/grad_norm.h"

namespace sherd {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Runs fn(worker, begin, end) on the optimizer's workers over [0, n), in
// pieces aligned to 16 floats (64 bytes) so no two workers share a cache line.
void ForEachPiece(AdamW& optimizer, int64_t n,
                  absl::FunctionRef<void(int, int64_t, int64_t)> fn) {
  const int workers = optimizer.threads();
  const int64_t per = (n / workers + 15) / 16 * 16;
  optimizer.ParallelFor([&](int w) {
    const int64_t b = std::min(n, w * per);
    const int64_t e = w + 1 == workers ? n : std::min(n, b + per);
    fn(w, b, e);
  });
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
  if (!std::isfinite(1.0f / a.grad_scale)) {
    // 1/scale overflows float: every unscaled value would be inf.
    return absl::InvalidArgumentError(absl::StrCat(
        "grad_scale ", a.grad_scale, " is too small: its reciprocal is not finite"));
  }
  if (!std::isfinite(a.max_grad_norm) || a.max_grad_norm < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_grad_norm must be finite and >= 0, got ", a.max_grad_norm));
  }
  for (size_t i = 0; i < a.group_overrides.size(); ++i) {
    if (!a.group_overrides[i]) continue;
    const AdamWHyper& h = *a.group_overrides[i];
    auto bad = [&](absl::string_view what, float v) {
      return absl::InvalidArgumentError(
          absl::StrCat("param group ", i, ": ", what, ", got ", v));
    };
    if (!std::isfinite(h.lr) || h.lr < 0) return bad("lr must be finite and >= 0", h.lr);
    if (!(h.beta1 >= 0 && h.beta1 < 1)) return bad("beta1 must be in [0, 1)", h.beta1);
    if (!(h.beta2 >= 0 && h.beta2 < 1)) return bad("beta2 must be in [0, 1)", h.beta2);
    if (!(h.eps > 0) || !std::isfinite(h.eps)) return bad("eps must be > 0", h.eps);
    if (!(h.weight_decay >= 0) || !std::isfinite(h.weight_decay)) {
      return bad("weight_decay must be finite and >= 0", h.weight_decay);
    }
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

  // Same-host backends reduce and gather straight from the peers' buffers.
  collective.AdviseSharedBuffer("grads", model.grads(), model.grads_region().name(),
                                model.grads_region().size());
  collective.AdviseSharedBuffer("params", model.params(), model.params_region().name(),
                                model.params_region().size());

  // 1. Reduce-scatter: the owned slice of G becomes the sum over ranks.
  auto t = Clock::now();
  RETURN_IF_ERROR(collective.ReduceScatter(model.grads(), slice));
  out.reduce_scatter_ms = MsSince(t);

  // 2. Global norm and non-finite check, from all-reduced scalars.
  t = Clock::now();
  GradSummary local;
  {
    std::vector<GradSummary> parts(optimizer.threads());
    const float* g = model.owned_grads();
    ForEachPiece(optimizer, slice, [&](int w, int64_t b, int64_t e) {
      parts[w] = SummarizeGrads(g + b, e - b);
    });
    for (const GradSummary& p : parts) {
      local.sum_sq += p.sum_sq;
      local.non_finite += p.non_finite;
    }
  }
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
  if (!(out.grad_norm <= std::numeric_limits<float>::max())) {
    // Finite as stored, but the unscaled mean overflows float: some value
    // (or the norm torch computes in fp32) is inf once unscaled, and
    // torch's GradScaler skips such a step.
    out.skip_reason = "gradients overflow after unscaling";
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
  std::vector<AdamWSegment> segs = model.Segments(args.lr, args.group_overrides);
  const float multiplier = static_cast<float>(to_mean * out.clip_coef);
  if (world == 1) {
    // Nothing can fail after this point: update in place.
    buf.param_out = model.owned_params();
    buf.param_out_type = ParamOutType::kFloat32;
    optimizer.Apply(buf, segs, args.adam_step, multiplier);
    out.optimizer_ms = MsSince(t);
    out.applied = true;
    out.total_ms = MsSince(t_start);
    return out;
  }
  // More ranks: the all-gather can still fail (a peer dies), and a step must
  // then leave the state as it was. So the new state is staged and
  // committed only after the all-gather:
  //   new p -> the owned slice of P (what the all-gather sends anyway; it is
  //            copied to the master on commit, 8 B/param of traffic),
  //   new m, v -> the moments' second buffers (a flip commits them).
  buf.param_dst = model.owned_params();
  buf.exp_avg_dst = model.next_exp_avg();
  buf.exp_avg_sq_dst = model.next_exp_avg_sq();
  optimizer.Apply(buf, segs, args.adam_step, multiplier);
  out.optimizer_ms = MsSince(t);

  // 5. All-gather the updated params.
  t = Clock::now();
  if (absl::Status s = collective.AllGather(model.params(), slice); !s.ok()) {
    // This rank's slice of P goes back to the old params (the master still
    // holds them). The other ranks' slices may hold some of their new
    // values: only they had the old ones, so P is whole again when the
    // cluster rewinds to a checkpoint (a lost rank replaced), not before.
    ForEachPiece(optimizer, slice, [&](int, int64_t b, int64_t e) {
      std::memcpy(model.owned_params() + b, model.master() + b, (e - b) * sizeof(float));
    });
    return s;
  }
  out.all_gather_ms = MsSince(t);

  // Commit: the master copy from P's slice, the moments by a flip.
  t = Clock::now();
  ForEachPiece(optimizer, slice, [&](int, int64_t b, int64_t e) {
    std::memcpy(model.master() + b, model.owned_params() + b, (e - b) * sizeof(float));
  });
  model.FlipMoments();
  out.optimizer_ms += MsSince(t);
  out.applied = true;
  out.total_ms = MsSince(t_start);
  return out;
}

namespace {

class CpuStepRunner final : public StepRunner {
 public:
  explicit CpuStepRunner(int threads) : optimizer_(std::max(1, threads)) {}
  absl::StatusOr<StepOutcome> Run(ModelState& model, Collective& collective,
                                  const StepArgs& args) override {
    if (model.on_device()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the model's state is on ", model.device_name(),
          " but this server steps on the CPU"));
    }
    return RunStep(model, collective, optimizer_, args);
  }

 private:
  AdamW optimizer_;
};

}  // namespace

std::unique_ptr<StepRunner> CreateCpuStepRunner(int threads) {
  return std::make_unique<CpuStepRunner>(threads);
}

}  // namespace sherd
