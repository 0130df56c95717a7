// Keeps Gloo's reduce-scatter algorithm objects alive between calls.
//
// Why: gloo::ReduceScatterHalvingDoubling registers its send/recv buffers
// with every pair in its constructor, which costs about ten times the
// collective itself on small machines, and the step pipeline reduce-scatters
// the same gradient buffer every step. An entry depends only on (buffer
// pointer, element count), so that pair is the key; a buffer freed and
// reallocated at the same address with the same size reuses its entry
// correctly.
//
// Every rank must see the same sequence of Get() calls (the Collective SPMD
// contract): construction consumes context slots and the least recently used
// eviction must pick the same entry everywhere. Each entry also holds Gloo's
// scratch (about twice the buffer), which bounds how many are worth keeping.
// Gloo exceptions propagate; the caller converts them. Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "gloo/context.h"
#include "gloo/reduce_scatter.h"

namespace sherd::internal {

class ReduceScatterCache {
 public:
  using Algorithm = gloo::ReduceScatterHalvingDoubling<float>;

  ReduceScatterCache(std::shared_ptr<gloo::Context> context,
                     size_t capacity);

  // The algorithm that sums `buf` (world_size * chunk floats) across ranks,
  // leaving this rank's chunk at the FRONT of `buf` (Gloo's layout, not
  // ours). Builds it on a miss, evicting the least recently used entry.
  Algorithm& Get(float* buf, int64_t chunk);

  // Drops every entry, unregistering its buffers from the pairs.
  void Clear() { entries_.clear(); }

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    float* buf;
    int64_t chunk;
    uint64_t last_use;
    std::unique_ptr<Algorithm> algorithm;
  };

  const std::shared_ptr<gloo::Context> context_;
  const size_t capacity_;
  uint64_t clock_ = 0;
  std::vector<Entry> entries_;
};

}  // namespace sherd::internal
