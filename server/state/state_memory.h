// Where a model's buffers live when they are not host memory: the GPU path's
// seam. The CPU server keeps its buffers in POSIX shared memory and private
// host arrays and has no StateMemory at all; a GPU server hands ModelState a
// StateMemory (server/gpu/) that allocates device memory, copies to and from
// the host and exports CUDA IPC handles. Nothing CUDA-typed crosses this
// interface, so ModelState, the shard server and the checkpointer compile
// the same with or without CUDA.
//
// Contract: pointers returned by Allocate are only dereferenced by this
// object (Copy, Zero) and by the step runner made for the same memory;
// everything else reads and writes them through Copy. All methods are
// thread-safe; Copy and Zero are synchronous (they return once the bytes
// are in place).
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sherd {

class StateMemory {
 public:
  virtual ~StateMemory() = default;

  // "cuda:0": for logs, Status and the Register reply.
  virtual std::string name() const = 0;
  // The CUDA device ordinal the memory is on.
  virtual int device() const = 0;

  // Zero-filled memory of `bytes` bytes, at least 256-byte aligned.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Release(void* ptr) = 0;

  // Copies between any two of host memory and this memory.
  virtual absl::Status Copy(void* dst, const void* src, size_t bytes) = 0;
  virtual absl::Status Zero(void* dst, size_t bytes) = 0;

  // An opaque handle another process on this host opens to map the
  // allocation that starts at `base` (a CUDA IPC memory handle).
  virtual absl::StatusOr<std::string> ExportHandle(void* base) = 0;
};

}  // namespace sherd
