// The whole optimizer step of one shard on the GPU, in two passes over
// memory instead of the five a framework makes (unscale, norm, clip, AdamW,
// cast):
//
//   pass 1  Summarize(g)   sum of squares + non-finite count -> device_stats()
//           [W > 1: the caller all-reduces device_stats() in place]
//   pass 2  Apply(...)     on the device: norm, skip decision, clip
//                          coefficient; then unscale + clip + AdamW + param
//                          copy (e.g. bf16 for the all-gather) in one pass,
//                          or nothing at all when a gradient was NaN/Inf
//
// The host never waits between the passes; it reads the CudaStepReport
// only when it wants to report the step (ReadReport synchronizes).
// Numerically this is server/step/step_pipeline.cc: the same multiplier
// 1 / (world * grad_scale) * clip_coef derived in double, the same skip
// rule, the same AdamW (adamw_cuda.h).
//
// Contract: device pointers on the current device; work on `stream`; one
// object per stream, not thread-safe (it owns the summary scratch, the
// segment table and the report). pass 2's buf.grad must be the buffer
// pass 1 summarized.
//
// Usage (one rank):
//   ASSIGN_OR_RETURN(auto step, CudaOptimizerStep::Create());
//   RETURN_IF_ERROR(step->Run(buf, slice_len, segments, args, stream));
//   ASSIGN_OR_RETURN(CudaStepReport r, step->ReadReport(stream));
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda_kernels/adamw_cuda.h"
#include "cuda_kernels/grad_ops.h"
#include "server/optimizer/adamw.h"

namespace sherd {

struct CudaStepArgs {
  float grad_scale = 1;     // gradients are divided by it (loss scaling)
  float max_grad_norm = 0;  // 0: no clipping
  int world_size = 1;       // gradients are sums over this many ranks
  int64_t adam_step = 1;    // 1-based, for bias correction
};

// INVALID_ARGUMENT for a non-finite or non-positive grad_scale, a
// non-finite or negative max_grad_norm, world_size < 1 or adam_step < 1.
absl::Status ValidateCudaStepArgs(const CudaStepArgs& args);

class CudaOptimizerStep {
 public:
  static absl::StatusOr<std::unique_ptr<CudaOptimizerStep>> Create();
  ~CudaOptimizerStep();
  CudaOptimizerStep(const CudaOptimizerStep&) = delete;
  CudaOptimizerStep& operator=(const CudaOptimizerStep&) = delete;

  // Pass 1 over grad[0, n) (the whole owned slice, gaps included, as the CPU
  // norm does).
  absl::Status Summarize(const void* grad, GradType type, int64_t n,
                         void* stream);
  // {sum_sq, non_finite}, device memory, for an in-place all-reduce.
  double* device_stats() const;

  // Pass 2: guarded AdamW over the segments.
  absl::Status Apply(const AdamWBuffers& buf,
                     std::span<const AdamWSegment> segments,
                     const CudaStepArgs& args, void* stream);

  // Both passes, for one rank (or stats that need no reduction).
  absl::Status Run(const AdamWBuffers& buf, int64_t n,
                   std::span<const AdamWSegment> segments,
                   const CudaStepArgs& args, void* stream);

  // Synchronizes `stream` and returns what the last Apply decided.
  absl::StatusOr<CudaStepReport> ReadReport(void* stream) const;

 private:
  CudaOptimizerStep(std::unique_ptr<CudaGradSummary> summary,
                    std::unique_ptr<CudaAdamW> adamw, void* report)
      : summary_(std::move(summary)),
        adamw_(std::move(adamw)),
        report_(report) {}

  std::unique_ptr<CudaGradSummary> summary_;
  std::unique_ptr<CudaAdamW> adamw_;
  void* report_;  // device CudaStepReport
};

}  // namespace sherd
