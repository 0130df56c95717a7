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
//   m  = m + one_minus_beta1 * (g - m)          (= beta1 m + (1 - beta1) g)
//   v  = v + one_minus_beta2 * (g * g - v)      (= beta2 v + (1 - beta2) g^2)
//   p  = p - (lr_wd * p + step_size * (m / (sqrt(v) * inv_sqrt_bc2 + eps)))
// Each stored value then carries ONE rounding that is significant at its own
// scale (the correction terms are small relative to it), the same as an
// exact update rounded to float32; the textbook beta1 * m + ... and
// p * (1 - lr wd) forms add a second one, and float32(1 - lr wd) alone is off
// by up to 3e-8, a bias that accumulates over steps. The SIMD paths fuse
// "a * b + c" into FMAs; the scalar path rounds every operation (see
// adamw.h).
#pragma once

#include <cstdint>

#include "server/optimizer/adamw.h"

namespace sherd::internal {

// Per-segment constants, derived in double precision and rounded to float
// once, so every element of a segment sees exactly the same values whatever
// path or thread processes it.
struct AdamWConstants {
  float grad_multiplier;
  float lr_wd;  // lr * weight_decay
  float one_minus_beta1;
  float one_minus_beta2;
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
  float eps;
};

AdamWConstants MakeAdamWConstants(const AdamWHyper& hyper, int64_t step,
                                  float grad_multiplier);

// The buffers of one Apply(), with param_out already resolved: when it is
// null the type is kNone.
struct AdamWKernelArgs {
  const void* grad;
  const float* param;
  const float* exp_avg;
  const float* exp_avg_sq;
  void* param_out;
  GradType grad_type;
  ParamOutType param_out_type;
  // Write p_out with non-temporal stores where aligned (SIMD paths): it is
  // write-only here, so streaming skips the read-for-ownership and keeps a
  // large copy from evicting the state. Only worth it when the output is
  // far bigger than the caches; AdamW::Apply decides.
  bool stream_param_out;
  // Where the new state goes: the inputs themselves (in place) unless the
  // caller asked for separate destinations. A destination may alias its own
  // input or the gradient element for element (each element is read before
  // it is written), never a shifted range.
  float* param_dst;
  float* exp_avg_dst;
  float* exp_avg_sq_dst;
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
