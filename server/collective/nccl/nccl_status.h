// Internal: NCCL results as absl::Status, for the NCCL backend only.
//
// A failed collective leaves the group unusable, and the remedy is a new
// group, so every failure of an operation or of the communicator's creation
// is UNAVAILABLE (retryable at the level of the step), except misuse that a
// retry cannot fix (ncclInvalidUsage / ncclInvalidArgument at creation,
// e.g. two ranks of one communicator on one GPU): FAILED_PRECONDITION.
// The message has NCCL's error string and, given the communicator, its
// last-error detail.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace sherd::internal {

// result: an ncclResult_t; comm: the ncclComm_t or nullptr.
absl::Status NcclStatus(int result, std::string_view what, void* comm);
// The same, for the communicator's creation.
absl::Status NcclInitStatus(int result, std::string_view what, void* comm);

}  // namespace sherd::internal
