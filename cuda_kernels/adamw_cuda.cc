// Host side of the CUDA AdamW: builds the segment table (per-step
// constants from the CPU optimizer's MakeAdamWConstants, so both paths round
// the same constants identically), uploads it and launches the kernel.
#include "cuda_kernels/adamw_cuda.h"

#include <cstddef>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cuda_kernels/cuda_status.h"
#include "cuda_kernels/device.h"
#include "cuda_kernels/internal/host_util.h"
#include "cuda_kernels/internal/launch.h"
#include "cuda_kernels/internal/segment_table.h"

namespace sherd {

using cuda_internal::ElemOf;
using cuda_internal::ElemType;
using cuda_internal::SegmentEntry;
using cuda_internal::StepReportDevice;

// The public report is the device struct under another name.
static_assert(sizeof(CudaStepReport) == sizeof(StepReportDevice));
static_assert(offsetof(CudaStepReport, grad_norm) ==
              offsetof(StepReportDevice, grad_norm));
static_assert(offsetof(CudaStepReport, clip_coef) ==
              offsetof(StepReportDevice, clip_coef));
static_assert(offsetof(CudaStepReport, sum_sq) ==
              offsetof(StepReportDevice, sum_sq));
static_assert(offsetof(CudaStepReport, non_finite) ==
              offsetof(StepReportDevice, non_finite));
static_assert(offsetof(CudaStepReport, grad_multiplier) ==
              offsetof(StepReportDevice, multiplier));
static_assert(offsetof(CudaStepReport, applied) ==
              offsetof(StepReportDevice, applied));

struct CudaAdamW::Staging {
  std::vector<SegmentEntry> rows;
};

CudaAdamW::CudaAdamW(int sm_count)
    : sm_count_(sm_count), staging_(std::make_unique<Staging>()) {}

absl::StatusOr<std::unique_ptr<CudaAdamW>> CudaAdamW::Create() {
  absl::StatusOr<int> sms = cuda_internal::MultiprocessorsOfCurrentDevice();
  if (!sms.ok()) return sms.status();
  return std::unique_ptr<CudaAdamW>(new CudaAdamW(*sms));
}

CudaAdamW::~CudaAdamW() { DeviceFree(table_).IgnoreError(); }

absl::Status CudaAdamW::Apply(const AdamWBuffers& buf,
                              std::span<const AdamWSegment> segments,
                              int64_t step, float grad_multiplier,
                              void* stream) {
  return Launch(buf, segments, step, grad_multiplier, nullptr, stream);
}

absl::Status CudaAdamW::ApplyGuarded(const AdamWBuffers& buf,
                                     std::span<const AdamWSegment> segments,
                                     int64_t step, const CudaGuard& guard,
                                     void* stream) {
  if (guard.device_stats == nullptr) {
    return absl::InvalidArgumentError("ApplyGuarded: no device stats");
  }
  return Launch(buf, segments, step, /*grad_multiplier=*/0, &guard, stream);
}

absl::Status CudaAdamW::Launch(const AdamWBuffers& buf,
                               std::span<const AdamWSegment> segments,
                               int64_t step, float grad_multiplier,
                               const CudaGuard* guard, void* stream) {
  if (buf.grad == nullptr || buf.param == nullptr || buf.exp_avg == nullptr ||
      buf.exp_avg_sq == nullptr) {
    return absl::InvalidArgumentError(
        "CudaAdamW: grad, param, exp_avg and exp_avg_sq are required");
  }
  cuda_internal::AdamWLaunch a{};
  a.grad = buf.grad;
  a.grad_type = ElemOf(buf.grad_type);
  a.param = buf.param;
  a.exp_avg = buf.exp_avg;
  a.exp_avg_sq = buf.exp_avg_sq;
  a.param_dst = buf.param_dst ? buf.param_dst : buf.param;
  a.exp_avg_dst = buf.exp_avg_dst ? buf.exp_avg_dst : buf.exp_avg;
  a.exp_avg_sq_dst = buf.exp_avg_sq_dst ? buf.exp_avg_sq_dst : buf.exp_avg_sq;
  const bool has_out =
      buf.param_out != nullptr && buf.param_out_type != ParamOutType::kNone;
  a.param_out = has_out ? buf.param_out : nullptr;
  a.out_type = has_out ? ElemOf(buf.param_out_type) : ElemType::kNone;
  a.vectorized =
      cuda_internal::VectorAligned(a.grad, a.grad_type) &&
      cuda_internal::VectorAligned(a.param, ElemType::kFloat32) &&
      cuda_internal::VectorAligned(a.exp_avg, ElemType::kFloat32) &&
      cuda_internal::VectorAligned(a.exp_avg_sq, ElemType::kFloat32) &&
      cuda_internal::VectorAligned(a.param_dst, ElemType::kFloat32) &&
      cuda_internal::VectorAligned(a.exp_avg_dst, ElemType::kFloat32) &&
      cuda_internal::VectorAligned(a.exp_avg_sq_dst, ElemType::kFloat32) &&
      cuda_internal::VectorAligned(a.param_out, a.out_type);

  std::vector<SegmentEntry>& rows = staging_->rows;
  absl::StatusOr<int64_t> total = cuda_internal::BuildSegmentTable(
      segments, step, a.vectorized, &rows);
  if (!total.ok()) return total.status();
  const int64_t units = *total;
  const int n = static_cast<int>(rows.size());
  // A guarded launch always runs: it writes the report even with no work.
  if (units == 0 && guard == nullptr) return absl::OkStatus();

  const size_t bytes = n * sizeof(SegmentEntry);
  if (bytes > table_capacity_) {
    // cudaFree waits for the device, so no kernel still reads the old rows.
    absl::Status freed = DeviceFree(table_);
    table_ = nullptr;
    table_capacity_ = 0;
    if (!freed.ok()) return freed;
    absl::StatusOr<void*> t = DeviceAlloc(bytes);
    if (!t.ok()) return t.status();
    table_ = *t;
    table_capacity_ = bytes;
  }
  // From pageable memory: the runtime stages the rows before returning, so
  // the rows may be rewritten by the next call right away.
  absl::Status copied = CopyAsync(table_, rows.data(), bytes, stream);
  if (!copied.ok()) return copied;

  a.table = static_cast<const SegmentEntry*>(table_);
  a.num_segments = n;
  a.total_units = units;
  a.multiplier = grad_multiplier;
  if (guard != nullptr) {
    a.stats = reinterpret_cast<const cuda_internal::GradStatsDevice*>(
        guard->device_stats);
    a.to_mean = guard->to_mean;
    a.max_grad_norm = guard->max_grad_norm;
    a.report = reinterpret_cast<StepReportDevice*>(guard->device_report);
  }
  a.threads = cuda_internal::kThreadsPerBlock;
  a.blocks = cuda_internal::GridBlocks(units, sm_count_);
  a.stream = stream;
  SHERD_RETURN_IF_CUDA_ERROR(cuda_internal::LaunchAdamW(a),
                             "launch AdamW kernel");
  return absl::OkStatus();
}

}  // namespace sherd
