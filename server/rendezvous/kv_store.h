// A small key-value store used for rendezvous: Gloo's store and NCCL's unique
// id go through it. Rank 0 hosts the real one over gRPC (peer service); the
// in-memory one serves threads-as-ranks tests.
//
// Contract: Set overwrites; SetIfAbsent sets only a key that does not exist
// (first writer wins, atomically) and returns the value the key holds
// afterwards; Get blocks until the key exists or the timeout expires
// (DEADLINE_EXCEEDED), or the store becomes unreachable (UNAVAILABLE).
// Erase removes a key; only the store's host may erase (the remote view
// answers UNIMPLEMENTED). Implementations are thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sherd {

class KvStore {
 public:
  virtual ~KvStore() = default;
  virtual absl::Status Set(std::string_view key, std::string_view value) = 0;
  virtual absl::StatusOr<std::string> SetIfAbsent(std::string_view key,
                                                  std::string_view value) = 0;
  virtual absl::StatusOr<std::string> Get(std::string_view key,
                                          absl::Duration timeout) = 0;
  virtual absl::Status Erase(std::string_view key) {
    return absl::UnimplementedError("this store view cannot erase keys");
  }
};

class InMemoryKvStore : public KvStore {
 public:
  absl::Status Set(std::string_view key, std::string_view value) override {
    absl::MutexLock lock(&mu_);
    map_[std::string(key)] = std::string(value);
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> SetIfAbsent(std::string_view key,
                                          std::string_view value) override {
    absl::MutexLock lock(&mu_);
    return map_.try_emplace(std::string(key), value).first->second;
  }
  absl::Status Erase(std::string_view key) override {
    absl::MutexLock lock(&mu_);
    map_.erase(std::string(key));
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(std::string_view key,
                                  absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    std::string k(key);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return map_.count(k) > 0;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) {
      return absl::DeadlineExceededError("rendezvous key not set in time: " +
                                         k);
    }
    return map_[k];
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> map_ ABSL_GUARDED_BY(mu_);
};

// A view of another store with every key under `prefix`: what one
// membership epoch of a cluster uses, so that the step agreement, the
// checkpoint reports and the restore choice of a rebuilt cluster never read
// keys of the one before it.
class PrefixedKvStore final : public KvStore {
 public:
  PrefixedKvStore(std::shared_ptr<KvStore> inner, std::string prefix)
      : inner_(std::move(inner)), prefix_(std::move(prefix)) {}
  absl::Status Set(std::string_view key, std::string_view value) override {
    return inner_->Set(Key(key), value);
  }
  absl::StatusOr<std::string> SetIfAbsent(std::string_view key,
                                          std::string_view value) override {
    return inner_->SetIfAbsent(Key(key), value);
  }
  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override {
    return inner_->Get(Key(key), timeout);
  }
  absl::Status Erase(std::string_view key) override { return inner_->Erase(Key(key)); }

 private:
  std::string Key(std::string_view key) const { return prefix_ + std::string(key); }
  const std::shared_ptr<KvStore> inner_;
  const std::string prefix_;
};

}  // namespace sherd
