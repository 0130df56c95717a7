// A client library built without CUDA: GPU state is reachable only through
// the inline data plane (use_shared_memory = false).
#include "client/cuda_mapping.h"

namespace sherd::client_internal {
namespace {
absl::Status Unavailable() {
  return absl::UnimplementedError(
      "this client library was built without CUDA, so it cannot map the "
      "server's GPU buffers; use use_shared_memory = false (Push/Fetch)");
}
}  // namespace

absl::StatusOr<void*> OpenCudaBuffer(const std::string&, int) { return Unavailable(); }
void CloseCudaBuffer(void*, int) {}
absl::Status SynchronizeCuda(void*, int) { return Unavailable(); }

}  // namespace sherd::client_internal
