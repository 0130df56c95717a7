// The client's side of GPU state (server/gpu/gpu_backend.h): opening the
// server's CUDA IPC handles and ordering the trainer's kernels before Step.
// Plain C++; without CUDA at build time every call is UNIMPLEMENTED.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace sherd::client_internal {

// Maps a 64-byte CUDA IPC memory handle on `device` (this process's
// ordinal of the server's GPU). Close with CloseCudaBuffer.
absl::StatusOr<void*> OpenCudaBuffer(const std::string& handle, int device);
void CloseCudaBuffer(void* mapped, int device);
// Waits for `stream` (an opaque cudaStream_t; null: everything on
// `device`), so the server reads finished gradients.
absl::Status SynchronizeCuda(void* stream, int device);

}  // namespace sherd::client_internal
