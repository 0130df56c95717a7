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
  float* __restrict param = a.param;
  float* __restrict exp_avg = a.exp_avg;
  float* __restrict exp_avg_sq = a.exp_avg_sq;
  for (int64_t i = begin; i < end; ++i) {
    const float g = LoadGrad<kGrad>(a.grad, i) * c.grad_multiplier;
    const float m = exp_avg[i] + c.one_minus_beta1 * (g - exp_avg[i]);
    const float v = exp_avg_sq[i] + c.one_minus_beta2 * (g * g - exp_avg_sq[i]);
    const float denom = std::sqrt(v) * c.inv_sqrt_bc2 + c.eps;
    const float p = param[i] - (c.lr_wd * param[i] + c.step_size * (m / denom));
    param[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
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
