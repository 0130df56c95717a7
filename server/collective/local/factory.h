// Collectives for ranks on one host, over shared memory.
//
// On CPU every shard server's gradient and parameter buffers are POSIX
// shared memory already (the trainer maps them). When all ranks run on one
// host, a reduce-scatter need not push gradients through loopback TCP: rank
// r sums its slice straight out of every peer's gradient buffer, and an
// all-gather copies each peer's slice out of its parameter buffer. This
// backend does that for buffers advised with AdviseSharedBuffer, and hands
// everything else — barriers, small all-reduces, unadvised buffers, and
// ranks on several hosts — to the wrapped backend (Gloo), whose barriers
// also order the shared-memory reads and carry its timeouts and failure
// detection.
//
// Decided per buffer at its first collective: each rank looks up the peers'
// object names in the rendezvous store and tries to map them; an all-reduce
// of the outcome makes every rank take the same path.
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "server/collective/collective.h"
#include "server/rendezvous/kv_store.h"

namespace sherd {

struct LocalShmOptions {
  std::string prefix = "shm";         // key prefix in the store
  absl::Duration lookup_timeout = absl::Seconds(60);
  bool enabled = true;                // false: pass everything through
};

std::unique_ptr<Collective> CreateLocalShmCollective(
    std::unique_ptr<Collective> inner, std::shared_ptr<KvStore> store,
    const LocalShmOptions& options = {});

}  // namespace sherd
