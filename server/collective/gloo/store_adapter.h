// Presents a sherd::KvStore as the gloo::rendezvous::Store that Gloo's
// connectFullMesh expects, so Gloo's rendezvous goes through our store (the
// peer service on rank 0, or an InMemoryKvStore in tests).
//
// Contract: every key is namespaced as "<prefix>/<key>". Gloo's Store API has
// no error channel, so failures (a key missing past the timeout, an
// unreachable store) are thrown as gloo::IoException; the caller of
// connectFullMesh catches them and turns them into a Status. Waits without an
// explicit timeout use the one given here, never Gloo's 30 s default.
// Holds a reference to `store`, which must outlive the adapter. Thread-safe
// when the underlying store is.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"
#include "server/rendezvous/kv_store.h"

namespace sherd::internal {

class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(KvStore& store, std::string prefix, absl::Duration timeout);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

 private:
  std::string FullKey(const std::string& key) const;

  KvStore& store_;
  const std::string prefix_;
  const absl::Duration timeout_;
};

}  // namespace sherd::internal
