// Test-only failpoints: named places where an integration test makes a real
// server fail on purpose, to reach a failure path that cannot be timed from
// outside (a restore COMMIT that fails on one rank only). A test arms them
// through the server's environment:
//
//   SHERD_FAILPOINTS=restore-commit@1      fail "restore-commit" on rank 1
//   SHERD_FAILPOINTS=a@0,b@*               several; * is every rank
//
// The points: restore-commit (a live restore's COMMIT fails),
// library-thread-throws (Register's answer is followed by an exception on a
// thread the server does not own, as Gloo's I/O loop would throw).
//
// Unset (production), every failpoint is OK and costs one comparison. The
// variable is read once, at the first failpoint reached; an armed point
// logs when it fires.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sherd {

// INTERNAL naming the failpoint when `name` is armed for `rank`, else OK.
absl::Status Failpoint(absl::string_view name, int rank);

}  // namespace sherd
