#include "cuda_kernels/device.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cuda_kernels/cuda_status.h"

namespace sherd {
namespace {

cudaStream_t AsStream(void* s) { return static_cast<cudaStream_t>(s); }

static_assert(CudaIpcHandle::kBytes == sizeof(cudaIpcMemHandle_t),
              "CudaIpcHandle must hold a cudaIpcMemHandle_t");

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::StatusOr<int> CudaDeviceCount() {
  int n = 0;
  SHERD_RETURN_IF_CUDA_ERROR(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  return n;
}

std::string NoCudaDeviceReason() {
  absl::StatusOr<int> n = CudaDeviceCount();
  if (!n.ok()) return std::string(n.status().message());
  if (*n == 0) return "cudaGetDeviceCount returned 0 devices";
  return "";
}

absl::Status CudaSetDevice(int device) {
  SHERD_RETURN_IF_CUDA_ERROR(cudaSetDevice(device),
                             absl::StrCat("cudaSetDevice(", device, ")"));
  return absl::OkStatus();
}

absl::StatusOr<int> CudaGetDevice() {
  int d = 0;
  SHERD_RETURN_IF_CUDA_ERROR(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}

absl::StatusOr<int> CudaMultiprocessorCount(int device) {
  int n = 0;
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
      "cudaDeviceGetAttribute(MultiProcessorCount)");
  return n;
}

absl::StatusOr<std::string> CudaDeviceName(int device) {
  cudaDeviceProp prop;
  SHERD_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device),
                             "cudaGetDeviceProperties");
  return std::string(prop.name);
}

absl::Status CudaDeviceSynchronize() {
  SHERD_RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return absl::OkStatus();
}

absl::StatusOr<void*> DeviceAlloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  SHERD_RETURN_IF_CUDA_ERROR(cudaMalloc(&p, bytes),
                             absl::StrCat("cudaMalloc(", bytes, " bytes)"));
  return p;
}

absl::Status DeviceFree(void* ptr) {
  if (ptr == nullptr) return absl::OkStatus();
  SHERD_RETURN_IF_CUDA_ERROR(cudaFree(ptr), "cudaFree");
  return absl::OkStatus();
}

absl::StatusOr<void*> PinnedAlloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaMallocHost(&p, bytes),
      absl::StrCat("cudaMallocHost(", bytes, " bytes)"));
  return p;
}

absl::Status PinnedFree(void* ptr) {
  if (ptr == nullptr) return absl::OkStatus();
  SHERD_RETURN_IF_CUDA_ERROR(cudaFreeHost(ptr), "cudaFreeHost");
  return absl::OkStatus();
}

absl::Status Copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  SHERD_RETURN_IF_CUDA_ERROR(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault),
                             absl::StrCat("cudaMemcpy(", bytes, " bytes)"));
  return absl::OkStatus();
}

absl::Status CopyAsync(void* dst, const void* src, size_t bytes,
                       void* stream) {
  if (bytes == 0) return absl::OkStatus();
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, AsStream(stream)),
      absl::StrCat("cudaMemcpyAsync(", bytes, " bytes)"));
  return absl::OkStatus();
}

absl::Status MemsetAsync(void* dst, int byte, size_t bytes, void* stream) {
  if (bytes == 0) return absl::OkStatus();
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaMemsetAsync(dst, byte, bytes, AsStream(stream)),
      absl::StrCat("cudaMemsetAsync(", bytes, " bytes)"));
  return absl::OkStatus();
}

bool IsDevicePointer(const void* ptr) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // not sticky; do not leak it into the next check
    return false;
  }
  return attr.type == cudaMemoryTypeDevice ||
         attr.type == cudaMemoryTypeManaged;
}

absl::StatusOr<CudaStream> CudaStream::Create() {
  cudaStream_t s = nullptr;
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
      "cudaStreamCreateWithFlags");
  return CudaStream(static_cast<void*>(s));
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(AsStream(stream_));
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) cudaStreamDestroy(AsStream(stream_));
}

absl::Status CudaStream::Synchronize() const {
  return StreamSynchronize(stream_);
}

absl::Status StreamSynchronize(void* stream) {
  SHERD_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(AsStream(stream)),
                             "cudaStreamSynchronize");
  return absl::OkStatus();
}

absl::StatusOr<CudaIpcHandle> ExportIpcHandle(void* device_ptr) {
  cudaIpcMemHandle_t h;
  SHERD_RETURN_IF_CUDA_ERROR(cudaIpcGetMemHandle(&h, device_ptr),
                             "cudaIpcGetMemHandle");
  CudaIpcHandle out;
  std::memcpy(out.bytes.data(), &h, sizeof h);
  return out;
}

absl::StatusOr<void*> OpenIpcHandle(const CudaIpcHandle& handle) {
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle.bytes.data(), sizeof h);
  void* p = nullptr;
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess),
      "cudaIpcOpenMemHandle");
  return p;
}

absl::Status CloseIpcHandle(void* mapped_ptr) {
  SHERD_RETURN_IF_CUDA_ERROR(cudaIpcCloseMemHandle(mapped_ptr),
                             "cudaIpcCloseMemHandle");
  return absl::OkStatus();
}

std::string IpcHandleToHex(const CudaIpcHandle& handle) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * CudaIpcHandle::kBytes);
  for (char c : handle.bytes) {
    const auto b = static_cast<unsigned char>(c);
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

absl::StatusOr<CudaIpcHandle> IpcHandleFromHex(std::string_view hex) {
  if (hex.size() != 2 * CudaIpcHandle::kBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("IPC handle: want ", 2 * CudaIpcHandle::kBytes,
                     " hex digits, got ", hex.size()));
  }
  CudaIpcHandle out;
  for (size_t i = 0; i < CudaIpcHandle::kBytes; ++i) {
    const int hi = HexDigit(hex[2 * i]), lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError("IPC handle: not a hex string");
    }
    out.bytes[i] = static_cast<char>(hi << 4 | lo);
  }
  return out;
}

}  // namespace sherd
