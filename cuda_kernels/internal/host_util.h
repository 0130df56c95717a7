// Internal, host only: small helpers shared by the launchers in
// adamw_cuda.cc, grad_ops.cc and optimizer_step.cc (grid sizing, alignment,
// enum mapping). Pure functions of their arguments, except
// MultiprocessorsOfCurrentDevice (a cheap runtime query).
#pragma once

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "cuda_kernels/device.h"
#include "cuda_kernels/internal/launch.h"
#include "server/optimizer/adamw.h"

namespace sherd::cuda_internal {

inline constexpr int kThreadsPerBlock = 256;
// 4 resident blocks of 256 threads per SM: 16 KiB of loads in flight per
// block keeps HBM busy (measured 94% of copy bandwidth by the plain-kernel
// anchor in BENCHMARKS.md); more blocks only add grid-stride overhead.
inline constexpr int kBlocksPerSm = 4;

inline int GridBlocks(int64_t units, int sm_count, int max_blocks = 1 << 30) {
  const int64_t want = (units + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t cap = std::min<int64_t>(
      max_blocks, static_cast<int64_t>(std::max(sm_count, 1)) * kBlocksPerSm);
  return static_cast<int>(std::clamp<int64_t>(want, 1, cap));
}

inline absl::StatusOr<int> MultiprocessorsOfCurrentDevice() {
  absl::StatusOr<int> device = CudaGetDevice();
  if (!device.ok()) return device.status();
  return CudaMultiprocessorCount(*device);
}

inline bool Aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline ElemType ElemOf(GradType t) {
  switch (t) {
    case GradType::kFloat32:
      return ElemType::kFloat32;
    case GradType::kBFloat16:
      return ElemType::kBFloat16;
    case GradType::kFloat16:
      return ElemType::kFloat16;
  }
  return ElemType::kNone;
}

inline ElemType ElemOf(ParamOutType t) {
  switch (t) {
    case ParamOutType::kNone:
      return ElemType::kNone;
    case ParamOutType::kFloat32:
      return ElemType::kFloat32;
    case ParamOutType::kBFloat16:
      return ElemType::kBFloat16;
  }
  return ElemType::kNone;
}

inline int BytesOf(ElemType t) {
  return t == ElemType::kFloat32 ? 4 : (t == ElemType::kNone ? 0 : 2);
}

// A 4-element vector of type t starting at an element index that is a
// multiple of 4 is aligned for its vector load iff the base is.
inline bool VectorAligned(const void* base, ElemType t) {
  return base == nullptr || Aligned(base, 4 * BytesOf(t));
}

}  // namespace sherd::cuda_internal
