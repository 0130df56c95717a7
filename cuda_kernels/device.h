// Devices, device memory, streams and CUDA IPC behind plain C++ calls.
//
// Contract: every call returns a Status built by CudaStatus (cuda_status.h)
// from the runtime's own error; nothing throws or aborts. Pointers are raw
// device pointers (or host pointers where a call says so); the caller owns
// what it allocates and frees it with DeviceFree. Streams are opaque
// `void*` handles (a cudaStream_t underneath; nullptr is the legacy default
// stream). The "current device" is per thread, as in the CUDA runtime: a
// thread that has not called CudaSetDevice works on device 0. All functions
// are thread-safe in the runtime's sense.
//
// Usage:
//   ASSIGN_OR_RETURN(void* buf, DeviceAlloc(bytes));
//   ASSIGN_OR_RETURN(CudaStream stream, CudaStream::Create());
//   RETURN_IF_ERROR(CopyAsync(buf, host, bytes, stream.get()));
//   RETURN_IF_ERROR(stream.Synchronize());
//   RETURN_IF_ERROR(DeviceFree(buf));
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sherd {

// How many CUDA devices this process sees. An error (not 0) when the driver
// is missing or too old, so callers can say why there is no GPU.
absl::StatusOr<int> CudaDeviceCount();
// Empty when at least one device is visible; otherwise why not (for logs and
// test skips).
std::string NoCudaDeviceReason();

absl::Status CudaSetDevice(int device);
absl::StatusOr<int> CudaGetDevice();
// Multiprocessor count of `device` (kernels size their grids from it).
absl::StatusOr<int> CudaMultiprocessorCount(int device);
// e.g. "NVIDIA H200".
absl::StatusOr<std::string> CudaDeviceName(int device);
absl::Status CudaDeviceSynchronize();

// Device memory on the current device, at least 256-byte aligned.
// DeviceAlloc(0) returns nullptr; DeviceFree(nullptr) is a no-op.
absl::StatusOr<void*> DeviceAlloc(size_t bytes);
absl::Status DeviceFree(void* ptr);
// Page-locked host memory (fast, truly asynchronous copies).
absl::StatusOr<void*> PinnedAlloc(size_t bytes);
absl::Status PinnedFree(void* ptr);

// Copies between any two of host / device memory (unified addressing picks
// the direction). Copy is synchronous; CopyAsync is ordered on `stream`.
// Note: CopyAsync from pageable host memory may return before the copy ends
// but after the source was staged, so the source may be reused at once;
// into pageable host memory it blocks until done.
absl::Status Copy(void* dst, const void* src, size_t bytes);
absl::Status CopyAsync(void* dst, const void* src, size_t bytes,
                       void* stream);
absl::Status MemsetAsync(void* dst, int byte, size_t bytes, void* stream);

// True for memory a kernel on the current device can dereference (device or
// managed memory); false for ordinary host memory.
bool IsDevicePointer(const void* ptr);

// An owned non-blocking stream (no implicit sync with the legacy stream).
// Move-only; destroying it waits for nothing (the runtime frees it once its
// work is done).
class CudaStream {
 public:
  static absl::StatusOr<CudaStream> Create();
  CudaStream() = default;
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  void* get() const { return stream_; }
  absl::Status Synchronize() const;

 private:
  explicit CudaStream(void* stream) : stream_(stream) {}
  void* stream_ = nullptr;
};

absl::Status StreamSynchronize(void* stream);

// CUDA IPC: another process on the same host maps a DeviceAlloc'd buffer.
// Export the base pointer of an allocation (the handle names the whole
// allocation, and Open returns its base). A process cannot open its own
// handles; open them in another process. Close with CloseIpcHandle, never
// DeviceFree; the exporter must keep the memory alive meanwhile.
struct CudaIpcHandle {
  static constexpr size_t kBytes = 64;  // CUDA_IPC_HANDLE_SIZE
  std::array<char, kBytes> bytes{};
};
absl::StatusOr<CudaIpcHandle> ExportIpcHandle(void* device_ptr);
absl::StatusOr<void*> OpenIpcHandle(const CudaIpcHandle& handle);
absl::Status CloseIpcHandle(void* mapped_ptr);
// Lower-case hex, 128 characters (for argv, logs, text protocols).
std::string IpcHandleToHex(const CudaIpcHandle& handle);
absl::StatusOr<CudaIpcHandle> IpcHandleFromHex(std::string_view hex);

}  // namespace sherd
