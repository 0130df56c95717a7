// Builds a shard server from its config, serves it over gRPC until SIGTERM or
// SIGINT, then shuts down cleanly: in-flight calls finish (bounded by a grace
// period), the buffers' shared-memory names are unlinked.
#pragma once

#include "absl/status/status.h"
#include "server/config.h"
#include "server/gpu/gpu_backend.h"

namespace sherd {

// Turns --device auto into cpu or cuda (config.device is rewritten) and,
// for cuda, creates the GPU backend on config.cuda_device (rank % visible
// GPUs when unset; filled in). An empty backend for cpu. Errors name the
// flag: "--device cuda: no usable CUDA device: ...".
absl::StatusOr<GpuBackend> ResolveDevice(ServerConfig& config);

// Blocks until shutdown. Call from main() before any other thread starts
// (it blocks the termination signals for the whole process).
absl::Status RunServer(const ServerConfig& config);

}  // namespace sherd
