// Portable conversions between float32 and the 16-bit formats the optimizer
// reads and writes (bfloat16, IEEE binary16). Bit-exact with the SIMD paths:
// bf16 and fp16 widen exactly; float -> bf16 rounds to nearest, ties to
// even, and keeps NaN a (quiet) NaN instead of letting the rounding carry
// turn it into infinity. Header-only, pure functions, thread-safe.
//
// Not included by the SIMD translation units on purpose (see
// server/optimizer/CMakeLists.txt): they have their own vector versions.
#pragma once

#include <cstdint>
#include <cstring>

namespace sherd::internal {

inline float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t FloatToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float BFloat16ToFloat(uint16_t h) {
  return BitsToFloat(static_cast<uint32_t>(h) << 16);
}

inline uint16_t FloatToBFloat16(float f) {
  const uint32_t x = FloatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: truncate, force quiet bit
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  }
  const uint32_t lsb = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7fffu + lsb) >> 16);
}

// Software binary16 -> float32, exact for every input including subnormals,
// infinities and NaN payloads (matches F16C's vcvtph2ps).
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {  // inf / NaN: widen the payload
    return BitsToFloat(sign | 0x7f800000u | (mant << 13) |
                       (mant != 0 ? 0x400000u : 0u));
  }
  if (exp != 0) {
    return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
  }
  if (mant == 0) return BitsToFloat(sign);
  // Subnormal half: normalize into a normal float.
  int e = 113;  // 127 - 15 + 1
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  mant &= 0x3ffu;
  return BitsToFloat(sign | (static_cast<uint32_t>(e) << 23) | (mant << 13));
}

}  // namespace sherd::internal
