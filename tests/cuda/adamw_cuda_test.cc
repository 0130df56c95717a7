// CudaAdamW against the CPU AdamW (sherd_optimizer) on random inputs that
// are never zero, across segment layouts, grad types, output types, aligned
// and misaligned buffers, in place and out of place, over several steps.
// Outputs start poisoned (NaN bit patterns) so an element the kernel fails
// to write, or writes outside its segments, shows up.
#include <cstdint>
#include <vector>

#include "cuda_kernels/adamw_cuda.h"
#include "cuda_kernels/device.h"
#include "gtest/gtest.h"
#include "server/optimizer/adamw.h"
#include "server/optimizer/float_convert.h"
#include "tests/cuda/cuda_test_util.h"

namespace sherd {
namespace {

using cuda_test::Bits;
using cuda_test::CountBitDifferences;
using cuda_test::CountRelativeMismatches;
using cuda_test::DeviceBuffer;
using cuda_test::RandomFloats;

constexpr int64_t kN = 100003;
constexpr uint32_t kPoison32 = 0x7fbadbadu;  // a NaN no kernel produces
constexpr uint16_t kPoison16 = 0x7fbbu;      // a bf16 NaN, likewise

std::vector<AdamWSegment> Layout(bool many) {
  AdamWHyper decay{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f};
  AdamWHyper no_decay{2e-3f, 0.85f, 0.995f, 1e-6f, 0.0f};
  if (!many) return {{0, kN, decay}};
  // 64 segments, alternating groups, unaligned edges and two gaps.
  std::vector<AdamWSegment> s;
  const int64_t per = (kN - 40) / 64;
  for (int i = 0; i < 64; ++i) {
    const int64_t b = 3 + i * per + (i == 20 ? 5 : 0);
    const int64_t e = i == 63 ? kN - 2 : 3 + (i + 1) * per;
    s.push_back({b, e, i % 2 ? no_decay : decay});
  }
  std::swap(s[5], s[40]);  // rows need not be in address order
  return s;
}

struct Case {
  GradType grad = GradType::kFloat32;
  ParamOutType out = ParamOutType::kNone;
  bool many_segments = false;
  int misalign = 0;       // elements added to every device pointer
  bool out_of_place = false;
};

// Runs 3 steps on the GPU and on the CPU (AVX2 when the CPU has it: FMA,
// expected equal bit for bit) and compares everything.
void RunCase(const Case& c, bool expect_bitwise) {
  const std::vector<AdamWSegment> segs = Layout(c.many_segments);
  const int off = c.misalign;
  std::vector<float> p = RandomFloats(kN, 0.05f, 1.0f, 1);
  std::vector<float> m = RandomFloats(kN, 1e-3f, 0.1f, 2);
  std::vector<float> v = RandomFloats(kN, 1e-6f, 1e-2f, 3, true);
  const bool out16 = c.out == ParamOutType::kBFloat16;
  std::vector<float> out32(kN, cuda_test::FromBits(kPoison32));
  std::vector<uint16_t> out16v(kN, kPoison16);

  const size_t pad = 8;
  DeviceBuffer dg((kN + pad) * 4), dp((kN + pad) * 4), dm((kN + pad) * 4),
      dv((kN + pad) * 4), dout((kN + pad) * 4), dpd((kN + pad) * 4),
      dmd((kN + pad) * 4), dvd((kN + pad) * 4);
  dp.Upload(p, off);
  dm.Upload(m, off);
  dv.Upload(v, off);
  if (out16) dout.Upload(out16v, off); else dout.Upload(out32, off);
  const std::vector<float> poison(kN, cuda_test::FromBits(kPoison32));
  if (c.out_of_place) {
    dpd.Upload(poison, off);
    dmd.Upload(poison, off);
    dvd.Upload(poison, off);
  }

  AdamW cpu(1, IsaSupported(Isa::kAvx2) ? Isa::kAvx2 : Isa::kScalar);
  absl::StatusOr<std::unique_ptr<CudaAdamW>> gpu = CudaAdamW::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  absl::StatusOr<CudaStream> stream = CudaStream::Create();
  ASSERT_TRUE(stream.ok()) << stream.status();

  for (int64_t step : {1, 2, 9}) {
    const float mult = step == 2 ? 2.5f : 0.37f;
    std::vector<float> gf = RandomFloats(kN, 1e-3f, 1.0f, 100 + step);
    std::vector<uint16_t> g16(kN);
    for (int64_t i = 0; i < kN; ++i) {
      g16[i] = c.grad == GradType::kBFloat16
                   ? internal::FloatToBFloat16(gf[i])
                   : static_cast<uint16_t>((Bits(gf[i]) & 0x8fff) | 0x3000);
    }
    const bool g32 = c.grad == GradType::kFloat32;
    if (g32) dg.Upload(gf, off); else dg.Upload(g16, off);

    AdamWBuffers d;
    d.grad = g32 ? static_cast<const void*>(dg.as<float>(off))
                 : static_cast<const void*>(dg.as<uint16_t>(off));
    d.grad_type = c.grad;
    d.param = dp.as<float>(off);
    d.exp_avg = dm.as<float>(off);
    d.exp_avg_sq = dv.as<float>(off);
    d.param_out = out16 ? static_cast<void*>(dout.as<uint16_t>(off))
                        : static_cast<void*>(dout.as<float>(off));
    d.param_out_type = c.out;
    if (c.out_of_place) {
      // Read from the inputs, write elsewhere; next step reads the outputs.
      d.param_dst = dpd.as<float>(off);
      d.exp_avg_dst = dmd.as<float>(off);
      d.exp_avg_sq_dst = dvd.as<float>(off);
    }
    const std::vector<float> p_before =
        c.out_of_place ? dp.Download<float>(kN, off) : std::vector<float>();
    ASSERT_TRUE((*gpu)->Apply(d, segs, step, mult, stream->get()).ok());
    ASSERT_TRUE(stream->Synchronize().ok());
    if (c.out_of_place) {
      // Inputs untouched; then make the outputs the next step's inputs.
      ASSERT_EQ(CountBitDifferences(dp.Download<float>(kN, off), p_before), 0);
      for (auto [src, dst] : {std::pair{&dpd, &dp}, {&dmd, &dm}, {&dvd, &dv}}) {
        std::vector<float> x = src->Download<float>(kN, off);
        std::vector<float> keep = dst->Download<float>(kN, off);
        for (int64_t i = 0; i < kN; ++i) {
          if (Bits(x[i]) == kPoison32) x[i] = keep[i];  // gap: unchanged
        }
        dst->Upload(x, off);
      }
    }

    AdamWBuffers h;
    h.grad = g32 ? static_cast<const void*>(gf.data())
                 : static_cast<const void*>(g16.data());
    h.grad_type = c.grad;
    h.param = p.data();
    h.exp_avg = m.data();
    h.exp_avg_sq = v.data();
    h.param_out = out16 ? static_cast<void*>(out16v.data())
                        : static_cast<void*>(out32.data());
    h.param_out_type = c.out;
    cpu.Apply(h, segs, step, mult);
  }

  const std::vector<float> gp = dp.Download<float>(kN, off);
  const std::vector<float> gm = dm.Download<float>(kN, off);
  const std::vector<float> gv = dv.Download<float>(kN, off);
  EXPECT_EQ(CountRelativeMismatches(gp, p, 1e-6, "param"), 0);
  EXPECT_EQ(CountRelativeMismatches(gm, m, 1e-6, "exp_avg"), 0);
  EXPECT_EQ(CountRelativeMismatches(gv, v, 1e-6, "exp_avg_sq"), 0);
  if (c.out == ParamOutType::kFloat32) {
    EXPECT_EQ(CountRelativeMismatches(dout.Download<float>(kN, off), out32,
                                      1e-6, "param_out"),
              0);
  } else if (out16) {
    const std::vector<uint16_t> go = dout.Download<uint16_t>(kN, off);
    int64_t diff = 0;
    for (int64_t i = 0; i < kN; ++i) {
      // bf16 of values within 1e-6 may differ by one ulp at a tie; equal
      // masters must give equal copies.
      const bool same_master = Bits(gp[i]) == Bits(p[i]);
      diff += same_master ? go[i] != out16v[i]
                          : std::abs(go[i] - out16v[i]) > 1;
    }
    EXPECT_EQ(diff, 0);
  }
  if (expect_bitwise) {
    EXPECT_EQ(CountBitDifferences(gp, p), 0);
    EXPECT_EQ(CountBitDifferences(gm, m), 0);
    EXPECT_EQ(CountBitDifferences(gv, v), 0);
  }
  ::testing::Test::RecordProperty(
      "cpu_isa", std::string(IsaName(cpu.isa())));
  ::testing::Test::RecordProperty(
      "param_bits_differing", static_cast<int>(CountBitDifferences(gp, p)));
}

class CudaAdamWTest : public cuda_test::CudaTest,
                      public ::testing::WithParamInterface<Case> {};

TEST_P(CudaAdamWTest, MatchesCpuWithin1e6Relative) {
  RunCase(GetParam(), /*expect_bitwise=*/false);
}

TEST_P(CudaAdamWTest, MatchesCpuFmaPathBitForBit) {
  if (!IsaSupported(Isa::kAvx2)) GTEST_SKIP() << "CPU oracle needs AVX2";
  RunCase(GetParam(), /*expect_bitwise=*/true);
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (GradType g :
       {GradType::kFloat32, GradType::kBFloat16, GradType::kFloat16}) {
    for (ParamOutType o : {ParamOutType::kNone, ParamOutType::kFloat32,
                           ParamOutType::kBFloat16}) {
      cases.push_back({g, o, /*many=*/true, 0, false});
    }
  }
  cases.push_back({GradType::kFloat32, ParamOutType::kBFloat16, false, 0,
                   false});
  cases.push_back({GradType::kFloat32, ParamOutType::kBFloat16, true, 1,
                   false});
  cases.push_back({GradType::kBFloat16, ParamOutType::kFloat32, true, 3,
                   false});
  cases.push_back({GradType::kFloat32, ParamOutType::kBFloat16, true, 0,
                   true});
  cases.push_back({GradType::kFloat16, ParamOutType::kNone, false, 1, true});
  return cases;
}

std::string Describe(const Case& c) {
  static const char* kGrad[] = {"G32", "Gbf16", "G16"};
  static const char* kOut[] = {"NoOut", "Out32", "Outbf16"};
  return std::string(kGrad[static_cast<int>(c.grad)]) +
         kOut[static_cast<int>(c.out)] + (c.many_segments ? "_64seg" : "_flat") +
         "_misalign" + std::to_string(c.misalign) +
         (c.out_of_place ? "_outofplace" : "");
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return Describe(info.param);
}

void PrintTo(const Case& c, std::ostream* os) { *os << Describe(c); }

INSTANTIATE_TEST_SUITE_P(Cases, CudaAdamWTest, ::testing::ValuesIn(Cases()),
                         CaseName);

class CudaAdamWApiTest : public cuda_test::CudaTest {};

TEST_F(CudaAdamWApiTest, RejectsMissingBuffers) {
  absl::StatusOr<std::unique_ptr<CudaAdamW>> gpu = CudaAdamW::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  AdamWBuffers d;  // all null
  std::vector<AdamWSegment> segs = {{0, 8, AdamWHyper{}}};
  EXPECT_EQ((*gpu)->Apply(d, segs, 1, 1.0f, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sherd
