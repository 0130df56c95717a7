// Gloo (CPU, TCP transport) implementation of the Collective interface.
// Never throws: everything Gloo throws, here and in every later collective,
// comes back as a Status (UNAVAILABLE for lost peers and timeouts).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/collective/collective.h"
#include "server/rendezvous/kv_store.h"

namespace sherd {

struct GlooOptions {
  // Address this rank's Gloo TCP transport binds to (loopback by default).
  std::string hostname = "127.0.0.1";
  // Timeout of every collective operation and of the rendezvous.
  absl::Duration timeout = absl::Seconds(60);
  // Keys in the store are prefixed with this, so several backends (e.g. a
  // restart, or tests) can share one store.
  std::string prefix = "gloo";
  // How many distinct buffers keep their reduce-scatter setup cached (least
  // recently used is evicted). Each entry holds Gloo scratch of about twice
  // its buffer; a pipeline cycling through more buffers than this (e.g. more
  // buckets) rebuilds on every call, which is about 3x slower.
  int reduce_scatter_cache_size = 8;
};

// Connects to every peer through `store` (which must outlive the call only).
// Returns UNAVAILABLE if the peers do not all join within the timeout.
absl::StatusOr<std::unique_ptr<Collective>> CreateGlooCollective(
    KvStore& store, int rank, int world_size, const GlooOptions& options);

}  // namespace sherd
