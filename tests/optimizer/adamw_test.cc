// AdamW against the float64 reference on every ISA path this CPU supports,
// every thread count in {1, 2, 3}, every grad dtype and every p_out dtype;
// plus agreement between the paths and thread-count independence.

#include "server/optimizer/adamw.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <ostream>
#include <string>
#include <tuple>

#include "gtest/gtest.h"
#include "server/optimizer/float_convert.h"
#include "tests/optimizer/adamw_reference.h"
#include "tests/optimizer/adamw_test_util.h"

namespace sherd {

// Readable parameter values in test names and failure messages.
void PrintTo(Isa isa, std::ostream* os) { *os << IsaName(isa); }
void PrintTo(GradType t, std::ostream* os) {
  static constexpr const char* kNames[] = {"f32", "bf16", "f16"};
  *os << "grad " << kNames[static_cast<int>(t)];
}
void PrintTo(ParamOutType t, std::ostream* os) {
  static constexpr const char* kNames[] = {"none", "f32", "bf16"};
  *os << "p_out " << kNames[static_cast<int>(t)];
}

namespace {

using testing::AdamWReference;
using testing::Close;
using testing::Problem;
using testing::RunProblem;
using testing::RunResult;

constexpr double kRtol = 1e-6;

const Problem& SharedProblem() {
  static const Problem* problem = new Problem(testing::MakeProblem());
  return *problem;
}

// The reference depends only on the grad dtype: compute each once.
const AdamWReference& ReferenceFor(GradType type) {
  static std::mutex mu;
  static auto* cache = new std::map<GradType, AdamWReference>;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(type);
  if (it != cache->end()) return it->second;
  const Problem& pr = SharedProblem();
  AdamWReference ref(pr.p0);
  for (int64_t t = 1; t <= testing::kSteps; ++t) {
    ref.Step(pr.MakeGrads(type, t).exact, pr.SegmentsAt(t), t,
             Problem::MultiplierAt(t));
  }
  return cache->emplace(type, std::move(ref)).first->second;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

using Combo = std::tuple<Isa, int, GradType, ParamOutType>;

class AdamWReferenceTest : public ::testing::TestWithParam<Combo> {};

TEST_P(AdamWReferenceTest, MatchesFloat64Reference) {
  const auto [isa, threads, grad_type, out_type] = GetParam();
  if (!IsaSupported(isa)) {
    GTEST_SKIP() << IsaName(isa) << " is not supported by this CPU/OS";
  }
  const Problem& pr = SharedProblem();
  AdamW opt(threads, isa);
  ASSERT_EQ(opt.isa(), isa);
  ASSERT_EQ(opt.threads(), threads);
  const RunResult r = RunProblem(pr, opt, grad_type, out_type);
  const AdamWReference& ref = ReferenceFor(grad_type);
  const auto& segs = pr.base;

  const auto p = Close(r.p, ref.p, ref.p_mag, segs, kRtol);
  EXPECT_TRUE(p.ok) << p.Describe("param");
  const auto m = Close(r.m, ref.m, ref.m_mag, segs, kRtol);
  EXPECT_TRUE(m.ok) << m.Describe("exp_avg");
  const auto v = Close(r.v, ref.v, {}, segs, kRtol);
  EXPECT_TRUE(v.ok) << v.Describe("exp_avg_sq");

  // p_out is exactly the master param, rounded to its dtype.
  int64_t mismatches = 0;
  for (const AdamWSegment& s : segs) {
    for (int64_t i = s.begin; i < s.end; ++i) {
      if (out_type == ParamOutType::kFloat32) {
        mismatches += std::memcmp(&r.out_f32[i], &r.p[i], 4) != 0;
      } else if (out_type == ParamOutType::kBFloat16) {
        mismatches += r.out_bf16[i] != internal::FloatToBFloat16(r.p[i]);
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

std::string ComboName(const ::testing::TestParamInfo<Combo>& info) {
  static constexpr const char* kGrad[] = {"GradF32", "GradBf16", "GradF16"};
  static constexpr const char* kOut[] = {"NoOut", "OutF32", "OutBf16"};
  const auto [isa, threads, grad, out] = info.param;
  return std::string(IsaName(isa)) + "_T" + std::to_string(threads) + "_" +
         kGrad[static_cast<int>(grad)] + "_" + kOut[static_cast<int>(out)];
}

INSTANTIATE_TEST_SUITE_P(
    AllPaths, AdamWReferenceTest,
    ::testing::Combine(
        ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512),
        ::testing::Values(1, 2, 3),
        ::testing::Values(GradType::kFloat32, GradType::kBFloat16,
                          GradType::kFloat16),
        ::testing::Values(ParamOutType::kNone, ParamOutType::kFloat32,
                          ParamOutType::kBFloat16)),
    ComboName);

// The paths differ only by FMA contraction (see adamw.h): SIMD paths agree
// bit for bit with each other and within kRtol with the scalar one.
TEST(AdamWPaths, AgreeWithEachOther) {
  const Problem& pr = SharedProblem();
  const AdamWReference& ref = ReferenceFor(GradType::kFloat32);
  AdamW scalar_opt(1, Isa::kScalar);
  const RunResult scalar =
      RunProblem(pr, scalar_opt, GradType::kFloat32, ParamOutType::kBFloat16);
  std::vector<RunResult> simd;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!IsaSupported(isa)) continue;
    SCOPED_TRACE(IsaName(isa));
    AdamW opt(1, isa);
    simd.push_back(
        RunProblem(pr, opt, GradType::kFloat32, ParamOutType::kBFloat16));
    const RunResult& r = simd.back();
    // Compare with scalar, on the reference's error scales.
    const std::vector<double> sp(scalar.p.begin(), scalar.p.end());
    const std::vector<double> sm(scalar.m.begin(), scalar.m.end());
    const std::vector<double> sv(scalar.v.begin(), scalar.v.end());
    EXPECT_TRUE(Close(r.p, sp, ref.p_mag, pr.base, kRtol).ok);
    EXPECT_TRUE(Close(r.m, sm, ref.m_mag, pr.base, kRtol).ok);
    EXPECT_TRUE(Close(r.v, sv, {}, pr.base, kRtol).ok);
  }
  if (simd.size() == 2) {
    EXPECT_TRUE(BitEqual(simd[0].p, simd[1].p));
    EXPECT_TRUE(BitEqual(simd[0].m, simd[1].m));
    EXPECT_TRUE(BitEqual(simd[0].v, simd[1].v));
    EXPECT_EQ(simd[0].out_bf16, simd[1].out_bf16);
  } else {
    GTEST_SKIP() << "needs both AVX2 and AVX-512 for the bitwise check";
  }
}

// Chunking over threads must not change a single bit.
TEST(AdamWPaths, ThreadCountDoesNotChangeBits) {
  const Problem& pr = SharedProblem();
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!IsaSupported(isa)) continue;
    SCOPED_TRACE(IsaName(isa));
    AdamW one(1, isa);
    const RunResult base =
        RunProblem(pr, one, GradType::kFloat16, ParamOutType::kBFloat16, 20);
    for (int threads : {2, 3, 4}) {
      AdamW opt(threads, isa);
      const RunResult r =
          RunProblem(pr, opt, GradType::kFloat16, ParamOutType::kBFloat16, 20);
      EXPECT_TRUE(BitEqual(r.p, base.p)) << threads << " threads";
      EXPECT_TRUE(BitEqual(r.m, base.m)) << threads << " threads";
      EXPECT_TRUE(BitEqual(r.v, base.v)) << threads << " threads";
      EXPECT_EQ(r.out_bf16, base.out_bf16) << threads << " threads";
    }
  }
}

// How far fp32 storage drifts from a pure float64 trajectory: not a kernel
// property (torch drifts alike), bounded loosely to catch gross errors.
TEST(AdamWPaths, StaysNearPureFloat64Trajectory) {
  const Problem& pr = SharedProblem();
  AdamWReference exact(pr.p0);
  exact.round_state = false;
  for (int64_t t = 1; t <= testing::kSteps; ++t) {
    exact.Step(pr.MakeGrads(GradType::kFloat32, t).exact, pr.SegmentsAt(t), t,
               Problem::MultiplierAt(t));
  }
  AdamW opt(2);
  const RunResult r =
      RunProblem(pr, opt, GradType::kFloat32, ParamOutType::kNone);
  const auto p = Close(r.p, exact.p, exact.p_mag, pr.base, 1e-5);
  EXPECT_TRUE(p.ok) << p.Describe("param");
  const auto m = Close(r.m, exact.m, exact.m_mag, pr.base, 1e-5);
  EXPECT_TRUE(m.ok) << m.Describe("exp_avg");
  const auto v = Close(r.v, exact.v, {}, pr.base, 1e-5);
  EXPECT_TRUE(v.ok) << v.Describe("exp_avg_sq");
  std::printf(
      "fp32 state vs pure float64 after %d steps: p %.3g, m %.3g, "
      "v %.3g (normalized)\n",
      testing::kSteps, p.worst, m.worst, v.worst);
}

}  // namespace
}  // namespace sherd
