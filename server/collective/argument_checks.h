// Argument checks shared by every Collective backend, so that all of them
// reject the same bad input with the same INVALID_ARGUMENT before touching
// the network. A rejected call leaves the backend usable: nothing was sent.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace sherd::internal {

// For ReduceScatter / AllGather: `chunk` must be >= 0, `buf` non-null unless
// chunk == 0, and world_size * chunk must not overflow int64 element counts
// expressed in bytes.
absl::Status CheckChunkArgs(const char* op, const float* buf, int64_t chunk,
                            int world_size);

// For AllReduce: the span must not claim elements behind a null pointer.
absl::Status CheckValues(const char* op, std::span<const double> values);

}  // namespace sherd::internal
