// Portable AdamW kernel: the reference path, and the only one off x86.
// Compiled with -ffp-contract=off so every operation rounds on its own, the
// same on every platform (see adamw.h for how this differs from the SIMD
// paths).

#include <cmath>
#include <cstdint>

#include "server/optimizer/adamw_kernel.h"
#include "server/optimizer/float_convert.h"

namespace sherd::internal {
namespace {

template <GradType kGrad>
float LoadGrad(const void* grad, int64_t i) {
  if constexpr (kGrad == GradType::kFloat32) {
    return static_cast<const float*>(grad)[i];
  } else if constexpr (kGrad == GradType::kBFloat16) {
    return BFloat16ToFloat(static_cast<const uint16_t*>(grad)[i]);
  } else {
    return HalfToFloat(static_cast<const uint16_t*>(grad)[i]);
  }
}

template <ParamOutType kOut>
void StoreOut(void* out, int64_t i, float p) {
  if constexpr (kOut == ParamOutType::kFloat32) {
    static_cast<float*>(out)[i] = p;
  } else if constexpr (kOut == ParamOutType::kBFloat16) {
    static_cast<uint16_t*>(out)[i] = FloatToBFloat16(p);
  }
}

template <GradType kGrad, ParamOutType kOut>
void Run(const AdamWKernelArgs& a, const AdamWConstants& c, int64_t begin,
         int64_t end) {
  // No __restrict: destinations may alias the inputs (in place). They do so
  // only element for element, so no iteration depends on another: ivdep
  // lets the compiler vectorize without runtime alias checks.
#pragma GCC ivdep
  for (int64_t i = begin; i < end; ++i) {
    const float g = LoadGrad<kGrad>(a.grad, i) * c.grad_multiplier;
    const float p0 = a.param[i], m0 = a.exp_avg[i], v0 = a.exp_avg_sq[i];
    const float m = m0 + c.one_minus_beta1 * (g - m0);
    const float v = v0 + c.one_minus_beta2 * (g * g - v0);
    const float denom = std::sqrt(v) * c.inv_sqrt_bc2 + c.eps;
    const float p = p0 - (c.lr_wd * p0 + c.step_size * (m / denom));
    a.param_dst[i] = p;
    a.exp_avg_dst[i] = m;
    a.exp_avg_sq_dst[i] = v;
    StoreOut<kOut>(a.param_out, i, p);
  }
}

template <GradType kGrad>
void DispatchOut(const AdamWKernelArgs& a, const AdamWConstants& c,
                 int64_t begin, int64_t end) {
  switch (a.param_out_type) {
    case ParamOutType::kNone:
      return Run<kGrad, ParamOutType::kNone>(a, c, begin, end);
    case ParamOutType::kFloat32:
      return Run<kGrad, ParamOutType::kFloat32>(a, c, begin, end);
    case ParamOutType::kBFloat16:
      return Run<kGrad, ParamOutType::kBFloat16>(a, c, begin, end);
  }
}

}  // namespace

void AdamWKernelScalar(const AdamWKernelArgs& a, const AdamWConstants& c,
                       int64_t begin, int64_t end) {
  switch (a.grad_type) {
    case GradType::kFloat32:
      return DispatchOut<GradType::kFloat32>(a, c, begin, end);
    case GradType::kBFloat16:
      return DispatchOut<GradType::kBFloat16>(a, c, begin, end);
    case GradType::kFloat16:
      return DispatchOut<GradType::kFloat16>(a, c, begin, end);
  }
}

}  // namespace sherd::internal
