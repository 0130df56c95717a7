// The portable 16-bit conversions, checked exhaustively against an
// independent decoder and, where the CPU has it, against F16C itself.

#include "server/optimizer/float_convert.h"

#include <cmath>
#include <cstdint>

#include "gtest/gtest.h"
#include "tests/optimizer/adamw_test_util.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace sherd::internal {
namespace {

#if defined(__x86_64__)
__attribute__((target("f16c"))) uint32_t F16cWiden(uint16_t h) {
  return FloatToBits(_cvtsh_ss(h));
}
#endif

TEST(FloatConvert, HalfToFloatIsExactForEveryPattern) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const int exp = (h >> 10) & 0x1f;
    if (exp == 0x1f) {
      const bool nan = (h & 0x3ff) != 0;
      EXPECT_EQ(std::isnan(f), nan) << h;
      EXPECT_EQ(std::isinf(f), !nan) << h;
      EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    } else {
      ASSERT_EQ(f, testing::DecodeHalf(static_cast<uint16_t>(h))) << h;
      EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    }
  }
}

TEST(FloatConvert, HalfToFloatMatchesF16cBitForBit) {
#if defined(__x86_64__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || (ecx & bit_F16C) == 0) {
    GTEST_SKIP() << "no F16C on this CPU";
  }
  int mismatches = 0;
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    mismatches += FloatToBits(HalfToFloat(x)) != F16cWiden(x);
  }
  EXPECT_EQ(mismatches, 0);
#else
  GTEST_SKIP() << "F16C exists only on x86";
#endif
}

TEST(FloatConvert, BFloat16RoundTripAndRounding) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    const float f = BFloat16ToFloat(x);
    // Every bf16 widens exactly and narrows back to itself (NaNs quieted).
    const bool nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0;
    EXPECT_EQ(FloatToBFloat16(f), nan ? (x | 0x40) : x) << h;
  }
  // Nearest even, checked against double arithmetic on random floats.
  uint32_t state = 12345;
  for (int i = 0; i < 100000; ++i) {
    state = state * 1664525u + 1013904223u;
    const uint32_t bits = state & 0x7f7fffffu;  // finite, positive
    const float f = BitsToFloat(bits);
    const uint16_t r = FloatToBFloat16(f);
    // The two bf16 neighbours; above the largest one comes 2^128, which
    // rounds to infinity (so compute it, don't decode it).
    const int exp = static_cast<int>(bits >> 23);
    const double lo = BFloat16ToFloat(static_cast<uint16_t>(bits >> 16));
    const double hi = lo + std::ldexp(1.0, std::max(exp, 1) - 134);
    const double dl = f - lo, dh = hi - f;
    const uint16_t want = dl < dh ? static_cast<uint16_t>(bits >> 16)
                          : dh < dl
                              ? static_cast<uint16_t>((bits >> 16) + 1)
                              : static_cast<uint16_t>(((bits >> 16) + 1) & ~1u);
    ASSERT_EQ(r, want) << std::hex << bits;
  }
}

}  // namespace
}  // namespace sherd::internal
