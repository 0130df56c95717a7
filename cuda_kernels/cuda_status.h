// CUDA runtime errors as absl::Status, the one place sherd converts them.
//
// Contract: CudaStatus(code, what) is OK for cudaSuccess (0) and otherwise an
// error whose message names the call (`what`), the runtime's own words
// (cudaGetErrorString) and the error's name, e.g.
//   "cudaMalloc(4096 bytes): out of memory [cudaErrorMemoryAllocation]".
// The code is an int so that this header, like every public header in
// cuda_kernels/, needs no CUDA header. Status codes: out of memory ->
// RESOURCE_EXHAUSTED; bad arguments -> INVALID_ARGUMENT; no device or no
// driver -> FAILED_PRECONDITION; anything else (launch failures, illegal
// addresses, which poison the context) -> INTERNAL. Thread-safe.
//
// Usage:
//   SHERD_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(p, 0, n, s), "cudaMemsetAsync");
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace sherd {

absl::Status CudaStatus(int cuda_error, std::string_view what);

}  // namespace sherd

// For .cc/.cu files that call the runtime directly.
#define SHERD_RETURN_IF_CUDA_ERROR(expr, what)                           \
  do {                                                                   \
    const int sherd_cuda_err_ = static_cast<int>(expr);                  \
    if (sherd_cuda_err_ != 0) return ::sherd::CudaStatus(sherd_cuda_err_, \
                                                         (what));        \
  } while (0)
