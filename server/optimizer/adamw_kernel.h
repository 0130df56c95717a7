// Internal: the element kernels behind AdamW::Apply().
//
// A kernel updates the elements [begin, end) of one segment in a single pass
// with constants prepared once per Apply() (MakeAdamWConstants). Kernels are
// pure functions of their arguments: no state, no allocation, safe to run on
// disjoint ranges from several threads. Each instruction-set path lives in its
// own translation unit compiled with its own target flags; callers must only
// invoke a path that IsaSupported() reports.
//
// Every path computes, per element and in float32, in this order:
//   g  = g * grad_multiplier
//   p  = p * decay
//   m  = beta1 * m + one_minus_beta1 * g
//   v  = beta2 * v + (one_minus_beta2 * g) * g
//   p  = p - step_size * (m / (sqrt(v) * inv_sqrt_bc2 + eps))
// The SIMD paths fuse the three "a * b + c" forms above into FMAs; the scalar
// path rounds every operation (see the note in adamw.h).
#pragma once

#include <cstdint>

#include "server/optimizer/adamw.h"

namespace sherd::internal {

// Per-segment constants, derived in double precision and rounded to float
// once, so every element of a segment sees exactly the same values whatever
// path or thread processes it.
struct AdamWConstants {
  float grad_multiplier;
  float decay;            // 1 - lr * weight_decay
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float step_size;        // lr / (1 - beta1^t)
  float inv_sqrt_bc2;     // 1 / sqrt(1 - beta2^t)
  float eps;
};

AdamWConstants MakeAdamWConstants(const AdamWHyper& hyper, int64_t step,
                                  float grad_multiplier);

// The buffers of one Apply(), with param_out already resolved: when it is
// null the type is kNone.
struct AdamWKernelArgs {
  const void* grad;
  float* param;
  float* exp_avg;
  float* exp_avg_sq;
  void* param_out;
  GradType grad_type;
  ParamOutType param_out_type;
};

using AdamWKernelFn = void (*)(const AdamWKernelArgs& args,
                               const AdamWConstants& c, int64_t begin,
                               int64_t end);

void AdamWKernelScalar(const AdamWKernelArgs& args, const AdamWConstants& c,
                       int64_t begin, int64_t end);
#if SHERD_OPTIMIZER_X86
void AdamWKernelAvx2(const AdamWKernelArgs& args, const AdamWConstants& c,
                     int64_t begin, int64_t end);
void AdamWKernelAvx512(const AdamWKernelArgs& args, const AdamWConstants& c,
                       int64_t begin, int64_t end);
#endif

}  // namespace sherd::internal
