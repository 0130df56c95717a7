// The gradient summary (sum of squares of finite values, non-finite count)
// against a float64 reference on the CPU, and scale-and-cast against the
// CPU conversions. Argument checks run without a GPU too.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_kernels/device.h"
#include "cuda_kernels/grad_ops.h"
#include "gtest/gtest.h"
#include "server/optimizer/float_convert.h"
#include "tests/cuda/cuda_test_util.h"

namespace sherd {
namespace {

using cuda_test::Bits;
using cuda_test::DeviceBuffer;
using cuda_test::FromBits;
using cuda_test::RandomFloats;

class GradSummaryTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    absl::StatusOr<std::unique_ptr<CudaGradSummary>> s =
        CudaGradSummary::Create();
    ASSERT_TRUE(s.ok()) << s.status();
    summary_ = *std::move(s);
  }

  CudaGradStats Summarize(const void* grad, GradType t, int64_t n) {
    absl::Status launched = summary_->Launch(grad, t, n, nullptr);
    EXPECT_TRUE(launched.ok()) << launched;
    absl::StatusOr<CudaGradStats> stats = summary_->Read(nullptr);
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *stats : CudaGradStats{};
  }

  std::unique_ptr<CudaGradSummary> summary_;
};

struct Reference {
  double sum_sq = 0;
  int64_t bad = 0;
};

Reference Ref(const std::vector<float>& x) {
  Reference r;
  for (float f : x) {
    if (std::isfinite(f)) {
      r.sum_sq += static_cast<double>(f) * f;
    } else {
      ++r.bad;
    }
  }
  return r;
}

TEST_F(GradSummaryTest, MatchesFloat64ReferenceAtEverySizeAndAlignment) {
  for (int64_t n : {0, 1, 3, 4, 5, 1000, 65537, (1 << 20) + 3}) {
    for (int misalign : {0, 1, 2}) {
      SCOPED_TRACE(testing::Message() << "n " << n << " misalign " << misalign);
      std::vector<float> g = RandomFloats(n, 1e-4f, 10.0f, n + misalign);
      DeviceBuffer d((n + 4) * 4);
      d.Upload(g, misalign);
      const CudaGradStats s = Summarize(d.as<float>(misalign),
                                        GradType::kFloat32, n);
      const Reference r = Ref(g);
      EXPECT_EQ(s.non_finite, 0);
      EXPECT_NEAR(s.sum_sq, r.sum_sq, 1e-9 * r.sum_sq);
    }
  }
}

TEST_F(GradSummaryTest, CountsNonFiniteAndLeavesThemOutOfTheSum) {
  const int64_t n = 100003;
  std::vector<float> g = RandomFloats(n, 1e-3f, 1.0f, 5);
  for (int64_t i : {int64_t{0}, int64_t{1}, n / 2, n - 2, n - 1}) {
    g[i] = (i % 3 == 0) ? NAN : (i % 3 == 1 ? INFINITY : -INFINITY);
  }
  g[777] = FromBits(0x7f800001u);  // signalling NaN
  g[778] = 3.0e38f;                // huge but finite: its square is fine
  DeviceBuffer d(n * 4);
  d.Upload(g);
  const CudaGradStats s = Summarize(d.as<float>(), GradType::kFloat32, n);
  const Reference r = Ref(g);
  EXPECT_EQ(s.non_finite, 6);
  EXPECT_EQ(r.bad, 6);
  EXPECT_NEAR(s.sum_sq, r.sum_sq, 1e-9 * r.sum_sq);
}

TEST_F(GradSummaryTest, SixteenBitGrads) {
  const int64_t n = 50001;
  std::vector<float> f = RandomFloats(n, 1e-3f, 1.0f, 9);
  std::vector<uint16_t> bf(n), hf(n);
  std::vector<float> bf_exact(n), hf_exact(n);
  for (int64_t i = 0; i < n; ++i) {
    bf[i] = internal::FloatToBFloat16(f[i]);
    bf_exact[i] = internal::BFloat16ToFloat(bf[i]);
    hf[i] = static_cast<uint16_t>((Bits(f[i]) & 0x8fff) | 0x3000);
    hf_exact[i] = internal::HalfToFloat(hf[i]);
  }
  bf[10] = 0x7fc0;  // bf16 NaN
  bf_exact[10] = NAN;
  hf[11] = 0x7c00;  // fp16 +inf
  hf_exact[11] = INFINITY;
  DeviceBuffer d(n * 2);
  d.Upload(bf);
  CudaGradStats s = Summarize(d.as<uint16_t>(), GradType::kBFloat16, n);
  EXPECT_EQ(s.non_finite, 1);
  EXPECT_NEAR(s.sum_sq, Ref(bf_exact).sum_sq, 1e-9 * Ref(bf_exact).sum_sq);
  d.Upload(hf);
  s = Summarize(d.as<uint16_t>(), GradType::kFloat16, n);
  EXPECT_EQ(s.non_finite, 1);
  EXPECT_NEAR(s.sum_sq, Ref(hf_exact).sum_sq, 1e-9 * Ref(hf_exact).sum_sq);
}

TEST_F(GradSummaryTest, IsDeterministic) {
  const int64_t n = (1 << 22) + 1;
  std::vector<float> g = RandomFloats(n, 1e-6f, 1e3f, 11);
  DeviceBuffer d(n * 4);
  d.Upload(g);
  const CudaGradStats a = Summarize(d.as<float>(), GradType::kFloat32, n);
  for (int i = 0; i < 5; ++i) {
    const CudaGradStats b = Summarize(d.as<float>(), GradType::kFloat32, n);
    ASSERT_EQ(a.sum_sq, b.sum_sq);  // bit for bit, not just close
  }
}

class ScaleCastTest : public cuda_test::CudaTest {};

TEST_F(ScaleCastTest, Fp32ToBf16RoundsLikeTheCpu) {
  std::vector<float> x = RandomFloats(70001, 1e-30f, 1e30f, 21);
  const float specials[] = {0.0f, -0.0f, 1.00390625f, 1.01171875f, INFINITY,
                            -INFINITY, NAN, FromBits(0xffc12345u),
                            FromBits(0x7f7fffffu), 1e-40f};
  for (size_t i = 0; i < std::size(specials); ++i) x[i * 7 + 1] = specials[i];
  const int64_t n = static_cast<int64_t>(x.size());
  DeviceBuffer src(n * 4), dst(n * 2 + 16);
  src.Upload(x);
  for (int misalign : {0, 1}) {
    ASSERT_TRUE(LaunchScaleCast(src.as<float>(), GradType::kFloat32,
                                dst.as<uint16_t>(misalign),
                                GradType::kBFloat16, n, 1.0f, nullptr)
                    .ok());
    const std::vector<uint16_t> got = dst.Download<uint16_t>(n, misalign);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(got[i], internal::FloatToBFloat16(x[i])) << i;
    }
  }
}

TEST_F(ScaleCastTest, ScalesInPlaceAndWidens) {
  const int64_t n = 10007;
  std::vector<float> x = RandomFloats(n, 1e-3f, 1e3f, 22);
  DeviceBuffer d(n * 4);
  d.Upload(x);
  ASSERT_TRUE(LaunchScaleCast(d.as<float>(), GradType::kFloat32,
                              d.as<float>(), GradType::kFloat32, n,
                              1.0f / 1024, nullptr)
                  .ok());
  std::vector<float> got = d.Download<float>(n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], x[i] * (1.0f / 1024));

  std::vector<uint16_t> h(n);
  for (int64_t i = 0; i < n; ++i) h[i] = static_cast<uint16_t>(i * 7);
  DeviceBuffer d16(n * 2);
  d16.Upload(h);
  for (GradType t : {GradType::kBFloat16, GradType::kFloat16}) {
    ASSERT_TRUE(LaunchScaleCast(d16.as<uint16_t>(), t, d.as<float>(),
                                GradType::kFloat32, n, 1.0f, nullptr)
                    .ok());
    got = d.Download<float>(n);
    for (int64_t i = 0; i < n; ++i) {
      const float want = t == GradType::kFloat16
                             ? internal::HalfToFloat(h[i])
                             : internal::BFloat16ToFloat(h[i]);
      ASSERT_EQ(Bits(got[i]), Bits(want)) << i;
    }
  }
  // d now holds the widened fp16 values; narrowing them again is the
  // identity on every finite pattern.
  DeviceBuffer back(n * 2);
  ASSERT_TRUE(LaunchScaleCast(d.as<float>(), GradType::kFloat32,
                              back.as<uint16_t>(), GradType::kFloat16, n,
                              1.0f, nullptr)
                  .ok());
  const std::vector<uint16_t> again = back.Download<uint16_t>(n);
  for (int64_t i = 0; i < n; ++i) {
    if ((h[i] & 0x7c00) != 0x7c00) {
      ASSERT_EQ(again[i], h[i]) << i;
    }
  }
}

// Argument checks come before any CUDA call: these run everywhere.
TEST(ScaleCastArgs, RejectsOverlapsNullsAndNegativeSizes) {
  alignas(16) static float buf[64];
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(LaunchScaleCast(buf, GradType::kFloat32, buf + 1,
                            GradType::kFloat32, 8, 1.0f, nullptr)
                .code(),
            kInvalid);
  EXPECT_EQ(LaunchScaleCast(buf, GradType::kFloat32, buf,
                            GradType::kBFloat16, 8, 1.0f, nullptr)
                .code(),
            kInvalid);
  EXPECT_EQ(LaunchScaleCast(nullptr, GradType::kFloat32, buf,
                            GradType::kFloat32, 8, 1.0f, nullptr)
                .code(),
            kInvalid);
  EXPECT_EQ(LaunchScaleCast(buf, GradType::kFloat32, buf + 32,
                            GradType::kFloat32, -1, 1.0f, nullptr)
                .code(),
            kInvalid);
  EXPECT_TRUE(LaunchScaleCast(nullptr, GradType::kFloat32, nullptr,
                              GradType::kFloat32, 0, 1.0f, nullptr)
                  .ok());
}

}  // namespace
}  // namespace sherd
