// Test-only: the shared AdamW test problem (segments with different
// hyperparameters, gaps, tails, a per-step lr schedule and grad multiplier,
// deterministic random grads of every dtype) and a driver that runs it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "server/optimizer/adamw.h"

namespace sherd::testing {

inline constexpr int kSteps = 100;

// Grads for one step: raw bits in the requested dtype, plus their exact
// values for the float64 reference.
struct Grads {
  std::vector<float> f32;
  std::vector<uint16_t> u16;
  std::vector<double> exact;
  const void* data(GradType t) const {
    return t == GradType::kFloat32 ? static_cast<const void*>(f32.data())
                                   : static_cast<const void*>(u16.data());
  }
};

// Independent of server/optimizer/float_convert.h on purpose.
inline double DecodeHalf(uint16_t h) {
  const int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  const double mag =
      exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return (h & 0x8000) ? -mag : mag;
}

struct Problem {
  int64_t size = 0;
  std::vector<AdamWSegment> base;  // step-1 hyperparameters
  std::vector<float> p0;
  std::vector<int> grad_exp;  // per-element grad magnitude, log2

  // The hyperparameters of step t: lr decays linearly, as a scheduler would.
  std::vector<AdamWSegment> SegmentsAt(int64_t step) const {
    std::vector<AdamWSegment> s = base;
    for (AdamWSegment& seg : s) {
      seg.hyper.lr *= static_cast<float>(1.0 - 0.5 * step / kSteps);
    }
    return s;
  }
  static float MultiplierAt(int64_t step) {
    static constexpr float kMult[] = {0.37f, 2.5f, 0.125f};
    return kMult[step % 3];
  }

  Grads MakeGrads(GradType type, int64_t step) const {
    std::mt19937_64 rng(1000 + step);
    std::uniform_int_distribution<int> jitter(-2, 2);
    Grads g;
    g.exact.resize(size);
    if (type == GradType::kFloat32)
      g.f32.resize(size);
    else
      g.u16.resize(size);
    for (int64_t i = 0; i < size; ++i) {
      const uint64_t r = rng();
      const uint32_t sign = r & 1;
      const int e = grad_exp[i] + jitter(rng);  // value ~ +-2^e
      if (type == GradType::kFloat32) {
        const uint32_t bits = sign << 31 |
                              static_cast<uint32_t>(e + 127) << 23 |
                              (static_cast<uint32_t>(r >> 8) & 0x7fffff);
        std::memcpy(&g.f32[i], &bits, 4);
        g.exact[i] = g.f32[i];
      } else if (type == GradType::kBFloat16) {
        const uint32_t bits = sign << 15 | static_cast<uint32_t>(e + 127) << 7 |
                              (static_cast<uint32_t>(r >> 8) & 0x7f);
        g.u16[i] = static_cast<uint16_t>(bits);
        const uint32_t wide = bits << 16;
        float f;
        std::memcpy(&f, &wide, 4);
        g.exact[i] = f;
      } else {
        // fp16 runs 16x smaller, so that values below 2^-14 exercise
        // subnormal halves.
        const int fe = std::max(e - 4, -18);
        const uint32_t mant = 1024 + static_cast<uint32_t>((r >> 8) & 0x3ff);
        const uint32_t bits =
            fe >= -14 ? (static_cast<uint32_t>(fe + 15) << 10 | (mant & 0x3ff))
                      : std::max<uint32_t>(mant >> (-14 - fe), 1);
        g.u16[i] = static_cast<uint16_t>(sign << 15 | bits);
        g.exact[i] = DecodeHalf(g.u16[i]);
      }
    }
    return g;
  }
};

// Four segments with different hyperparameters, listed out of address
// order; none a multiple of 16 long, one longer than several 16 Ki pieces;
// gaps before, between and after them.
inline Problem MakeProblem() {
  Problem pr;
  auto hyper = [](float lr, float b1, float b2, float eps, float wd) {
    AdamWHyper h;
    h.lr = lr, h.beta1 = b1, h.beta2 = b2, h.eps = eps, h.weight_decay = wd;
    return h;
  };
  pr.base = {
      {41320, 61325, hyper(5e-4f, 0.9f, 0.98f, 1e-8f, 0.05f)},
      {3, 40003, hyper(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f)},
      {41300, 41313, hyper(1e-2f, 0.95f, 0.9999f, 1e-7f, 0.0f)},
      {40010, 41247, hyper(3e-3f, 0.8f, 0.99f, 1e-6f, 0.1f)},
  };
  pr.size = 61337;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> decade(-2.0f, 1.0f);
  std::uniform_int_distribution<int> gexp(-12, 4);
  for (int64_t i = 0; i < pr.size; ++i) {
    pr.p0.push_back(normal(rng) * std::pow(10.0f, decade(rng)));
    pr.grad_exp.push_back(gexp(rng));
  }
  return pr;
}

// Final state of one run of the problem.
struct RunResult {
  std::vector<float> p, m, v;
  std::vector<float> out_f32;
  std::vector<uint16_t> out_bf16;
};

inline RunResult RunProblem(const Problem& pr, AdamW& opt, GradType grad_type,
                            ParamOutType out_type, int steps = kSteps) {
  RunResult r;
  r.p = pr.p0;
  r.m.assign(pr.size, 0.0f);
  r.v.assign(pr.size, 0.0f);
  r.out_f32.assign(pr.size, 0.0f);
  r.out_bf16.assign(pr.size, 0);
  for (int64_t t = 1; t <= steps; ++t) {
    const Grads g = pr.MakeGrads(grad_type, t);
    AdamWBuffers buf;
    buf.grad = g.data(grad_type);
    buf.grad_type = grad_type;
    buf.param = r.p.data();
    buf.exp_avg = r.m.data();
    buf.exp_avg_sq = r.v.data();
    buf.param_out_type = out_type;
    buf.param_out = out_type == ParamOutType::kFloat32
                        ? static_cast<void*>(r.out_f32.data())
                        : static_cast<void*>(r.out_bf16.data());
    if (out_type == ParamOutType::kNone) buf.param_out = nullptr;
    const std::vector<AdamWSegment> segs = pr.SegmentsAt(t);
    opt.Apply(buf, segs, t, Problem::MultiplierAt(t));
  }
  return r;
}

}  // namespace sherd::testing
