// The collective backend: what the step pipeline needs from Gloo (CPU),
// NCCL (GPU) or the trivial single-rank backend.
//
// Contract:
//  - Every rank calls the same operations in the same order with the same
//    counts (SPMD). Buffers are owned by the caller and must stay valid until
//    the call returns; calls are blocking.
//  - ReduceScatter is in place, NCCL-style: `buf` holds world_size * chunk
//    elements on every rank; on return buf[rank*chunk, (rank+1)*chunk) holds
//    the element-wise SUM over ranks of that chunk. The rest of `buf` is
//    unspecified afterwards.
//  - AllGather is in place: on entry buf[rank*chunk, (rank+1)*chunk) holds
//    this rank's chunk; on return all of buf holds every rank's chunk.
//  - AllReduce sums a small buffer (scalars: norms, flags) on every rank.
//  - Every operation honours the backend's timeout and returns
//    absl::UnavailableError when a peer is lost or the timeout expires; it
//    never hangs. After such an error the backend is broken and every later
//    call fails fast with UNAVAILABLE.
//  - Not thread-safe: one thread drives a backend at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"

namespace sherd {

class Collective {
 public:
  virtual ~Collective() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  virtual absl::Status ReduceScatter(float* buf, int64_t chunk) = 0;
  virtual absl::Status AllGather(float* buf, int64_t chunk) = 0;
  virtual absl::Status AllReduce(std::span<double> values) = 0;
  virtual absl::Status Barrier() = 0;

  // Tells the backend that `buf` (`bytes` long) is the POSIX shared-memory
  // object `shm_name`, known to every rank under `key` ("grads", "params").
  // A backend whose peers share this host may then reduce and gather by
  // reading the peers' buffers directly. Optional: the default ignores it.
  // Every rank must advise the same keys in the same order.
  virtual void AdviseSharedBuffer(const std::string& key, float* buf,
                                  const std::string& shm_name, size_t bytes) {}

  // How this backend moves data, for `sherdctl status` ("gloo over TCP",
  // "shared memory within 2 hosts of 2 ranks, gloo across"). Unlike the
  // operations, safe to call from any thread while another drives them.
  virtual std::string Describe() const = 0;
};

}  // namespace sherd
