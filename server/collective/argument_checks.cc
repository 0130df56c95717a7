#include "server/collective/argument_checks.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace sherd::internal {

absl::Status CheckChunkArgs(const char* op, const float* buf, int64_t chunk,
                            int world_size) {
  if (chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": negative chunk ", chunk));
  }
  if (buf == nullptr && chunk > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": null buffer with chunk ", chunk));
  }
  // Callers compute byte offsets as world_size * chunk * sizeof(float); keep
  // that product representable so no backend has to re-check it.
  const int64_t max_chunk = std::numeric_limits<int64_t>::max() /
                            static_cast<int64_t>(sizeof(float)) /
                            (world_size > 0 ? world_size : 1);
  if (chunk > max_chunk) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": chunk ", chunk, " overflows the buffer size"));
  }
  return absl::OkStatus();
}

absl::Status CheckValues(const char* op, std::span<const double> values) {
  if (values.data() == nullptr && !values.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": null buffer with ", values.size(), " values"));
  }
  return absl::OkStatus();
}

}  // namespace sherd::internal
