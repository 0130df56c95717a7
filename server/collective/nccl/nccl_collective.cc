// NCCL collectives with a watchdog. NCCL runs non-blocking (the
// communicator was created with blocking = 0), so no NCCL call can hang the
// thread; the waiting happens here, in Wait(), where it can be bounded.
#include "server/collective/nccl/nccl_collective.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cuda_kernels/cuda_status.h"
#include "cuda_kernels/device.h"
#include "server/collective/argument_checks.h"
#include "server/collective/nccl/nccl_status.h"

namespace sherd::internal {
namespace {

ncclComm_t Comm(void* c) { return static_cast<ncclComm_t>(c); }
cudaStream_t Stream(void* s) { return static_cast<cudaStream_t>(s); }

// Short collectives finish in tens of microseconds: spin (yielding) first,
// then sleep so a long wait does not burn a core.
class Backoff {
 public:
  void Pause() {
    if (spins_ < 2000) {
      ++spins_;
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

 private:
  int spins_ = 0;
};

constexpr int64_t kMinScratch = 64;

}  // namespace

NcclCollective::NcclCollective(void* comm, void* stream, int rank,
                               int world_size, int device,
                               absl::Duration timeout)
    : comm_(comm),
      stream_(stream),
      rank_(rank),
      world_size_(world_size),
      device_(device),
      timeout_(timeout) {}

NcclCollective::~NcclCollective() {
  cudaSetDevice(device_);
  if (comm_ != nullptr) {
    // Finalize flushes outstanding work and is itself non-blocking; bound
    // it like any operation and abort if it does not finish.
    const absl::Time deadline = absl::Now() + timeout_;
    ncclResult_t state = ncclCommFinalize(Comm(comm_));
    Backoff backoff;
    while (state == ncclInProgress && absl::Now() < deadline) {
      if (ncclCommGetAsyncError(Comm(comm_), &state) != ncclSuccess) break;
      if (state == ncclInProgress) backoff.Pause();
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(Comm(comm_));
    } else {
      ncclCommAbort(Comm(comm_));
    }
  }
  // Not synchronized: the runtime releases the stream once its work is done.
  cudaStreamDestroy(Stream(stream_));
  cudaFree(scratch_device_);
  cudaFreeHost(scratch_pinned_);
}

absl::Status NcclCollective::Break(absl::Status why) {
  if (comm_ != nullptr) {
    ncclCommAbort(Comm(comm_));
    comm_ = nullptr;
  }
  broken_ = std::string(why.message());
  return why;
}

absl::Status NcclCollective::Prologue(const char* op, const float* buf,
                                      int64_t chunk) {
  if (!broken_.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "NCCL ", op, ": backend broken by an earlier error: ", broken_));
  }
  absl::Status args = CheckChunkArgs(op, buf, chunk, world_size_);
  if (!args.ok()) return args;
  absl::Status dev = CudaSetDevice(device_);
  if (!dev.ok()) return dev;
  if (chunk > 0 && !IsDevicePointer(buf)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NCCL ", op, ": buffer is not device memory on device ", device_,
        " (the NCCL backend takes device pointers)"));
  }
  return absl::OkStatus();
}

absl::Status NcclCollective::Enqueued(const char* op, int nccl_result) {
  if (nccl_result == ncclSuccess) return absl::OkStatus();
  if (nccl_result != ncclInProgress) {
    return Break(NcclStatus(nccl_result, op, comm_));
  }
  // In non-blocking mode the enqueue may finish in the background; the
  // stream must not be used (nor NCCL called) before it has.
  const absl::Time deadline = absl::Now() + timeout_;
  Backoff backoff;
  for (;;) {
    ncclResult_t state;
    const ncclResult_t r = ncclCommGetAsyncError(Comm(comm_), &state);
    if (r != ncclSuccess) return Break(NcclStatus(r, op, comm_));
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return Break(NcclStatus(state, op, comm_));
    if (absl::Now() >= deadline) {
      return Break(absl::UnavailableError(absl::StrCat(
          "NCCL ", op, ": not enqueued within ", absl::FormatDuration(timeout_),
          "; communicator aborted")));
    }
    backoff.Pause();
  }
}

absl::Status NcclCollective::Wait(const char* op) {
  const absl::Time deadline = absl::Now() + timeout_;
  Backoff backoff;
  for (;;) {
    ncclResult_t state;
    const ncclResult_t r = ncclCommGetAsyncError(Comm(comm_), &state);
    if (r != ncclSuccess) return Break(NcclStatus(r, op, comm_));
    if (state != ncclSuccess && state != ncclInProgress) {
      return Break(NcclStatus(state, op, comm_));
    }
    const cudaError_t q = cudaStreamQuery(Stream(stream_));
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) {
      return Break(CudaStatus(q, absl::StrCat("NCCL ", op, ": stream")));
    }
    if (absl::Now() >= deadline) {
      return Break(absl::UnavailableError(absl::StrCat(
          "NCCL ", op, ": timed out after ", absl::FormatDuration(timeout_),
          " (rank ", rank_, " of ", world_size_,
          "; a peer is lost or late); communicator aborted")));
    }
    backoff.Pause();
  }
}

absl::Status NcclCollective::EnsureScratch(int64_t n) {
  if (n <= scratch_capacity_) return absl::OkStatus();
  const int64_t cap = std::max(n, kMinScratch);
  // Freed buffers were last used by a finished (waited-for) operation.
  cudaFree(scratch_device_);
  cudaFreeHost(scratch_pinned_);
  scratch_device_ = nullptr;
  scratch_pinned_ = nullptr;
  scratch_capacity_ = 0;
  const size_t bytes = cap * sizeof(double);
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaMalloc(reinterpret_cast<void**>(&scratch_device_), bytes),
      "NCCL scratch cudaMalloc");
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&scratch_pinned_), bytes),
      "NCCL scratch cudaMallocHost");
  scratch_capacity_ = cap;
  return absl::OkStatus();
}

absl::Status NcclCollective::ReduceScatter(float* buf, int64_t chunk) {
  absl::Status s = Prologue("ReduceScatter", buf, chunk);
  if (!s.ok() || chunk == 0) return s;
  // In place, NCCL's convention: recvbuff = sendbuff + rank * recvcount.
  s = Enqueued("ReduceScatter",
               ncclReduceScatter(buf, buf + rank_ * chunk,
                                 static_cast<size_t>(chunk), ncclFloat,
                                 ncclSum, Comm(comm_), Stream(stream_)));
  if (!s.ok()) return s;
  return Wait("ReduceScatter");
}

absl::Status NcclCollective::AllGather(float* buf, int64_t chunk) {
  absl::Status s = Prologue("AllGather", buf, chunk);
  if (!s.ok() || chunk == 0) return s;
  // In place: sendbuff = recvbuff + rank * sendcount.
  s = Enqueued("AllGather",
               ncclAllGather(buf + rank_ * chunk, buf,
                             static_cast<size_t>(chunk), ncclFloat,
                             Comm(comm_), Stream(stream_)));
  if (!s.ok()) return s;
  return Wait("AllGather");
}

absl::Status NcclCollective::AllReduce(std::span<double> values) {
  absl::Status s = Prologue("AllReduce", nullptr, 0);
  if (s.ok()) s = CheckValues("AllReduce", values);
  if (!s.ok() || values.empty()) return s;
  const int64_t n = static_cast<int64_t>(values.size());
  s = EnsureScratch(n);
  if (!s.ok()) return s;
  const size_t bytes = n * sizeof(double);
  // Pinned staging: a copy into pageable memory would block this thread
  // until the stream gets there, outside the watchdog's reach.
  std::memcpy(scratch_pinned_, values.data(), bytes);
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(scratch_device_, scratch_pinned_, bytes,
                      cudaMemcpyHostToDevice, Stream(stream_)),
      "NCCL AllReduce: copy in");
  s = Enqueued("AllReduce",
               ncclAllReduce(scratch_device_, scratch_device_,
                             static_cast<size_t>(n), ncclDouble, ncclSum,
                             Comm(comm_), Stream(stream_)));
  if (!s.ok()) return s;
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(scratch_pinned_, scratch_device_, bytes,
                      cudaMemcpyDeviceToHost, Stream(stream_)),
      "NCCL AllReduce: copy out");
  s = Wait("AllReduce");
  if (!s.ok()) return s;
  std::memcpy(values.data(), scratch_pinned_, bytes);
  return absl::OkStatus();
}

absl::Status NcclCollective::AllReduceDevice(double* device_values,
                                             int64_t n) {
  absl::Status s = Prologue("AllReduceDevice", nullptr, 0);
  if (!s.ok()) return s;
  if (n < 0 || (n > 0 && device_values == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL AllReduceDevice: bad buffer (n = ", n, ")"));
  }
  if (n == 0) return absl::OkStatus();
  if (!IsDevicePointer(device_values)) {
    return absl::InvalidArgumentError(
        "NCCL AllReduceDevice: values are not device memory");
  }
  s = Enqueued("AllReduceDevice",
               ncclAllReduce(device_values, device_values,
                             static_cast<size_t>(n), ncclDouble, ncclSum,
                             Comm(comm_), Stream(stream_)));
  if (!s.ok()) return s;
  return Wait("AllReduceDevice");
}

absl::Status NcclCollective::Barrier() {
  absl::Status s = Prologue("Barrier", nullptr, 0);
  if (s.ok()) s = EnsureScratch(1);
  if (!s.ok()) return s;
  // An all-reduce of one (meaningless) value: no rank returns before every
  // rank has entered.
  s = Enqueued("Barrier",
               ncclAllReduce(scratch_device_, scratch_device_, 1, ncclDouble,
                             ncclSum, Comm(comm_), Stream(stream_)));
  if (!s.ok()) return s;
  return Wait("Barrier");
}

}  // namespace sherd::internal
