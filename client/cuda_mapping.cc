#include "client/cuda_mapping.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda_kernels/device.h"

namespace sherd::client_internal {

absl::StatusOr<void*> OpenCudaBuffer(const std::string& handle, int device) {
  CudaIpcHandle h;
  if (handle.size() != h.bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CUDA IPC handle of ", handle.size(), " bytes (expected ", h.bytes.size(), ")"));
  }
  std::memcpy(h.bytes.data(), handle.data(), h.bytes.size());
  RETURN_IF_ERROR(CudaSetDevice(device));
  return OpenIpcHandle(h);
}

void CloseCudaBuffer(void* mapped, int device) {
  if (mapped == nullptr) return;
  if (CudaSetDevice(device).ok()) CloseIpcHandle(mapped).IgnoreError();
}

absl::Status SynchronizeCuda(void* stream, int device) {
  RETURN_IF_ERROR(CudaSetDevice(device));
  return stream == nullptr ? CudaDeviceSynchronize() : StreamSynchronize(stream);
}

}  // namespace sherd::client_internal
