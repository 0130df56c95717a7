// Counts the RPCs in flight so shutdown can let them finish, then close at
// once. (gRPC's own Shutdown(deadline) also waits for idle client
// connections until the deadline, which would stall every shutdown.)
//
//   InflightGuard g(inflight);
//   if (!g.admitted()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, ...);
//
// Thread-safe.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sherd {

class Inflight {
 public:
  bool Enter() {
    absl::MutexLock l(&mu_);
    if (draining_) return false;
    ++active_;
    return true;
  }
  void Leave() {
    absl::MutexLock l(&mu_);
    --active_;
  }
  // Refuses new calls from now on; waits until none is active or the
  // deadline passes. Returns the number still active.
  int Drain(absl::Time deadline) {
    absl::MutexLock l(&mu_);
    draining_ = true;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_ == 0; };
    mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
    return active_;
  }

 private:
  absl::Mutex mu_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

class InflightGuard {
 public:
  explicit InflightGuard(Inflight& f) : f_(f), admitted_(f.Enter()) {}
  ~InflightGuard() {
    if (admitted_) f_.Leave();
  }
  bool admitted() const { return admitted_; }

 private:
  Inflight& f_;
  bool admitted_;
};

}  // namespace sherd

// For service methods: refuses the call while the server drains.
#define SHERD_ADMIT_OR_RETURN(inflight)                                   \
  ::sherd::InflightGuard _sherd_guard(inflight);                          \
  if (!_sherd_guard.admitted())                                           \
  return ::grpc::Status(::grpc::StatusCode::UNAVAILABLE,                  \
                        "the shard server is shutting down")
