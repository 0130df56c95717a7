// Gloo (CPU, TCP transport) implementation of the Collective interface.
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
};

// Connects to every peer through `store` (which must outlive the call only).
// Returns UNAVAILABLE if the peers do not all join within the timeout.
absl::StatusOr<std::unique_ptr<Collective>> CreateGlooCollective(
    KvStore& store, int rank, int world_size, const GlooOptions& options);

}  // namespace sherd
