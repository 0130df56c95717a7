// Element types a trainer may declare, and the conversions the server does.
#pragma once

#include <cstdint>
#include <cstring>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace sherd {

enum class DType { kFloat32, kBFloat16, kFloat16 };

absl::string_view DTypeName(DType t);
absl::StatusOr<DType> ParseDType(absl::string_view name);
int DTypeSize(DType t);

// bf16 <-> fp32, round to nearest even; NaN stays NaN.
inline uint16_t FloatToBFloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float BFloat16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace sherd
