// Collectives over shared memory within a host, and over the wrapped backend
// (Gloo) across hosts.
//
// On CPU every shard server's gradient and parameter buffers are POSIX
// shared memory already (the trainer maps them). Ranks that share a
// /dev/shm need not push gradients through TCP: they can read each other's
// buffers. This backend does so for buffers advised with AdviseSharedBuffer,
// and hands everything else (barriers, small all-reduces, unadvised
// buffers) to the wrapped backend, whose barriers also order the
// shared-memory reads and carry its timeouts and failure detection.
//
// Topology, decided once at the first collective on an advised buffer: each
// rank publishes the id of its /dev/shm ("host", HostShmId) in the store and
// reads everyone's, so every rank computes the same grouping: H hosts,
// ordered by their lowest rank, each rank at local index i on its host.
//  - One host: rank r sums its slice straight out of every peer's gradient
//    buffer, and copies every peer's slice out of its parameter buffer.
//  - H hosts of L ranks each (L > 1): hierarchical. Cross-host group i holds
//    the H ranks at local index i, connected by a backend of their own
//    (`make_group`). A reduce-scatter sums, within the host, the chunks owned
//    by group i's members (shared memory), then reduce-scatters those H
//    partial chunks in group i (TCP): each rank sends (H-1) chunks across
//    hosts instead of the flat ring's (W-1). An all-gather is the reverse.
//  - Otherwise (one rank per host, hosts of unequal size, no make_group):
//    everything goes to the wrapped backend.
// Per buffer, every rank then maps its host's peers' objects; an all-reduce
// of the outcome makes every rank take the same path.
//
// Sums are in a fixed order (local ranks by index, then the group backend's
// own fixed order), so a run is reproducible bit for bit on one topology.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/collective/collective.h"
#include "server/rendezvous/kv_store.h"

namespace sherd {

// Builds a backend over a subset of the ranks: this rank is `rank` of
// `world_size`, and `prefix` (distinct per subset) keys its rendezvous.
using GroupFactory = std::function<absl::StatusOr<std::unique_ptr<Collective>>(
    const std::string& prefix, int rank, int world_size)>;

struct LocalShmOptions {
  std::string prefix = "shm";         // key prefix in the store
  absl::Duration lookup_timeout = absl::Seconds(60);
  bool enabled = true;                // false: pass everything through
  // The shared-memory domain this rank is in: ranks with equal ids can map
  // each other's buffers. Empty: HostShmId(). Tests set it to simulate
  // several hosts in one process.
  std::string host_id;
  // Builds the cross-host groups; null: ranks on several hosts use the
  // wrapped backend for everything.
  GroupFactory make_group;
};

std::unique_ptr<Collective> CreateLocalShmCollective(
    std::unique_ptr<Collective> inner, std::shared_ptr<KvStore> store,
    LocalShmOptions options = {});

// The id of this machine's /dev/shm: a random token kept in the shared
// memory object "/sherd.host-id", created by the first process that asks.
// Processes that see the same id share /dev/shm (one host, or containers
// sharing it). Fails only where shared memory cannot be used at all.
absl::StatusOr<std::string> HostShmId();

}  // namespace sherd
