#include "server/collective/gloo/store_adapter.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "gloo/common/error.h"

namespace sherd::internal {
namespace {

[[noreturn]] void ThrowStoreError(const std::string& what,
                                  const absl::Status& status) {
  // IoException is what Gloo itself throws for transport trouble, so the
  // boundary that catches it treats a dead store like a dead peer.
  throw gloo::IoException(absl::StrCat("rendezvous store ", what, ": ",
                                       status.ToString()));
}

}  // namespace

GlooStoreAdapter::GlooStoreAdapter(KvStore& store, std::string prefix,
                                   absl::Duration timeout)
    : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

std::string GlooStoreAdapter::FullKey(const std::string& key) const {
  return absl::StrCat(prefix_, "/", key);
}

void GlooStoreAdapter::set(const std::string& key,
                           const std::vector<char>& data) {
  const std::string full = FullKey(key);
  absl::Status status =
      store_.Set(full, std::string_view(data.data(), data.size()));
  if (!status.ok()) ThrowStoreError("set " + full, status);
}

std::vector<char> GlooStoreAdapter::get(const std::string& key) {
  const std::string full = FullKey(key);
  absl::StatusOr<std::string> value = store_.Get(full, timeout_);
  if (!value.ok()) ThrowStoreError("get " + full, value.status());
  return std::vector<char>(value->begin(), value->end());
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys) {
  wait(keys, absl::ToChronoMilliseconds(timeout_));
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  // One deadline for the whole set: waiting key by key with the full timeout
  // each would let N missing keys take N timeouts.
  const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
  for (const std::string& key : keys) {
    const std::string full = FullKey(key);
    absl::Duration left = deadline - absl::Now();
    if (left < absl::ZeroDuration()) left = absl::ZeroDuration();
    absl::StatusOr<std::string> value = store_.Get(full, left);
    if (!value.ok()) ThrowStoreError("wait " + full, value.status());
  }
}

}  // namespace sherd::internal
