#include "cuda_kernels/grad_ops.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "cuda_kernels/cuda_status.h"
#include "cuda_kernels/device.h"
#include "cuda_kernels/internal/host_util.h"
#include "cuda_kernels/internal/launch.h"

namespace sherd {

using cuda_internal::ElemOf;
using cuda_internal::ElemType;
using cuda_internal::SummaryScratch;

absl::StatusOr<std::unique_ptr<CudaGradSummary>> CudaGradSummary::Create() {
  absl::StatusOr<int> sms = cuda_internal::MultiprocessorsOfCurrentDevice();
  if (!sms.ok()) return sms.status();
  absl::StatusOr<void*> scratch = DeviceAlloc(sizeof(SummaryScratch));
  if (!scratch.ok()) return scratch.status();
  // blocks_done must start at zero; the kernel leaves it at zero.
  absl::Status zeroed = MemsetAsync(*scratch, 0, sizeof(SummaryScratch),
                                    nullptr);
  if (zeroed.ok()) zeroed = CudaDeviceSynchronize();
  if (!zeroed.ok()) {
    DeviceFree(*scratch).IgnoreError();
    return zeroed;
  }
  return std::unique_ptr<CudaGradSummary>(
      new CudaGradSummary(*scratch, *sms));
}

CudaGradSummary::~CudaGradSummary() { DeviceFree(scratch_).IgnoreError(); }

absl::Status CudaGradSummary::Launch(const void* grad, GradType type,
                                     int64_t n, void* stream) {
  if (n < 0 || (grad == nullptr && n > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaGradSummary: bad buffer (n = ", n, ")"));
  }
  cuda_internal::SummaryLaunch a;
  a.grad = grad;
  a.grad_type = ElemOf(type);
  a.n = n;
  a.vectorized = cuda_internal::VectorAligned(grad, a.grad_type);
  a.scratch = static_cast<SummaryScratch*>(scratch_);
  a.threads = cuda_internal::kThreadsPerBlock;
  a.blocks = cuda_internal::GridBlocks(
      a.vectorized ? (n + 3) / 4 : n, sm_count_,
      cuda_internal::kMaxSummaryBlocks);
  a.stream = stream;
  SHERD_RETURN_IF_CUDA_ERROR(cuda_internal::LaunchGradSummary(a),
                             "launch grad summary kernel");
  return absl::OkStatus();
}

double* CudaGradSummary::device_stats() const {
  return &static_cast<SummaryScratch*>(scratch_)->result.sum_sq;
}

absl::StatusOr<CudaGradStats> CudaGradSummary::Read(void* stream) const {
  cuda_internal::GradStatsDevice d;
  absl::Status s = CopyAsync(&d, device_stats(), sizeof d, stream);
  if (s.ok()) s = StreamSynchronize(stream);
  if (!s.ok()) return s;
  return CudaGradStats{d.sum_sq, static_cast<int64_t>(d.non_finite)};
}

absl::Status LaunchScaleCast(const void* src, GradType src_type, void* dst,
                             GradType dst_type, int64_t n, float multiplier,
                             void* stream) {
  if (n < 0 || (n > 0 && (src == nullptr || dst == nullptr))) {
    return absl::InvalidArgumentError(
        absl::StrCat("LaunchScaleCast: bad buffers (n = ", n, ")"));
  }
  if (n == 0) return absl::OkStatus();
  cuda_internal::CastLaunch a;
  a.src = src;
  a.src_type = ElemOf(src_type);
  a.dst = dst;
  a.dst_type = ElemOf(dst_type);
  a.n = n;
  a.multiplier = multiplier;
  const auto s_begin = reinterpret_cast<uintptr_t>(src);
  const auto d_begin = reinterpret_cast<uintptr_t>(dst);
  const uintptr_t s_end = s_begin + n * cuda_internal::BytesOf(a.src_type);
  const uintptr_t d_end = d_begin + n * cuda_internal::BytesOf(a.dst_type);
  const bool overlap = s_begin < d_end && d_begin < s_end;
  if (overlap && !(src == dst && src_type == dst_type)) {
    return absl::InvalidArgumentError(
        "LaunchScaleCast: src and dst overlap other than exactly in place");
  }
  a.vectorized = cuda_internal::VectorAligned(src, a.src_type) &&
                 cuda_internal::VectorAligned(dst, a.dst_type);
  absl::StatusOr<int> sms = cuda_internal::MultiprocessorsOfCurrentDevice();
  if (!sms.ok()) return sms.status();
  a.threads = cuda_internal::kThreadsPerBlock;
  a.blocks = cuda_internal::GridBlocks(a.vectorized ? (n + 3) / 4 : n, *sms);
  a.stream = stream;
  SHERD_RETURN_IF_CUDA_ERROR(cuda_internal::LaunchScaleCast(a),
                             "launch scale-cast kernel");
  return absl::OkStatus();
}

}  // namespace sherd
