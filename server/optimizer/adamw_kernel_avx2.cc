// AVX2 + FMA + F16C AdamW path: 8 floats per vector. Compiled with those
// flags only for this file; AdamW picks it at run time when the CPU has all
// three (every x86-64 since Haswell / Zen 1).

#include <immintrin.h>

#include <cstdint>

#include "server/optimizer/adamw_kernel.h"
#include "server/optimizer/adamw_kernel_simd.h"

namespace sherd::internal {
namespace {

struct Avx2 {
  using Vec = __m256;
  static constexpr int kWidth = 8;

  static Vec Set1(float x) { return _mm256_set1_ps(x); }
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static Vec Div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
  static Vec Sqrt(Vec a) { return _mm256_sqrt_ps(a); }
  // a * b + c and a * b - c, each with a single rounding.
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec Fmsub(Vec a, Vec b, Vec c) { return _mm256_fmsub_ps(a, b, c); }

  static __m128i Load16(const uint16_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  static Vec LoadBf16(const uint16_t* p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(Load16(p)), 16));
  }
  static Vec LoadHalf(const uint16_t* p) { return _mm256_cvtph_ps(Load16(p)); }

  static void Stream(float* p, Vec v) { _mm256_stream_ps(p, v); }
  static void Fence() { _mm_sfence(); }

  // Same rounding as the AVX-512 and scalar paths (round to nearest even,
  // NaN stays NaN).
  static __m128i ToBf16(Vec v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i hi = _mm256_srli_epi32(x, 16);
    const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb),
        16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i quiet = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
    const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
    // Every lane is <= 0xffff, so the saturating pack is exact.
    return _mm_packus_epi32(_mm256_castsi256_si128(r),
                            _mm256_extracti128_si256(r, 1));
  }
  static void StoreHalf(uint16_t* p, __m128i h) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  }
  static void StreamHalf(uint16_t* p, __m128i h) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), h);
  }
};

}  // namespace

void AdamWKernelAvx2(const AdamWKernelArgs& a, const AdamWConstants& c,
                     int64_t begin, int64_t end) {
  RunSimdAdamW<Avx2>(a, c, begin, end);
}

}  // namespace sherd::internal
