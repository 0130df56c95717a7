// Builds a shard server from its config, serves it over gRPC until SIGTERM or
// SIGINT, then shuts down cleanly: in-flight calls finish (bounded by a grace
// period), the buffers' shared-memory names are unlinked.
#pragma once

#include "absl/status/status.h"
#include "server/config.h"

namespace sherd {

// Blocks until shutdown. Call from main() before any other thread starts
// (it blocks the termination signals for the whole process).
absl::Status RunServer(const ServerConfig& config);

}  // namespace sherd
