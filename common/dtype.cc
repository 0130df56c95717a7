#include "common/dtype.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace sherd {

absl::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "unknown";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "fp32" || n == "f32") return DType::kFloat32;
  if (n == "bfloat16" || n == "bf16") return DType::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "f16") return DType::kFloat16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "'"));
}

int DTypeSize(DType t) { return t == DType::kFloat32 ? 4 : 2; }

}  // namespace sherd
