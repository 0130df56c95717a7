// Gradient passes on the GPU: the summary behind the global gradient norm
// and the skip decision (pass 1 of the step), and scale-and-cast (unscale,
// clip, dtype conversion, the bf16 param copy).
//
// Contract: pointers are device memory on the current device; work is
// enqueued on `stream` (an opaque cudaStream_t, nullptr = legacy default
// stream) and the calls return once it is enqueued, with errors of the
// launch itself; errors of the kernel surface at the next synchronization.
// Buffers must stay valid until the stream has passed the work.
//
// The summary is the GPU twin of server/step/grad_norm.h: the sum of squares
// of the finite values (in double, deterministic for a given device) and
// the number of NaN/Inf values. A CudaGradSummary owns its device scratch;
// use one object on one stream at a time (launches on one stream are
// ordered, so back-to-back launches are fine).
//
// Usage:
//   ASSIGN_OR_RETURN(auto summary, CudaGradSummary::Create());
//   RETURN_IF_ERROR(summary->Launch(grad, GradType::kFloat32, n, stream));
//   ASSIGN_OR_RETURN(CudaGradStats stats, summary->Read(stream));
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/optimizer/adamw.h"

namespace sherd {

struct CudaGradStats {
  double sum_sq = 0;       // sum of squares of the finite values
  int64_t non_finite = 0;  // count of NaN and Inf values
};

class CudaGradSummary {
 public:
  // Allocates the scratch on the current device.
  static absl::StatusOr<std::unique_ptr<CudaGradSummary>> Create();
  ~CudaGradSummary();
  CudaGradSummary(const CudaGradSummary&) = delete;
  CudaGradSummary& operator=(const CudaGradSummary&) = delete;

  // Enqueues the summary of grad[0, n); n == 0 gives zeros.
  absl::Status Launch(const void* grad, GradType type, int64_t n,
                      void* stream);

  // Two doubles in device memory, {sum_sq, non_finite}, valid once the
  // stream has passed Launch(); the layout the step all-reduces, so a
  // multi-rank step can all-reduce them in place before pass 2 reads them.
  // Stable for the object's lifetime.
  double* device_stats() const;

  // Synchronizes `stream` and returns the stats.
  absl::StatusOr<CudaGradStats> Read(void* stream) const;

 private:
  CudaGradSummary(void* scratch, int sm_count)
      : scratch_(scratch), sm_count_(sm_count) {}
  void* scratch_;  // cuda_internal::SummaryScratch
  int sm_count_;
};

// dst[i] = convert(src[i] * multiplier) for i in [0, n), rounding to nearest
// even for narrower types (bf16 keeps NaN a NaN, as the CPU conversion).
// In place when dst == src and the types are equal; other overlaps are
// INVALID_ARGUMENT.
absl::Status LaunchScaleCast(const void* src, GradType src_type, void* dst,
                             GradType dst_type, int64_t n, float multiplier,
                             void* stream);

}  // namespace sherd
