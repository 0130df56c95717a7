// AVX-512F AdamW path: 16 floats per vector. Compiled with -mavx512f (plus
// the AVX2/FMA/F16C it implies) only for this file; AdamW picks it at run
// time when the CPU and OS support AVX-512F. Uses only AVX-512F instructions
// (no BW/VL/BF16), so any AVX-512 CPU runs it.

#include <immintrin.h>

#include <cstdint>

#include "server/optimizer/adamw_kernel.h"
#include "server/optimizer/adamw_kernel_simd.h"

namespace sherd::internal {
namespace {

struct Avx512 {
  using Vec = __m512;
  static constexpr int kWidth = 16;

  static Vec Set1(float x) { return _mm512_set1_ps(x); }
  static Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static Vec Div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
  static Vec Sqrt(Vec a) { return _mm512_sqrt_ps(a); }
  // a * b + c and a * b - c, each with a single rounding.
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec Fmsub(Vec a, Vec b, Vec c) { return _mm512_fmsub_ps(a, b, c); }

  static __m256i Load16(const uint16_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static Vec LoadBf16(const uint16_t* p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(Load16(p)), 16));
  }
  static Vec LoadHalf(const uint16_t* p) { return _mm512_cvtph_ps(Load16(p)); }

  static void Stream(float* p, Vec v) { _mm512_stream_ps(p, v); }
  static void Fence() { _mm_sfence(); }

  // Round to nearest even on the bit pattern; NaN lanes are truncated with
  // the quiet bit set so the carry cannot turn them into infinity.
  static __m256i ToBf16(Vec v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i hi = _mm512_srli_epi32(x, 16);
    const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb),
        16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i r =
        _mm512_mask_or_epi32(rounded, nan, hi, _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
  }
  static void StoreHalf(uint16_t* p, __m256i h) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  }
  static void StreamHalf(uint16_t* p, __m256i h) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
  }
};

}  // namespace

void AdamWKernelAvx512(const AdamWKernelArgs& a, const AdamWConstants& c,
                       int64_t begin, int64_t end) {
  RunSimdAdamW<Avx512>(a, c, begin, end);
}

}  // namespace sherd::internal
