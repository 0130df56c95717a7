// Internal, host only: turns the optimizer's segment list into the device
// table of work units (SegmentEntry, adamw_math.h) for one step.
//
// Rows keep the order of `segments` (any order works: the kernel only needs
// unit_begin increasing along the rows, which the prefix sum guarantees);
// empty segments get no row. Constants come from the CPU optimizer's
// MakeAdamWConstants, so both paths round them identically. Pure function.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "cuda_kernels/internal/adamw_math.h"
#include "server/optimizer/adamw.h"

namespace sherd::cuda_internal {

// Returns the total number of units; INVALID_ARGUMENT for a negative begin.
// vectorized: every stream is aligned for 4-element vectors at element
// indices that are multiples of 4 (else every element is its own unit).
absl::StatusOr<int64_t> BuildSegmentTable(
    std::span<const AdamWSegment> segments, int64_t step, bool vectorized,
    std::vector<SegmentEntry>* rows);

}  // namespace sherd::cuda_internal
