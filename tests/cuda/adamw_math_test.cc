// The GPU AdamW kernel's arithmetic and work decomposition, compiled for
// the host (cuda_kernels/internal/adamw_math.h) and checked here on every
// build, GPU or not:
//  - the kernel's walk (ForEachUnit over the segment table) visits every
//    element of every segment exactly once, with aligned vectors only;
//  - emulating the kernel with that walk and the element math gives the CPU
//    optimizer's AVX2 result bit for bit, for every grad and output type.
// The GPU tests (adamw_cuda_test.cc) then only have to show that the device
// agrees with this emulation, which it must if its _rn intrinsics round as
// IEEE says.
#include <cstdint>
#include <vector>

#include "cuda_kernels/internal/adamw_math.h"
#include "cuda_kernels/internal/segment_table.h"
#include "gtest/gtest.h"
#include "server/optimizer/adamw.h"
#include "server/optimizer/float_convert.h"
#include "tests/cuda/cuda_test_util.h"

namespace sherd::cuda_internal {
namespace {

using cuda_test::Bits;
using cuda_test::RandomFloats;

std::vector<AdamWSegment> Segments(int variant) {
  AdamWHyper a;  // defaults
  AdamWHyper b{3e-3f, 0.8f, 0.99f, 1e-6f, 0.1f};
  AdamWHyper c{5e-4f, 0.95f, 0.9999f, 1e-8f, 0.0f};
  switch (variant) {
    case 0:  // one flat segment, unaligned length
      return {{0, 4099, a}};
    case 1:  // gaps, single elements, unaligned edges, out of order
      return {{1005, 3001, b}, {0, 1001, a}, {1001, 1002, c},
              {3001, 3004, a}, {3006, 4090, c}, {2, 2, b}};
    default:  // many small segments
    {
      std::vector<AdamWSegment> s;
      for (int64_t b0 = 3; b0 + 9 <= 4099; b0 += 13) {
        s.push_back({b0, b0 + 9 + (b0 % 3), (b0 % 2) ? a : b});
      }
      return s;
    }
  }
}

TEST(CudaAdamWWalk, VisitsEverySegmentElementExactlyOnce) {
  for (int variant = 0; variant < 3; ++variant) {
    const std::vector<AdamWSegment> segs = Segments(variant);
    for (bool vectorized : {true, false}) {
      std::vector<SegmentEntry> rows;
      absl::StatusOr<int64_t> units =
          BuildSegmentTable(segs, /*step=*/1, vectorized, &rows);
      ASSERT_TRUE(units.ok()) << units.status();
      std::vector<int> want(4099, 0);
      for (const AdamWSegment& s : segs) {
        for (int64_t i = s.begin; i < s.end; ++i) ++want[i];
      }
      for (int64_t stride : {1, 3, 64, 1000, 1 << 20}) {
        SCOPED_TRACE(testing::Message() << "variant " << variant << " vec "
                                        << vectorized << " stride " << stride);
        std::vector<int> seen(4099, 0);
        for (int64_t t = 0; t < std::min<int64_t>(stride, *units); ++t) {
          ForEachUnit(rows.data(), static_cast<int>(rows.size()), *units, t,
                      stride,
                      [&](const SegmentEntry& s, int, int64_t e, bool vec) {
                        const int w = vec ? 4 : 1;
                        if (vec) {
                          EXPECT_EQ(e % 4, 0);
                          EXPECT_TRUE(vectorized);
                        }
                        EXPECT_GE(e, s.begin);
                        EXPECT_LE(e + w, s.end);
                        for (int j = 0; j < w; ++j) ++seen[e + j];
                      });
        }
        ASSERT_EQ(seen, want);
      }
    }
  }
}

TEST(CudaAdamWWalk, RejectsNegativeBegin) {
  std::vector<SegmentEntry> rows;
  std::vector<AdamWSegment> segs = {{-4, 8, AdamWHyper{}}};
  EXPECT_EQ(BuildSegmentTable(segs, 1, true, &rows).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The kernel, emulated on the host: the same walk and element math, for one
// grid of `threads` threads.
void EmulateKernel(const std::vector<SegmentEntry>& rows, int64_t units,
                   GradType gt, const void* grad, std::vector<float>& p,
                   std::vector<float>& m, std::vector<float>& v,
                   std::vector<uint16_t>& out, float mult, int threads) {
  auto grad_at = [&](int64_t i) -> float {
    switch (gt) {
      case GradType::kFloat32:
        return static_cast<const float*>(grad)[i];
      case GradType::kBFloat16:
        return Bf16BitsToFloat(static_cast<const uint16_t*>(grad)[i]);
      case GradType::kFloat16:
        return HalfBitsToFloat(static_cast<const uint16_t*>(grad)[i]);
    }
    return 0;
  };
  for (int t = 0; t < threads; ++t) {
    ForEachUnit(rows.data(), static_cast<int>(rows.size()), units, t, threads,
                [&](const SegmentEntry& s, int, int64_t e, bool vec) {
                  const ElementConstants c = ConstantsOf(s, mult);
                  for (int j = 0; j < (vec ? 4 : 1); ++j) {
                    AdamWElement(c, grad_at(e + j), p[e + j], m[e + j],
                                 v[e + j]);
                    out[e + j] = FloatToBf16Bits(p[e + j]);
                  }
                });
  }
}

TEST(CudaAdamWMath, EmulatedKernelMatchesCpuFmaPathBitForBit) {
  if (!IsaSupported(Isa::kAvx2)) {
    GTEST_SKIP() << "the CPU oracle with FMA needs AVX2 on this machine";
  }
  constexpr int64_t n = 4099;
  AdamW cpu(/*threads=*/1, Isa::kAvx2);
  for (GradType gt :
       {GradType::kFloat32, GradType::kBFloat16, GradType::kFloat16}) {
    for (int variant = 0; variant < 3; ++variant) {
      SCOPED_TRACE(testing::Message() << "grad type " << static_cast<int>(gt)
                                      << " variant " << variant);
      const std::vector<AdamWSegment> segs = Segments(variant);
      std::vector<float> p = RandomFloats(n, 0.05f, 1.0f, 1);
      std::vector<float> m = RandomFloats(n, 1e-3f, 0.1f, 2);
      std::vector<float> v = RandomFloats(n, 1e-6f, 1e-2f, 3, true);
      std::vector<float> cp = p, cm = m, cv = v;
      std::vector<uint16_t> out(n, 0xffff), cout(n, 0xffff);
      for (int64_t step : {1, 2, 7}) {
        const float mult = step == 2 ? 2.5f : 0.37f;
        std::vector<float> gf = RandomFloats(n, 1e-3f, 1.0f, 10 + step);
        std::vector<uint16_t> g16(n);
        for (int64_t i = 0; i < n; ++i) {
          g16[i] = gt == GradType::kBFloat16
                       ? internal::FloatToBFloat16(gf[i])
                       : static_cast<uint16_t>(0x3000 + (Bits(gf[i]) & 0x0fff));
        }
        const void* grad = gt == GradType::kFloat32
                               ? static_cast<const void*>(gf.data())
                               : static_cast<const void*>(g16.data());
        std::vector<SegmentEntry> rows;
        absl::StatusOr<int64_t> units =
            BuildSegmentTable(segs, step, /*vectorized=*/true, &rows);
        ASSERT_TRUE(units.ok());
        EmulateKernel(rows, *units, gt, grad, p, m, v, out, mult, 37);

        AdamWBuffers buf;
        buf.grad = grad;
        buf.grad_type = gt;
        buf.param = cp.data();
        buf.exp_avg = cm.data();
        buf.exp_avg_sq = cv.data();
        buf.param_out = cout.data();
        buf.param_out_type = ParamOutType::kBFloat16;
        cpu.Apply(buf, segs, step, mult);
      }
      EXPECT_EQ(cuda_test::CountBitDifferences(p, cp), 0);
      EXPECT_EQ(cuda_test::CountBitDifferences(m, cm), 0);
      EXPECT_EQ(cuda_test::CountBitDifferences(v, cv), 0);
      EXPECT_EQ(out, cout);
    }
  }
}

TEST(CudaAdamWMath, Bf16RoundingMatchesCpuConversion) {
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, 1.00390625f, 1.01171875f,
                           3.4e38f, -3.4e38f, 1e-40f, INFINITY, -INFINITY,
                           NAN, cuda_test::FromBits(0x7f800001u),
                           cuda_test::FromBits(0xffc12345u),
                           cuda_test::FromBits(0x7f7fffffu)};
  std::mt19937 rng(7);
  for (int i = 0; i < 100000; ++i) xs.push_back(cuda_test::FromBits(rng()));
  for (float x : xs) {
    ASSERT_EQ(FloatToBf16Bits(x), internal::FloatToBFloat16(x))
        << std::hex << Bits(x);
  }
}

}  // namespace
}  // namespace sherd::cuda_internal
