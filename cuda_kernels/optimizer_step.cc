#include "cuda_kernels/optimizer_step.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cuda_kernels/device.h"

namespace sherd {

absl::Status ValidateCudaStepArgs(const CudaStepArgs& a) {
  if (!std::isfinite(a.grad_scale) || a.grad_scale <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grad_scale must be finite and > 0, got ", a.grad_scale));
  }
  if (!std::isfinite(a.max_grad_norm) || a.max_grad_norm < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_grad_norm must be finite and >= 0, got ", a.max_grad_norm));
  }
  if (a.world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("world_size must be >= 1, got ", a.world_size));
  }
  if (a.adam_step < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("adam_step must be >= 1, got ", a.adam_step));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaOptimizerStep>> CudaOptimizerStep::Create() {
  absl::StatusOr<std::unique_ptr<CudaGradSummary>> summary =
      CudaGradSummary::Create();
  if (!summary.ok()) return summary.status();
  absl::StatusOr<std::unique_ptr<CudaAdamW>> adamw = CudaAdamW::Create();
  if (!adamw.ok()) return adamw.status();
  absl::StatusOr<void*> report = DeviceAlloc(sizeof(CudaStepReport));
  if (!report.ok()) return report.status();
  return std::unique_ptr<CudaOptimizerStep>(new CudaOptimizerStep(
      *std::move(summary), *std::move(adamw), *report));
}

CudaOptimizerStep::~CudaOptimizerStep() {
  DeviceFree(report_).IgnoreError();
}

absl::Status CudaOptimizerStep::Summarize(const void* grad, GradType type,
                                          int64_t n, void* stream) {
  return summary_->Launch(grad, type, n, stream);
}

double* CudaOptimizerStep::device_stats() const {
  return summary_->device_stats();
}

absl::Status CudaOptimizerStep::Apply(const AdamWBuffers& buf,
                                      std::span<const AdamWSegment> segments,
                                      const CudaStepArgs& args, void* stream) {
  absl::Status valid = ValidateCudaStepArgs(args);
  if (!valid.ok()) return valid;
  CudaGuard guard;
  guard.device_stats = summary_->device_stats();
  // Exactly the host expression of step_pipeline.cc, so the device derives
  // the same multiplier from the same sums.
  guard.to_mean =
      1.0 / (static_cast<double>(args.world_size) * args.grad_scale);
  guard.max_grad_norm = args.max_grad_norm;
  guard.device_report = static_cast<CudaStepReport*>(report_);
  return adamw_->ApplyGuarded(buf, segments, args.adam_step, guard, stream);
}

absl::Status CudaOptimizerStep::Run(const AdamWBuffers& buf, int64_t n,
                                    std::span<const AdamWSegment> segments,
                                    const CudaStepArgs& args, void* stream) {
  absl::Status valid = ValidateCudaStepArgs(args);
  if (!valid.ok()) return valid;
  absl::Status s = Summarize(buf.grad, buf.grad_type, n, stream);
  if (!s.ok()) return s;
  return Apply(buf, segments, args, stream);
}

absl::StatusOr<CudaStepReport> CudaOptimizerStep::ReadReport(
    void* stream) const {
  CudaStepReport r;
  absl::Status s = CopyAsync(&r, report_, sizeof r, stream);
  if (s.ok()) s = StreamSynchronize(stream);
  if (!s.ok()) return s;
  return r;
}

}  // namespace sherd
