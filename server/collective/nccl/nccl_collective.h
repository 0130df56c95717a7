// The NCCL backend's class, for callers that hold device data and want more
// than the Collective interface: an in-place all-reduce of device doubles
// (the gradient stats between the two passes of the GPU step, with no host
// round trip) and the stream the collectives run on.
//
// Contract (beyond factory.h): the object owns one communicator, one
// non-blocking stream and small scratch buffers on its device. Each call
// sets the calling thread's current device to it (NCCL and the CUDA
// runtime are per-thread about that), enqueues on stream(), and returns
// only when the stream has passed the work, so results are visible to any
// stream afterwards. Work a caller enqueues on stream() before a call is
// ordered before the collective, which saves a synchronization when a
// kernel produces the buffer. Not thread-safe: one thread at a time.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/collective/collective.h"

namespace sherd::internal {

class NcclCollective final : public Collective {
 public:
  // Takes ownership of an initialized communicator and stream (opaque
  // ncclComm_t / cudaStream_t) and of the scratch buffers.
  NcclCollective(void* comm, void* stream, int rank, int world_size,
                 int device, absl::Duration timeout);
  ~NcclCollective() override;
  NcclCollective(const NcclCollective&) = delete;
  NcclCollective& operator=(const NcclCollective&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string Describe() const override { return "nccl"; }
  absl::Status ReduceScatter(float* buf, int64_t chunk) override;
  absl::Status AllGather(float* buf, int64_t chunk) override;
  absl::Status AllReduce(std::span<double> values) override;
  absl::Status Barrier() override;

  // Sums `n` doubles in device memory across ranks, in place.
  absl::Status AllReduceDevice(double* device_values, int64_t n);

  void* stream() const { return stream_; }
  int device() const { return device_; }

 private:
  // Grows the device/pinned scratch to n doubles.
  absl::Status EnsureScratch(int64_t n);
  // Checks `buf` is device memory, sets the device, fails fast if broken.
  absl::Status Prologue(const char* op, const float* buf, int64_t chunk);
  // Turns the result of an enqueue into a status; a failure breaks.
  absl::Status Enqueued(const char* op, int nccl_result);
  // The watchdog: polls the communicator's async error and the stream
  // until both are done or the timeout expires; aborts on failure.
  absl::Status Wait(const char* op);
  absl::Status Break(absl::Status why);

  void* comm_;    // ncclComm_t; null once aborted
  void* stream_;  // cudaStream_t
  const int rank_;
  const int world_size_;
  const int device_;
  const absl::Duration timeout_;
  double* scratch_device_ = nullptr;
  double* scratch_pinned_ = nullptr;
  int64_t scratch_capacity_ = 0;
  std::string broken_;  // why, once broken
};

}  // namespace sherd::internal
