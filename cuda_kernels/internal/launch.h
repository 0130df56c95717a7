// Internal: the boundary between the host-side C++ (compiled by g++) and
// the .cu files (compiled by nvcc). Plain structs of raw pointers and
// scalars; each Launch* enqueues one kernel on `stream` and returns the
// launch's cudaError_t as an int (0: launched). Nothing here allocates,
// synchronizes or keeps state; the callers in adamw_cuda.cc, grad_ops.cc and
// optimizer_step.cc own the memory and the contracts.
#pragma once

#include <cstdint>

#include "cuda_kernels/internal/adamw_math.h"

namespace sherd::cuda_internal {

enum class ElemType : int { kNone, kFloat32, kBFloat16, kFloat16 };

// The guarded step's outcome, written by the pass-2 kernel for the host to
// read when it wants to report it (public mirror: CudaStepReport).
struct StepReportDevice {
  double grad_norm;
  double clip_coef;
  double sum_sq;
  double non_finite;
  float multiplier;
  int32_t applied;
};

// Device layout of a gradient summary: exactly the two doubles the step
// all-reduces (sum of squares of finite values, count of non-finite ones),
// so a device all-reduce can run on it in place between the passes.
struct GradStatsDevice {
  double sum_sq;
  double non_finite;
};

struct AdamWLaunch {
  const SegmentEntry* table;  // device, num_segments rows in unit order
  int num_segments;
  int64_t total_units;
  const void* grad;
  ElemType grad_type;  // kFloat32, kBFloat16 or kFloat16
  const float* param;
  const float* exp_avg;
  const float* exp_avg_sq;
  float* param_dst;
  float* exp_avg_dst;
  float* exp_avg_sq_dst;
  void* param_out;
  ElemType out_type;  // kNone, kFloat32 or kBFloat16
  bool vectorized;    // every stream 16-byte (fp32) / 8-byte (16-bit) aligned
  // Guarded mode when stats != nullptr: the multiplier comes from the
  // (all-reduced) stats instead, and a non-finite count > 0 skips the step.
  float multiplier;
  const GradStatsDevice* stats;
  double to_mean;        // 1 / (world_size * grad_scale)
  double max_grad_norm;  // 0: no clipping
  StepReportDevice* report;  // guarded mode only; may be null
  int blocks;
  int threads;
  void* stream;
};
int LaunchAdamW(const AdamWLaunch& a);

// Scratch of the two-level deterministic reduction: one partial per block,
// summed in block order by whichever block finishes last.
inline constexpr int kMaxSummaryBlocks = 2048;
struct SummaryScratch {
  GradStatsDevice result;
  unsigned int blocks_done;  // zero between launches
  unsigned int pad;
  double partial_sum[kMaxSummaryBlocks];
  unsigned long long partial_bad[kMaxSummaryBlocks];
};

struct SummaryLaunch {
  const void* grad;
  ElemType grad_type;
  int64_t n;
  bool vectorized;
  SummaryScratch* scratch;  // device
  int blocks;               // <= kMaxSummaryBlocks
  int threads;              // 256
  void* stream;
};
int LaunchGradSummary(const SummaryLaunch& a);

struct CastLaunch {
  const void* src;
  ElemType src_type;
  void* dst;
  ElemType dst_type;
  int64_t n;
  float multiplier;
  bool vectorized;
  int blocks;
  int threads;
  void* stream;
};
int LaunchScaleCast(const CastLaunch& a);

}  // namespace sherd::cuda_internal
