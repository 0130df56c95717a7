// AdamW edge cases: memory outside the segments is never touched, degenerate
// input, non-finite values, bf16 rounding of special values, the constants.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/optimizer/adamw.h"
#include "server/optimizer/adamw_kernel.h"
#include "server/optimizer/float_convert.h"
#include "tests/optimizer/adamw_test_util.h"

namespace sherd {
namespace {

constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512};
constexpr uint32_t kPoison32 = 0x7fbadbadu;  // a signalling NaN
constexpr uint16_t kPoison16 = 0xdbad;

std::vector<float> Poisoned(size_t n) {
  std::vector<float> v(n);
  for (float& x : v) std::memcpy(&x, &kPoison32, 4);
  return v;
}

bool IsPoison(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b == kPoison32;
}

TEST(AdamWEdge, LeavesElementsOutsideSegmentsUntouched) {
  const testing::Problem pr = testing::MakeProblem();
  std::vector<bool> inside(pr.size, false);
  for (const AdamWSegment& s : pr.base) {
    for (int64_t i = s.begin; i < s.end; ++i) inside[i] = true;
  }
  for (Isa isa : kAllIsas) {
    if (!IsaSupported(isa)) continue;
    for (int threads : {1, 3}) {
      for (ParamOutType out :
           {ParamOutType::kFloat32, ParamOutType::kBFloat16}) {
        SCOPED_TRACE(std::string(IsaName(isa)) + " threads " +
                     std::to_string(threads));
        std::vector<float> p = Poisoned(pr.size), m = Poisoned(pr.size),
                           v = Poisoned(pr.size), out32 = Poisoned(pr.size);
        std::vector<uint16_t> out16(pr.size, kPoison16);
        for (int64_t i = 0; i < pr.size; ++i) {
          if (inside[i]) p[i] = pr.p0[i], m[i] = 0, v[i] = 0;
        }
        AdamW opt(threads, isa);
        for (int64_t t = 1; t <= 3; ++t) {
          // Grads outside the segments are NaN: reading them is harmless,
          // using them would show up as NaN in the state.
          testing::Grads g = pr.MakeGrads(GradType::kFloat32, t);
          for (int64_t i = 0; i < pr.size; ++i) {
            if (!inside[i]) g.f32[i] = std::numeric_limits<float>::quiet_NaN();
          }
          AdamWBuffers buf{g.f32.data(),
                           p.data(),
                           m.data(),
                           v.data(),
                           out == ParamOutType::kFloat32
                               ? static_cast<void*>(out32.data())
                               : static_cast<void*>(out16.data()),
                           GradType::kFloat32,
                           out};
          opt.Apply(buf, pr.SegmentsAt(t), t, 1.0f);
        }
        int64_t touched = 0, bad_inside = 0;
        for (int64_t i = 0; i < pr.size; ++i) {
          const bool poisoned = IsPoison(p[i]) && IsPoison(m[i]) &&
                                IsPoison(v[i]) && IsPoison(out32[i]) &&
                                out16[i] == kPoison16;
          if (!inside[i]) touched += !poisoned;
          if (inside[i])
            bad_inside += !std::isfinite(p[i]) || !std::isfinite(v[i]);
        }
        EXPECT_EQ(touched, 0);
        EXPECT_EQ(bad_inside, 0);
      }
    }
  }
}

// Large applies write p_out with streaming stores when it is aligned (see
// adamw.cc); split into small applies they use plain stores. Both must give
// the same bits, aligned or not.
TEST(AdamWEdge, StreamedParamOutMatchesPlainStores) {
  constexpr int64_t kN = (int64_t{1} << 20) + 3 * 1024 + 37;
  std::vector<float> g(kN), p0(kN);
  for (int64_t i = 0; i < kN; ++i) {
    g[i] = 1e-3f * static_cast<float>(i % 997 + 1) * (i % 2 ? 1.0f : -1.0f);
    p0[i] = 0.5f + 1e-4f * static_cast<float>(i % 1013);
  }
  const AdamWSegment whole[] = {{0, kN - 40, {}}, {kN - 37, kN, {}}};
  for (Isa isa : kAllIsas) {
    if (!IsaSupported(isa)) continue;
    for (ParamOutType type :
         {ParamOutType::kFloat32, ParamOutType::kBFloat16}) {
      for (int misalign : {0, 1}) {
        SCOPED_TRACE(std::string(IsaName(isa)) + " misalign " +
                     std::to_string(misalign));
        const size_t width = type == ParamOutType::kFloat32 ? 4 : 2;
        struct Run {
          std::vector<float> p, m, v;
          std::vector<char> storage;
          char* out;  // 64-byte aligned, then offset by `misalign` elements
        };
        Run big{p0, std::vector<float>(kN), std::vector<float>(kN),
                std::vector<char>((kN + 64) * width), nullptr};
        Run small = big;
        for (Run* r : {&big, &small}) {
          char* base = r->storage.data();
          r->out = base + (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64 +
                   misalign * width;
        }
        AdamW opt(2, isa);
        for (int64_t t = 1; t <= 2; ++t) {
          for (Run* r : {&big, &small}) {
            AdamWBuffers buf{g.data(),    r->p.data(), r->m.data(),
                             r->v.data(), r->out,      GradType::kFloat32,
                             type};
            if (r == &big) {
              opt.Apply(buf, whole, t, 1.0f);
            } else {
              for (const AdamWSegment& s : whole) {
                for (int64_t b = s.begin; b < s.end; b += 100000) {
                  const AdamWSegment part{b, std::min(b + 100000, s.end), {}};
                  opt.Apply(buf, {&part, 1}, t, 1.0f);
                }
              }
            }
          }
        }
        EXPECT_TRUE(big.p == small.p && big.m == small.m && big.v == small.v);
        EXPECT_EQ(std::memcmp(big.out, small.out, kN * width), 0);
      }
    }
  }
}

TEST(AdamWEdge, DegenerateSegmentsAndMissingOutputAreNoOps) {
  std::vector<float> g(64, 1.0f), p(64, 2.0f), m(64, 0.0f), v(64, 0.0f);
  for (Isa isa : kAllIsas) {
    if (!IsaSupported(isa)) continue;
    for (int threads : {1, 2}) {
      AdamW opt(threads, isa);
      AdamWBuffers buf{g.data(),
                       p.data(),
                       m.data(),
                       v.data(),
                       nullptr,
                       GradType::kFloat32,
                       ParamOutType::kBFloat16};
      opt.Apply(buf, {}, 1, 1.0f);
      const AdamWSegment empty[] = {{5, 5, {}}, {9, 3, {}}};
      opt.Apply(buf, empty, 1, 1.0f);
      EXPECT_EQ(p, std::vector<float>(64, 2.0f));
      // A null param_out with a dtype set only skips the copy.
      const AdamWSegment one[] = {{0, 64, {}}};
      opt.Apply(buf, one, 1, 1.0f);
      EXPECT_FLOAT_EQ(p[0], 2.0f - 1e-3f);
      p.assign(64, 2.0f), m.assign(64, 0.0f), v.assign(64, 0.0f);
    }
  }
}

TEST(AdamWEdge, NonFiniteGradsPropagateAsNaNNotInfinity) {
  constexpr int kN = 37;
  for (Isa isa : kAllIsas) {
    if (!IsaSupported(isa)) continue;
    SCOPED_TRACE(IsaName(isa));
    std::vector<float> g(kN, 0.5f), p(kN, 1.0f), m(kN, 0.0f), v(kN, 0.0f);
    std::vector<uint16_t> out(kN, 0);
    g[3] = std::numeric_limits<float>::quiet_NaN();
    g[33] = std::numeric_limits<float>::infinity();
    AdamW opt(1, isa);
    AdamWBuffers buf{g.data(),
                     p.data(),
                     m.data(),
                     v.data(),
                     out.data(),
                     GradType::kFloat32,
                     ParamOutType::kBFloat16};
    const AdamWSegment seg[] = {{0, kN, {}}};
    opt.Apply(buf, seg, 1, 1.0f);
    for (int i = 0; i < kN; ++i) {
      const bool poisoned = i == 3 || i == 33;
      EXPECT_EQ(std::isnan(p[i]), poisoned) << i;
      // bf16 NaN: exponent all ones, mantissa nonzero.
      EXPECT_EQ((out[i] & 0x7f80) == 0x7f80 && (out[i] & 0x7f) != 0, poisoned)
          << i;
    }
  }
}

// With lr = 0 and zero grads the master is unchanged, so p_out shows the
// bf16 rounding of chosen bit patterns on every path. (Not infinity: a step
// turns an infinite master into NaN, inf - 0 * inf; float_convert_test
// covers it.)
TEST(AdamWEdge, Bf16OutputRoundsToNearestEvenOnEveryPath) {
  const std::vector<std::pair<uint32_t, uint16_t>> cases = {
      {0x3f808000, 0x3f80},  // tie, even below: down
      {0x3f818000, 0x3f82},  // tie, odd below: up
      {0x3f808001, 0x3f81},  // above the tie: up
      {0x3f807fff, 0x3f80},  // below the tie: down
      {0x80000000, 0x8000},  // -0
      {0x00000001, 0x0000},  // smallest subnormal
      {0x7f7fffff, 0x7f80},  // max float rounds to infinity, as it should
      {0x7fc00001, 0x7fc0},  // NaN with a low payload stays NaN
      {0xffff0001, 0xffff},  // negative NaN keeps its sign and high payload
  };
  const int n = static_cast<int>(cases.size());
  for (Isa isa : kAllIsas) {
    if (!IsaSupported(isa)) continue;
    SCOPED_TRACE(IsaName(isa));
    std::vector<float> g(n, 0.0f), p(n), m(n, 0.0f), v(n, 0.0f);
    std::vector<uint16_t> out(n, 0);
    for (int i = 0; i < n; ++i) std::memcpy(&p[i], &cases[i].first, 4);
    AdamWSegment seg{0, n, {}};
    seg.hyper.lr = 0.0f;
    AdamW opt(1, isa);
    AdamWBuffers buf{g.data(),
                     p.data(),
                     m.data(),
                     v.data(),
                     out.data(),
                     GradType::kFloat32,
                     ParamOutType::kBFloat16};
    opt.Apply(buf, {&seg, 1}, 1, 1.0f);
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(out[i], cases[i].second) << std::hex << cases[i].first;
      EXPECT_EQ(internal::FloatToBFloat16(p[i]), cases[i].second);
    }
  }
}

TEST(AdamWEdge, ConstantsComeFromDoublePrecision) {
  AdamWHyper h;
  h.lr = 1e-3f, h.beta1 = 0.9f, h.beta2 = 0.999f, h.weight_decay = 0.1f;
  const auto c1 = internal::MakeAdamWConstants(h, 1, 0.5f);
  EXPECT_EQ(c1.step_size, static_cast<float>(1e-3f / (1.0 - 0.9f)));
  EXPECT_EQ(c1.inv_sqrt_bc2, static_cast<float>(1.0 / std::sqrt(1.0 - 0.999f)));
  EXPECT_EQ(c1.lr_wd, static_cast<float>(double{1e-3f} * double{0.1f}));
  EXPECT_EQ(c1.one_minus_beta2, static_cast<float>(1.0 - double{0.999f}));
  EXPECT_EQ(c1.grad_multiplier, 0.5f);
  // Late steps: the corrections vanish (a float pow would lose beta2^t).
  const auto big = internal::MakeAdamWConstants(h, 10'000'000, 1.0f);
  EXPECT_EQ(big.inv_sqrt_bc2, 1.0f);
  EXPECT_EQ(big.step_size, 1e-3f);
  const auto mid = internal::MakeAdamWConstants(h, 1000, 1.0f);
  EXPECT_EQ(mid.inv_sqrt_bc2,
            static_cast<float>(
                1.0 / std::sqrt(1.0 - std::pow(double{0.999f}, 1000.0))));
}

TEST(AdamWEdge, IsaSelection) {
  EXPECT_TRUE(IsaSupported(Isa::kScalar));
  EXPECT_TRUE(IsaSupported(BestIsa()));
  for (Isa isa : kAllIsas) {
    AdamW opt(1, isa);
    EXPECT_TRUE(IsaSupported(opt.isa()));
    if (IsaSupported(isa)) {
      EXPECT_EQ(opt.isa(), isa);
    }
  }
  EXPECT_EQ(AdamW(2).isa(), BestIsa());
  EXPECT_EQ(IsaName(Isa::kAvx512), "avx512");
}

}  // namespace
}  // namespace sherd
