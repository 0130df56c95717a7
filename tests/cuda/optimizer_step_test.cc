// The whole GPU optimizer step (summary, device-side skip/clip decision,
// AdamW + bf16 copy) against what server/step/step_pipeline.cc does on the
// CPU with the same numbers.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_kernels/device.h"
#include "cuda_kernels/optimizer_step.h"
#include "gtest/gtest.h"
#include "server/optimizer/adamw.h"
#include "tests/cuda/cuda_test_util.h"

namespace sherd {
namespace {

using cuda_test::Bits;
using cuda_test::CountBitDifferences;
using cuda_test::CountRelativeMismatches;
using cuda_test::DeviceBuffer;
using cuda_test::RandomFloats;

constexpr int64_t kN = 200003;

std::vector<AdamWSegment> Segments() {
  AdamWHyper decay{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f};
  AdamWHyper no_decay{1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f};
  std::vector<AdamWSegment> s;
  for (int i = 0; i < 16; ++i) {
    s.push_back({i * (kN / 16), i == 15 ? kN - 1 : (i + 1) * (kN / 16),
                 i % 2 ? no_decay : decay});
  }
  return s;
}

// The host side of step_pipeline.cc: norm, clip, multiplier from the sums.
struct HostDecision {
  double norm, clip;
  float mult;
};
HostDecision Decide(double sum_sq, const CudaStepArgs& a) {
  const double to_mean =
      1.0 / (static_cast<double>(a.world_size) * a.grad_scale);
  HostDecision d;
  d.norm = std::sqrt(sum_sq) * to_mean;
  d.clip = 1;
  if (a.max_grad_norm > 0 && d.norm > a.max_grad_norm) {
    d.clip = a.max_grad_norm / (d.norm + 1e-6);
  }
  d.mult = static_cast<float>(to_mean * d.clip);
  return d;
}

class CudaOptimizerStepTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    absl::StatusOr<std::unique_ptr<CudaOptimizerStep>> s =
        CudaOptimizerStep::Create();
    ASSERT_TRUE(s.ok()) << s.status();
    step_ = *std::move(s);
    // Allocated here, after the skip check: no device, no allocation.
    dp_ = std::make_unique<DeviceBuffer>(kN * 4);
    dm_ = std::make_unique<DeviceBuffer>(kN * 4);
    dv_ = std::make_unique<DeviceBuffer>(kN * 4);
    dg_ = std::make_unique<DeviceBuffer>(kN * 4);
    dout_ = std::make_unique<DeviceBuffer>(kN * 2);
    p_ = RandomFloats(kN, 0.05f, 1.0f, 1);
    m_ = RandomFloats(kN, 1e-3f, 0.1f, 2);
    v_ = RandomFloats(kN, 1e-6f, 1e-2f, 3, true);
    g_ = RandomFloats(kN, 1.0f, 1000.0f, 4);  // loss-scaled grads
    dp_->Upload(p_);
    dm_->Upload(m_);
    dv_->Upload(v_);
    dg_->Upload(g_);
    dout_->Upload(std::vector<uint16_t>(kN, 0x7fbb));  // poison
    buf_.grad = dg_->as<float>();
    buf_.param = dp_->as<float>();
    buf_.exp_avg = dm_->as<float>();
    buf_.exp_avg_sq = dv_->as<float>();
    buf_.param_out = dout_->as<uint16_t>();
    buf_.param_out_type = ParamOutType::kBFloat16;
  }

  CudaStepReport Report() {
    absl::StatusOr<CudaStepReport> r = step_->ReadReport(nullptr);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CudaStepReport{};
  }

  void ExpectStateUnchanged() {
    EXPECT_EQ(CountBitDifferences(dp_->Download<float>(kN), p_), 0);
    EXPECT_EQ(CountBitDifferences(dm_->Download<float>(kN), m_), 0);
    EXPECT_EQ(CountBitDifferences(dv_->Download<float>(kN), v_), 0);
    EXPECT_EQ(dout_->Download<uint16_t>(kN),
              std::vector<uint16_t>(kN, 0x7fbb));
  }

  std::unique_ptr<CudaOptimizerStep> step_;
  std::vector<float> p_, m_, v_, g_;
  std::unique_ptr<DeviceBuffer> dp_, dm_, dv_, dg_, dout_;
  AdamWBuffers buf_;
};

TEST_F(CudaOptimizerStepTest, MatchesTheCpuPipelineWithClipping) {
  CudaStepArgs args;
  args.grad_scale = 1024;
  args.max_grad_norm = 1.0f;
  args.world_size = 2;
  args.adam_step = 3;
  const std::vector<AdamWSegment> segs = Segments();
  ASSERT_TRUE(step_->Run(buf_, kN, segs, args, nullptr).ok());
  const CudaStepReport r = Report();

  double ref_sum = 0;
  for (float x : g_) ref_sum += static_cast<double>(x) * x;
  EXPECT_NEAR(r.sum_sq, ref_sum, 1e-9 * ref_sum);
  EXPECT_EQ(r.non_finite, 0);
  ASSERT_EQ(r.applied, 1);
  const HostDecision d = Decide(r.sum_sq, args);
  EXPECT_EQ(r.grad_norm, d.norm);
  EXPECT_EQ(r.clip_coef, d.clip);
  EXPECT_LT(r.clip_coef, 1.0);  // this case clips
  EXPECT_EQ(Bits(r.grad_multiplier), Bits(d.mult));

  AdamW cpu(1, IsaSupported(Isa::kAvx2) ? Isa::kAvx2 : Isa::kScalar);
  std::vector<uint16_t> out(kN, 0x7fbb);
  AdamWBuffers h;
  h.grad = g_.data();
  h.param = p_.data();
  h.exp_avg = m_.data();
  h.exp_avg_sq = v_.data();
  h.param_out = out.data();
  h.param_out_type = ParamOutType::kBFloat16;
  cpu.Apply(h, segs, args.adam_step, d.mult);
  const std::vector<float> gp = dp_->Download<float>(kN);
  EXPECT_EQ(CountRelativeMismatches(gp, p_, 1e-6, "param"), 0);
  EXPECT_EQ(CountRelativeMismatches(dm_->Download<float>(kN), m_, 1e-6, "m"),
            0);
  EXPECT_EQ(CountRelativeMismatches(dv_->Download<float>(kN), v_, 1e-6, "v"),
            0);
  if (cpu.isa() != Isa::kScalar) {
    EXPECT_EQ(CountBitDifferences(gp, p_), 0);
    EXPECT_EQ(dout_->Download<uint16_t>(kN), out);
  }
}

TEST_F(CudaOptimizerStepTest, NonFiniteGradientSkipsWithoutWriting) {
  g_[kN / 3] = INFINITY;
  dg_->Upload(g_);
  CudaStepArgs args;
  ASSERT_TRUE(step_->Run(buf_, kN, Segments(), args, nullptr).ok());
  const CudaStepReport r = Report();
  EXPECT_EQ(r.applied, 0);
  EXPECT_EQ(r.non_finite, 1);
  EXPECT_TRUE(std::isnan(r.grad_norm));
  ExpectStateUnchanged();
}

TEST_F(CudaOptimizerStepTest, DecisionUsesStatsReducedBetweenThePasses) {
  CudaStepArgs args;
  args.world_size = 4;
  args.max_grad_norm = 1e9f;  // no clipping
  ASSERT_TRUE(step_->Summarize(buf_.grad, GradType::kFloat32, kN, nullptr)
                  .ok());
  // Stand in for an all-reduce over ranks: another rank saw a NaN.
  const double poisoned[2] = {123.0, 1.0};
  ASSERT_TRUE(Copy(step_->device_stats(), poisoned, sizeof poisoned).ok());
  ASSERT_TRUE(step_->Apply(buf_, Segments(), args, nullptr).ok());
  CudaStepReport r = Report();
  EXPECT_EQ(r.applied, 0) << "a non-finite count from any rank must skip";
  ExpectStateUnchanged();

  const double reduced[2] = {4.0e6, 0.0};
  ASSERT_TRUE(Copy(step_->device_stats(), reduced, sizeof reduced).ok());
  ASSERT_TRUE(step_->Apply(buf_, Segments(), args, nullptr).ok());
  r = Report();
  EXPECT_EQ(r.applied, 1);
  EXPECT_EQ(r.sum_sq, 4.0e6);
  EXPECT_EQ(r.grad_norm, Decide(4.0e6, args).norm);  // sqrt(4e6) / 4 = 500
  EXPECT_EQ(r.grad_multiplier, 0.25f);
}

TEST(CudaStepArgs, Validation) {
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(ValidateCudaStepArgs(CudaStepArgs{}).ok());
  EXPECT_EQ(ValidateCudaStepArgs({0.0f, 0, 1, 1}).code(), kInvalid);
  EXPECT_EQ(ValidateCudaStepArgs({NAN, 0, 1, 1}).code(), kInvalid);
  EXPECT_EQ(ValidateCudaStepArgs({1, -1.0f, 1, 1}).code(), kInvalid);
  EXPECT_EQ(ValidateCudaStepArgs({1, INFINITY, 1, 1}).code(), kInvalid);
  EXPECT_EQ(ValidateCudaStepArgs({1, 0, 0, 1}).code(), kInvalid);
  EXPECT_EQ(ValidateCudaStepArgs({1, 0, 1, 0}).code(), kInvalid);
}

}  // namespace
}  // namespace sherd
