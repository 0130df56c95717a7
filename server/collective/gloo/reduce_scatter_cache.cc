#include "server/collective/gloo/reduce_scatter_cache.h"

#include <algorithm>
#include <utility>

namespace sherd::internal {

ReduceScatterCache::ReduceScatterCache(std::shared_ptr<gloo::Context> context,
                                       size_t capacity)
    : context_(std::move(context)), capacity_(std::max<size_t>(capacity, 1)) {}

ReduceScatterCache::Algorithm& ReduceScatterCache::Get(float* buf,
                                                       int64_t chunk) {
  ++clock_;
  for (Entry& entry : entries_) {
    if (entry.buf == buf && entry.chunk == chunk) {
      entry.last_use = clock_;
      return *entry.algorithm;
    }
  }
  if (entries_.size() >= capacity_) {
    auto oldest = std::min_element(
        entries_.begin(), entries_.end(),
        [](const Entry& a, const Entry& b) { return a.last_use < b.last_use; });
    entries_.erase(oldest);
  }
  const int world_size = context_->size;
  // Equal receive counts: rank r ends up with the sum of chunk r, which is
  // exactly our contract apart from where Gloo leaves it.
  std::vector<int> recv_counts(world_size, static_cast<int>(chunk));
  auto algorithm = std::make_unique<Algorithm>(
      context_, std::vector<float*>{buf},
      static_cast<int>(chunk * world_size), recv_counts);
  entries_.push_back(Entry{buf, chunk, clock_, std::move(algorithm)});
  return *entries_.back().algorithm;
}

}  // namespace sherd::internal
