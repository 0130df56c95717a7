// Internal: the per-element AdamW arithmetic and the segment-table indexing
// of the CUDA kernels, written once for device AND host.
//
// Why host too: there is no GPU where sherd is developed. Compiled by g++
// (tests/cuda/adamw_math_test.cc) this same code is checked bit for bit
// against the CPU optimizer's FMA paths and for exact coverage of every
// segment element, so the GPU kernel's math and indexing are tested on every
// build, and the GPU tests only have to show the device agrees with it.
//
// Every rounding is spelled out: on the device with the _rn intrinsics
// (which nvcc never contracts into FMAs), on the host with plain float
// operations (ISO C++ mode: GCC does not contract) and std::fma. The order
// is that of server/optimizer/adamw_kernel_simd.h:
//   g = g * mult;  m = fma(1-b1, g - m, m);  v = fma(1-b2, fma(g, g, -v), v)
//   p = p - fma(lr*wd, p, step_size * (m / fma(sqrt(v), 1/sqrt(bc2), eps)))
// sqrt and division are correctly rounded on both sides (no fast math), so
// the GPU result equals the CPU AVX2/AVX-512 result bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

// The host versions below (also nvcc's host pass of a .cu file).
#include "server/optimizer/float_convert.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define SHERD_HD __host__ __device__ __forceinline__
#else
#define SHERD_HD inline
#endif

namespace sherd::cuda_internal {

// One row of the device segment table: a segment [begin, end) of the slice
// and its per-step constants (MakeAdamWConstants without the multiplier).
// The segment is cut into work units: the unaligned head [begin, vec_begin)
// and tail [vec_end, end) one element per unit, the aligned middle four
// elements (one 16-byte vector of each fp32 stream) per unit. unit_begin is
// the prefix sum of units over the rows before. Without vectorization the
// host sets vec_begin = vec_end = end: every element is a head unit.
struct SegmentEntry {
  int64_t begin;
  int64_t vec_begin;
  int64_t vec_end;
  int64_t end;
  int64_t unit_begin;
  float lr_wd;
  float one_minus_beta1;
  float one_minus_beta2;
  float step_size;
  float inv_sqrt_bc2;
  float eps;
};
static_assert(sizeof(SegmentEntry) == 64, "one row per 64-byte line");

inline constexpr int kVecWidth = 4;

SHERD_HD int64_t UnitsOf(const SegmentEntry& s) {
  return (s.vec_begin - s.begin) + (s.vec_end - s.vec_begin) / kVecWidth +
         (s.end - s.vec_end);
}

// Unit k of segment s: sets *element to its first element and returns true
// when the unit is a 4-element vector.
SHERD_HD bool DecodeUnit(const SegmentEntry& s, int64_t k, int64_t* element) {
  const int64_t head = s.vec_begin - s.begin;
  if (k < head) {
    *element = s.begin + k;
    return false;
  }
  k -= head;
  const int64_t vecs = (s.vec_end - s.vec_begin) / kVecWidth;
  if (k < vecs) {
    *element = s.vec_begin + k * kVecWidth;
    return true;
  }
  *element = s.vec_end + (k - vecs);
  return false;
}

// The row holding unit u: the last row with unit_begin <= u, searched in
// [lo, n) (rows are in unit order; lo only moves forward in a grid-stride
// loop, so callers pass the row they are in).
SHERD_HD int FindSegment(const SegmentEntry* table, int n, int lo,
                         int64_t u) {
  int hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid].unit_begin <= u) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// The kernel's grid-stride walk over the units of the table, shared with
// the host tests: from unit u in steps of `stride`, calls
// visit(row_entry, row, element, is_vector) for each unit. A thread's units
// increase, so it binary-searches its row once and again only when it
// crosses into a later one; the row is kept in registers meanwhile. Rows
// must be non-empty, in increasing unit_begin.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Visit>
SHERD_HD void ForEachUnit(const SegmentEntry* table, int n, int64_t total,
                          int64_t u, int64_t stride, Visit&& visit) {
  if (u >= total) return;
  int row = FindSegment(table, n, 0, u);
  SegmentEntry s = table[row];
  int64_t row_end = row + 1 < n ? table[row + 1].unit_begin : total;
  for (; u < total; u += stride) {
    if (u >= row_end) {
      row = FindSegment(table, n, row + 1, u);
      s = table[row];
      row_end = row + 1 < n ? table[row + 1].unit_begin : total;
    }
    int64_t e;
    const bool vec = DecodeUnit(s, u - s.unit_begin, &e);
    visit(s, row, e, vec);
  }
}

// --- rounding-explicit float operations -----------------------------------
#if defined(__CUDA_ARCH__)
SHERD_HD float Mul(float a, float b) { return __fmul_rn(a, b); }
SHERD_HD float Sub(float a, float b) { return __fsub_rn(a, b); }
SHERD_HD float Div(float a, float b) { return __fdiv_rn(a, b); }
SHERD_HD float Sqrt(float a) { return __fsqrt_rn(a); }
SHERD_HD float Fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
SHERD_HD uint32_t FloatBits(float f) { return __float_as_uint(f); }
SHERD_HD float BitsFloat(uint32_t b) { return __uint_as_float(b); }
SHERD_HD float HalfBitsToFloat(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}
#else
SHERD_HD float Mul(float a, float b) { return a * b; }
SHERD_HD float Sub(float a, float b) { return a - b; }
SHERD_HD float Div(float a, float b) { return a / b; }
SHERD_HD float Sqrt(float a) { return std::sqrt(a); }
SHERD_HD float Fma(float a, float b, float c) { return std::fma(a, b, c); }
SHERD_HD uint32_t FloatBits(float f) { return internal::FloatToBits(f); }
SHERD_HD float BitsFloat(uint32_t b) { return internal::BitsToFloat(b); }
SHERD_HD float HalfBitsToFloat(uint16_t h) { return internal::HalfToFloat(h); }
#endif

SHERD_HD float Bf16BitsToFloat(uint16_t h) {
  return BitsFloat(static_cast<uint32_t>(h) << 16);
}

// Round to nearest even; NaN stays a quiet NaN with its top payload bits
// (as server/optimizer/float_convert.h, so CPU and GPU copies agree).
SHERD_HD uint16_t FloatToBf16Bits(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  }
  const uint32_t lsb = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7fffu + lsb) >> 16);
}

SHERD_HD bool IsFiniteBits(float f) {
  return (FloatBits(f) & 0x7f800000u) != 0x7f800000u;
}

struct ElementConstants {
  float mult;
  float lr_wd;
  float one_minus_beta1;
  float one_minus_beta2;
  float step_size;
  float inv_sqrt_bc2;
  float eps;
};

SHERD_HD ElementConstants ConstantsOf(const SegmentEntry& s, float mult) {
  return {mult,        s.lr_wd,        s.one_minus_beta1, s.one_minus_beta2,
          s.step_size, s.inv_sqrt_bc2, s.eps};
}

// One element: reads g (already widened to float), p, m, v; updates p, m, v.
SHERD_HD void AdamWElement(const ElementConstants& c, float g_raw, float& p,
                           float& m, float& v) {
  const float g = Mul(g_raw, c.mult);
  m = Fma(c.one_minus_beta1, Sub(g, m), m);
  v = Fma(c.one_minus_beta2, Fma(g, g, -v), v);
  const float denom = Fma(Sqrt(v), c.inv_sqrt_bc2, c.eps);
  const float delta = Fma(c.lr_wd, p, Mul(c.step_size, Div(m, denom)));
  p = Sub(p, delta);
}

}  // namespace sherd::cuda_internal
