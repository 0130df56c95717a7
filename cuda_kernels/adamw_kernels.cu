// The fused AdamW kernel: one pass over the segments of a flat slice, per
// element reading g, p, m, v and writing p, m, v and optionally the param
// copy for the all-gather (fp32 or bf16).
//
// Work decomposition: the host lays the segments out as a table of work
// units (SegmentEntry: unaligned heads and tails one element per unit, the
// aligned middle one 16-byte vector per unit), so one grid-stride loop over
// units covers any mix of segment sizes with every thread busy (the walk,
// ForEachUnit in internal/adamw_math.h, is shared with the host tests).
//
// Guarded mode (pass 2 of the whole step): the gradient multiplier is
// derived on the device from the gradient summary of pass 1 (sum of squares
// and non-finite count, possibly all-reduced in between) exactly as the CPU
// step pipeline derives it on the host, and a non-finite count skips the
// step without writing anything, so the host never has to look at the
// summary before launching.
#include <cuda_runtime.h>

#include "cuda_kernels/internal/adamw_math.h"
#include "cuda_kernels/internal/element_io.cuh"
#include "cuda_kernels/internal/launch.h"

namespace sherd::cuda_internal {
namespace {

using F32 = Io<ElemType::kFloat32>;

// The multiplier of a guarded step and whether to apply it; mirrors
// server/step/step_pipeline.cc (torch.nn.utils.clip_grad_norm_'s
// coefficient), in double with explicit roundings so the device and the
// host agree exactly.
__device__ bool GuardedMultiplier(const AdamWLaunch& a, float* mult) {
  const double sum_sq = a.stats->sum_sq;
  const double bad = a.stats->non_finite;
  const bool apply = bad == 0.0;
  const double norm = __dmul_rn(__dsqrt_rn(sum_sq), a.to_mean);
  double clip = 1.0;
  if (a.max_grad_norm > 0 && norm > a.max_grad_norm) {
    clip = __ddiv_rn(a.max_grad_norm, __dadd_rn(norm, 1e-6));
  }
  *mult = static_cast<float>(__dmul_rn(a.to_mean, clip));
  if (a.report != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    StepReportDevice r;
    r.grad_norm = apply ? norm : __longlong_as_double(0x7ff8000000000000LL);
    r.clip_coef = apply ? clip : 1.0;
    r.sum_sq = sum_sq;
    r.non_finite = bad;
    r.multiplier = apply ? *mult : 0.0f;
    r.applied = apply ? 1 : 0;
    *a.report = r;
  }
  return apply;
}

template <ElemType kGrad, ElemType kOut>
__device__ __forceinline__ void UpdateVector(const AdamWLaunch& a,
                                             const ElementConstants& c,
                                             int64_t e) {
  float g[4], p[4], m[4], v[4];
  Io<kGrad>::Load4(a.grad, e, g);
  F32::Load4(a.param, e, p);
  F32::Load4(a.exp_avg, e, m);
  F32::Load4(a.exp_avg_sq, e, v);
#pragma unroll
  for (int j = 0; j < 4; ++j) AdamWElement(c, g[j], p[j], m[j], v[j]);
  F32::Store4(a.param_dst, e, p);
  F32::Store4(a.exp_avg_dst, e, m);
  F32::Store4(a.exp_avg_sq_dst, e, v);
  Io<kOut>::Store4(a.param_out, e, p);
}

template <ElemType kGrad, ElemType kOut>
__device__ __forceinline__ void UpdateScalar(const AdamWLaunch& a,
                                             const ElementConstants& c,
                                             int64_t e) {
  const float g = Io<kGrad>::Load1(a.grad, e);
  float p = F32::Load1(a.param, e);
  float m = F32::Load1(a.exp_avg, e);
  float v = F32::Load1(a.exp_avg_sq, e);
  AdamWElement(c, g, p, m, v);
  F32::Store1(a.param_dst, e, p);
  F32::Store1(a.exp_avg_dst, e, m);
  F32::Store1(a.exp_avg_sq_dst, e, v);
  Io<kOut>::Store1(a.param_out, e, p);
}

template <ElemType kGrad, ElemType kOut, bool kGuarded>
__global__ void __launch_bounds__(256, 4) AdamWKernel(const AdamWLaunch a) {
  float mult = a.multiplier;
  if constexpr (kGuarded) {
    if (!GuardedMultiplier(a, &mult)) return;  // skipped: write nothing
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                     threadIdx.x;
  // Constants of the current row, reloaded only when the row changes.
  int cur = -1;
  ElementConstants c;
  ForEachUnit(a.table, a.num_segments, a.total_units, u0, stride,
              [&](const SegmentEntry& s, int row, int64_t e, bool vec) {
                if (row != cur) {
                  cur = row;
                  c = ConstantsOf(s, mult);
                }
                if (vec) {
                  UpdateVector<kGrad, kOut>(a, c, e);
                } else {
                  UpdateScalar<kGrad, kOut>(a, c, e);
                }
              });
}

template <ElemType kGrad, ElemType kOut>
int LaunchFor(const AdamWLaunch& a) {
  const auto s = static_cast<cudaStream_t>(a.stream);
  if (a.stats != nullptr) {
    AdamWKernel<kGrad, kOut, true><<<a.blocks, a.threads, 0, s>>>(a);
  } else {
    AdamWKernel<kGrad, kOut, false><<<a.blocks, a.threads, 0, s>>>(a);
  }
  return static_cast<int>(cudaGetLastError());
}

template <ElemType kGrad>
int LaunchForGrad(const AdamWLaunch& a) {
  switch (a.out_type) {
    case ElemType::kNone:
      return LaunchFor<kGrad, ElemType::kNone>(a);
    case ElemType::kFloat32:
      return LaunchFor<kGrad, ElemType::kFloat32>(a);
    case ElemType::kBFloat16:
      return LaunchFor<kGrad, ElemType::kBFloat16>(a);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace

int LaunchAdamW(const AdamWLaunch& a) {
  switch (a.grad_type) {
    case ElemType::kFloat32:
      return LaunchForGrad<ElemType::kFloat32>(a);
    case ElemType::kBFloat16:
      return LaunchForGrad<ElemType::kBFloat16>(a);
    case ElemType::kFloat16:
      return LaunchForGrad<ElemType::kFloat16>(a);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace sherd::cuda_internal
