// The Gloo backend behind sherd::Collective (see collective.h for the
// contract). Built by CreateGlooCollective (factory.h) once the full mesh is
// connected; this class only runs collectives on that mesh.
//
// How each operation maps onto Gloo:
//  - ReduceScatter: a cached gloo::ReduceScatterHalvingDoubling on the
//    caller's buffer, then one chunk-sized copy that moves this rank's sum
//    from the front of the buffer (where Gloo leaves it) to rank * chunk.
//  - AllGather: gloo::allgather with only an output buffer, which Gloo runs
//    as an in-place ring on the caller's buffer: no staging copy at all.
//  - AllReduce / Barrier: Gloo's options API (unbound buffers, cheap to
//    build per call for the few scalars they carry).
//
// Failure: every Gloo exception is caught here and returned as UNAVAILABLE.
// The first one also closes all connections, so peers blocked in the same
// collective fail at once rather than at their own timeout, and so no late
// message can land in a caller's buffer after the call returned; from then on
// every call returns UNAVAILABLE without touching the network.
// Not thread-safe, like every Collective.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gloo/context.h"
#include "server/collective/collective.h"
#include "server/collective/gloo/reduce_scatter_cache.h"

namespace sherd::internal {

class GlooCollective final : public Collective {
 public:
  // `cache_size`: distinct buffers whose reduce-scatter setup stays cached.
  GlooCollective(std::shared_ptr<gloo::Context> context,
                 std::chrono::milliseconds timeout, size_t cache_size);
  ~GlooCollective() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string Describe() const override { return "gloo over TCP"; }

  absl::Status ReduceScatter(float* buf, int64_t chunk) override;
  absl::Status AllGather(float* buf, int64_t chunk) override;
  absl::Status AllReduce(std::span<double> values) override;
  absl::Status Barrier() override;

 private:
  // Runs `fn` (which calls into Gloo), converting any exception into
  // UNAVAILABLE and breaking the backend.
  template <typename Fn>
  absl::Status Guarded(const char* op, Fn&& fn);
  absl::Status Break(const char* op, const std::string& error);
  absl::Status BrokenError(const char* op) const;

  const int rank_;
  const int world_size_;
  const std::chrono::milliseconds timeout_;
  // Declared before the cache: cached algorithms hold buffers registered on
  // this context's pairs and must be destroyed first.
  std::shared_ptr<gloo::Context> context_;
  ReduceScatterCache reduce_scatter_cache_;
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace sherd::internal
