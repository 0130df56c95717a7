// NCCL (GPU) implementation of the Collective interface
// (server/collective/collective.h).
//
// BUFFERS ARE DEVICE MEMORY. The interface takes `float*`; for this backend
// ReduceScatter and AllGather buffers must be device (or managed) memory on
// options.device; a host pointer is INVALID_ARGUMENT, checked before NCCL
// sees it. AllReduce takes host doubles as the interface says (they are
// staged through pinned and device scratch); NcclCollective::AllReduceDevice
// (nccl_collective.h) reduces device doubles in place with no host copies.
//
// Rendezvous: rank 0 creates the NCCL unique id and publishes it, base64,
// under "<prefix>/unique_id" in the KvStore (the same store Gloo uses); the
// other ranks wait for it up to options.timeout. Use a fresh prefix per
// incarnation of a group: a stale id under the same key would be read by a
// rank that arrives before rank 0 overwrites it.
//
// Every operation (and the communicator's creation) is watched: NCCL runs
// non-blocking and the calling thread polls its async error and the stream
// until done or options.timeout; then the communicator is aborted, the call
// returns UNAVAILABLE and the backend is broken (every later call fails
// fast with UNAVAILABLE), as the interface requires.
//
// Without CUDA/NCCL at build time the factory returns UNIMPLEMENTED.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/collective/collective.h"
#include "server/rendezvous/kv_store.h"

namespace sherd {

struct NcclOptions {
  // Timeout of the rendezvous, of the communicator's creation and of every
  // collective operation.
  absl::Duration timeout = absl::Seconds(60);
  // CUDA device this rank's communicator and buffers live on.
  int device = 0;
  // Keys in the store are prefixed with this (see above).
  std::string prefix = "nccl";
};

// Blocks until every rank has joined or the timeout expires (UNAVAILABLE).
// INVALID_ARGUMENT for a bad rank/world/timeout/device; FAILED_PRECONDITION
// when the device is not usable (no GPU, no driver).
absl::StatusOr<std::unique_ptr<Collective>> CreateNcclCollective(
    KvStore& store, int rank, int world_size, const NcclOptions& options);

}  // namespace sherd
