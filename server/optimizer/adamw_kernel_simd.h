// Internal: the AdamW loop shared by the SIMD paths, written once over a
// vector-traits type V (see adamw_kernel_avx2.cc / adamw_kernel_avx512.cc).
//
// Include only from a SIMD translation unit, with V defined in that unit's
// anonymous namespace: the instantiations then have internal linkage, so code
// compiled for one instruction set can never be merged into another unit.
//
// Every element, the tail included, goes through the same vector code: the
// tail is staged through stack buffers instead of a scalar loop, so a result
// does not depend on where a chunk or segment boundary falls, nor on the
// thread count, and the AVX2 and AVX-512 paths agree bit for bit.
#pragma once

#include <cstdint>
#include <type_traits>

#include "server/optimizer/adamw_kernel.h"

namespace sherd::internal {

template <class V, GradType kGrad, ParamOutType kOut>
struct SimdAdamW {
  using Vec = typename V::Vec;
  static constexpr int kWidth = V::kWidth;
  using GradT =
      std::conditional_t<kGrad == GradType::kFloat32, float, uint16_t>;
  using OutT =
      std::conditional_t<kOut == ParamOutType::kBFloat16, uint16_t, float>;

  struct Consts {
    Vec mult, lr_wd, omb1, omb2, step, inv_sqrt_bc2, eps;
  };

  static Vec LoadGrad(const GradT* g) {
    if constexpr (kGrad == GradType::kFloat32) {
      return V::Load(g);
    } else if constexpr (kGrad == GradType::kBFloat16) {
      return V::LoadBf16(g);
    } else {
      return V::LoadHalf(g);
    }
  }

  // One vector of elements starting at index i of every stream.
  template <bool kStream>
  static void Block(const Consts& k, const GradT* grad, const float* param,
                    const float* exp_avg, const float* exp_avg_sq,
                    float* param_dst, float* exp_avg_dst, float* exp_avg_sq_dst,
                    OutT* out, int64_t i) {
    const Vec g = V::Mul(LoadGrad(grad + i), k.mult);
    const Vec p = V::Load(param + i);
    const Vec m0 = V::Load(exp_avg + i);
    const Vec v0 = V::Load(exp_avg_sq + i);
    const Vec m = V::Fmadd(k.omb1, V::Sub(g, m0), m0);
    const Vec v = V::Fmadd(k.omb2, V::Fmsub(g, g, v0), v0);
    const Vec denom = V::Fmadd(V::Sqrt(v), k.inv_sqrt_bc2, k.eps);
    const Vec delta = V::Fmadd(k.lr_wd, p, V::Mul(k.step, V::Div(m, denom)));
    const Vec p_new = V::Sub(p, delta);
    V::Store(param_dst + i, p_new);
    V::Store(exp_avg_dst + i, m);
    V::Store(exp_avg_sq_dst + i, v);
    if constexpr (kOut == ParamOutType::kFloat32) {
      if constexpr (kStream) {
        V::Stream(out + i, p_new);
      } else {
        V::Store(out + i, p_new);
      }
    } else if constexpr (kOut == ParamOutType::kBFloat16) {
      if constexpr (kStream) {
        V::StreamHalf(out + i, V::ToBf16(p_new));
      } else {
        V::StoreHalf(out + i, V::ToBf16(p_new));
      }
    }
  }

  template <bool kStream>
  static int64_t Loop(const Consts& k, const GradT* grad,
                      const AdamWKernelArgs& a, OutT* out, int64_t begin,
                      int64_t end) {
    int64_t i = begin;
    // Two independent vectors per iteration keep more loads in flight.
    for (; i + 2 * kWidth <= end; i += 2 * kWidth) {
      Block<kStream>(k, grad, a.param, a.exp_avg, a.exp_avg_sq, a.param_dst,
                     a.exp_avg_dst, a.exp_avg_sq_dst, out, i);
      Block<kStream>(k, grad, a.param, a.exp_avg, a.exp_avg_sq, a.param_dst,
                     a.exp_avg_dst, a.exp_avg_sq_dst, out, i + kWidth);
    }
    for (; i + kWidth <= end; i += kWidth) {
      Block<kStream>(k, grad, a.param, a.exp_avg, a.exp_avg_sq, a.param_dst,
                     a.exp_avg_dst, a.exp_avg_sq_dst, out, i);
    }
    return i;
  }

  static void Run(const AdamWKernelArgs& a, const AdamWConstants& c,
                  int64_t begin, int64_t end) {
    const Consts k = {V::Set1(c.grad_multiplier),
                      V::Set1(c.lr_wd),
                      V::Set1(c.one_minus_beta1),
                      V::Set1(c.one_minus_beta2),
                      V::Set1(c.step_size),
                      V::Set1(c.inv_sqrt_bc2),
                      V::Set1(c.eps)};
    const auto* grad = static_cast<const GradT*>(a.grad);
    auto* out = static_cast<OutT*>(a.param_out);
    // Streaming stores need the vector-sized alignment the layout gives.
    constexpr uintptr_t kOutVecBytes = kWidth * sizeof(OutT);
    int64_t i;
    if (kOut != ParamOutType::kNone && a.stream_param_out &&
        reinterpret_cast<uintptr_t>(out + begin) % kOutVecBytes == 0) {
      i = Loop<true>(k, grad, a, out, begin, end);
      // Streaming stores are weakly ordered: fence before the pool's
      // release publishes this piece to other threads.
      V::Fence();
    } else {
      i = Loop<false>(k, grad, a, out, begin, end);
    }
    if (i < end) Tail(k, grad, a, out, i, static_cast<int>(end - i));
  }

  // Fewer than kWidth elements: zero-padded copies, so the padding lanes
  // compute harmless finite values that are never written back.
  static void Tail(const Consts& k, const GradT* grad, const AdamWKernelArgs& a,
                   OutT* out, int64_t i, int n) {
    alignas(64) GradT g[kWidth] = {};
    alignas(64) float p[kWidth] = {};
    alignas(64) float m[kWidth] = {};
    alignas(64) float v[kWidth] = {};
    alignas(64) OutT o[kWidth] = {};
    for (int j = 0; j < n; ++j) {
      g[j] = grad[i + j];
      p[j] = a.param[i + j];
      m[j] = a.exp_avg[i + j];
      v[j] = a.exp_avg_sq[i + j];
    }
    Block<false>(k, g, p, m, v, p, m, v, o, 0);
    for (int j = 0; j < n; ++j) {
      a.param_dst[i + j] = p[j];
      a.exp_avg_dst[i + j] = m[j];
      a.exp_avg_sq_dst[i + j] = v[j];
      if constexpr (kOut != ParamOutType::kNone) out[i + j] = o[j];
    }
  }
};

// The (grad type x param-out type) switch every path needs.
template <class V>
void RunSimdAdamW(const AdamWKernelArgs& a, const AdamWConstants& c,
                  int64_t begin, int64_t end) {
  auto with_out = [&](auto grad_tag) {
    constexpr GradType kGrad = decltype(grad_tag)::value;
    switch (a.param_out_type) {
      case ParamOutType::kNone:
        return SimdAdamW<V, kGrad, ParamOutType::kNone>::Run(a, c, begin, end);
      case ParamOutType::kFloat32:
        return SimdAdamW<V, kGrad, ParamOutType::kFloat32>::Run(a, c, begin,
                                                                end);
      case ParamOutType::kBFloat16:
        return SimdAdamW<V, kGrad, ParamOutType::kBFloat16>::Run(a, c, begin,
                                                                 end);
    }
  };
  switch (a.grad_type) {
    case GradType::kFloat32:
      return with_out(std::integral_constant<GradType, GradType::kFloat32>());
    case GradType::kBFloat16:
      return with_out(std::integral_constant<GradType, GradType::kBFloat16>());
    case GradType::kFloat16:
      return with_out(std::integral_constant<GradType, GradType::kFloat16>());
  }
}

}  // namespace sherd::internal
