// AdamW over a flat fp32 slice on the GPU: the device twin of
// server/optimizer/adamw.h, with the same buffers, segments (param groups),
// math and rounding. Against the CPU AVX2/AVX-512 paths the result is equal
// bit for bit (cuda_kernels/internal/adamw_math.h says why); against the
// scalar path it differs by an ulp here and there.
//
// Contract:
//  - Every pointer in AdamWBuffers is DEVICE memory on the current device
//    (grad of grad_type, fp32 param/moments, optional param_out and
//    out-of-place destinations with the CPU's aliasing rules). Element
//    indices in the segments are relative to those pointers; bounds are the
//    caller's contract, as on the CPU.
//  - Apply() enqueues ONE kernel on `stream` (an opaque cudaStream_t;
//    nullptr = legacy default stream) after a small copy of the segment
//    table, and returns once enqueued. The host segment list may be reused
//    at once. Kernel errors surface at the next synchronization.
//  - Streams 16-byte aligned (8 for 16-bit types) take the vector path,
//    otherwise every element goes through the scalar path; same results.
//  - Guarded mode (ApplyGuarded) is pass 2 of the whole step: it derives the
//    gradient multiplier from the device-side gradient stats (grad_ops.h)
//    as the CPU step pipeline does (mean over ranks, unscale, clip) and
//    skips the update, writing nothing, if any gradient was non-finite. The
//    decision is taken on the device; the host need not wait for it.
//  - One object per stream: the device segment table is reused by the next
//    Apply() on the same stream (ordered after the previous kernel). Not
//    thread-safe. Growing the table beyond its largest size so far frees and
//    reallocates it, which synchronizes the device (rare: the segment count
//    of a model is fixed).
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/optimizer/adamw.h"

namespace sherd {

// What a guarded step decided, as the device writes it (this exact layout
// lives in device memory; copy it to the host to read it).
struct CudaStepReport {
  double grad_norm = 0;   // global norm of the mean, unscaled gradient; NaN
                          // when skipped
  double clip_coef = 1;   // <= 1
  double sum_sq = 0;      // the (all-reduced) stats the decision used
  double non_finite = 0;
  float grad_multiplier = 0;  // 1 / (world * scale) * clip_coef, as float
  int32_t applied = 0;        // 1: AdamW ran; 0: skipped (non-finite grads)
};

// The scalars of a guarded step (see server/step/step_pipeline.h).
struct CudaGuard {
  const double* device_stats = nullptr;  // {sum_sq, non_finite}, device
  double to_mean = 1;        // 1 / (world_size * grad_scale)
  double max_grad_norm = 0;  // 0: no clipping
  CudaStepReport* device_report = nullptr;  // device; may be null
};

class CudaAdamW {
 public:
  // For the current device.
  static absl::StatusOr<std::unique_ptr<CudaAdamW>> Create();
  ~CudaAdamW();
  CudaAdamW(const CudaAdamW&) = delete;
  CudaAdamW& operator=(const CudaAdamW&) = delete;

  // As AdamW::Apply: step is the 1-based count for bias correction.
  absl::Status Apply(const AdamWBuffers& buf,
                     std::span<const AdamWSegment> segments, int64_t step,
                     float grad_multiplier, void* stream);

  absl::Status ApplyGuarded(const AdamWBuffers& buf,
                            std::span<const AdamWSegment> segments,
                            int64_t step, const CudaGuard& guard,
                            void* stream);

 private:
  struct Staging;  // host copy of the segment table
  explicit CudaAdamW(int sm_count);
  absl::Status Launch(const AdamWBuffers& buf,
                      std::span<const AdamWSegment> segments, int64_t step,
                      float grad_multiplier, const CudaGuard* guard,
                      void* stream);

  int sm_count_;
  void* table_ = nullptr;  // device cuda_internal::SegmentEntry rows
  size_t table_capacity_ = 0;
  std::unique_ptr<Staging> staging_;
};

}  // namespace sherd
