// The GPU backend of a build without CUDA: clear statuses, no #ifdefs in
// the server.
#include "server/gpu/gpu_backend.h"

namespace sherd {

std::string GpuUnavailableReason() {
  return "this sherd-server was built without CUDA (nvcc was not found at "
         "configure time)";
}

int VisibleGpuCount() { return 0; }

absl::StatusOr<GpuBackend> CreateGpuBackend(int) {
  return absl::UnimplementedError(GpuUnavailableReason());
}

}  // namespace sherd
