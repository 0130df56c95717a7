#include "server/collective/gloo/gloo_collective.h"

#include <climits>
#include <cstring>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/math.h"
#include "server/collective/argument_checks.h"

namespace sherd::internal {
namespace {

void SumDoubles(void* out, const void* a, const void* b, size_t n) {
  gloo::sum<double>(out, a, b, n);
}

}  // namespace

GlooCollective::GlooCollective(std::shared_ptr<gloo::Context> context,
                               std::chrono::milliseconds timeout,
                               size_t cache_size)
    : rank_(context->rank),
      world_size_(context->size),
      timeout_(timeout),
      context_(std::move(context)),
      reduce_scatter_cache_(context_, cache_size) {}

GlooCollective::~GlooCollective() {
  // Gloo's destructors do not throw in practice, but the cache must go
  // before the pairs its buffers are registered with.
  reduce_scatter_cache_.Clear();
}

absl::Status GlooCollective::BrokenError(const char* op) const {
  return absl::UnavailableError(absl::StrCat(
      "gloo ", op, " on rank ", rank_, "/", world_size_,
      ": backend is broken by an earlier failure: ", broken_reason_));
}

absl::Status GlooCollective::Break(const char* op, const std::string& error) {
  broken_ = true;
  broken_reason_ = absl::StrCat(op, ": ", error);
  // Close before dropping the cache: closing stops the device thread from
  // touching buffers (ours or the caller's) that the cached algorithms
  // registered, and wakes peers stuck in this collective.
  try {
    context_->closeConnections();
  } catch (...) {
    // Already failing; the connections are unusable either way.
  }
  reduce_scatter_cache_.Clear();
  return absl::UnavailableError(absl::StrCat("gloo ", op, " failed on rank ",
                                             rank_, "/", world_size_, ": ",
                                             error));
}

template <typename Fn>
absl::Status GlooCollective::Guarded(const char* op, Fn&& fn) {
  std::string error;
  try {
    fn();
    return absl::OkStatus();
  } catch (const gloo::IoException& e) {
    error = absl::StrCat("I/O error or timeout: ", e.what());
  } catch (const gloo::EnforceNotMet& e) {
    error = absl::StrCat("internal check failed: ", e.what());
  } catch (const gloo::Exception& e) {
    error = e.what();
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {
    error = "unknown exception";
  }
  return Break(op, error);
}

absl::Status GlooCollective::ReduceScatter(float* buf, int64_t chunk) {
  if (broken_) return BrokenError("ReduceScatter");
  absl::Status status =
      CheckChunkArgs("ReduceScatter", buf, chunk, world_size_);
  if (!status.ok()) return status;
  if (world_size_ == 1 || chunk == 0) return absl::OkStatus();
  // Gloo's halving-doubling keeps sizes in int bytes.
  if (chunk * world_size_ > INT_MAX / static_cast<int64_t>(sizeof(float))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReduceScatter: ", chunk * world_size_,
        " floats exceed Gloo's 2 GiB per-call limit; split into buckets"));
  }
  return Guarded("ReduceScatter", [&] {
    reduce_scatter_cache_.Get(buf, chunk).run();
    // Gloo leaves rank r's sum at buf[0, chunk); our contract wants it at
    // buf[r*chunk, ...). The ranges are disjoint for r > 0, and only a
    // 1/world_size slice moves.
    if (rank_ != 0) {
      std::memcpy(buf + rank_ * chunk, buf, chunk * sizeof(float));
    }
  });
}

absl::Status GlooCollective::AllGather(float* buf, int64_t chunk) {
  if (broken_) return BrokenError("AllGather");
  absl::Status status = CheckChunkArgs("AllGather", buf, chunk, world_size_);
  if (!status.ok()) return status;
  if (world_size_ == 1 || chunk == 0) return absl::OkStatus();
  // The options object (and the unbound buffer it owns) lives until after
  // Guarded returns, i.e. after Break closed the connections on failure, so
  // nothing can still be writing into `buf` once we return.
  gloo::AllgatherOptions opts(context_);
  return Guarded("AllGather", [&] {
    // No input buffer: Gloo takes this rank's chunk from its slot in the
    // output and runs the ring in place.
    opts.setOutput(buf, static_cast<size_t>(chunk * world_size_));
    opts.setTimeout(timeout_);
    gloo::allgather(opts);
  });
}

absl::Status GlooCollective::AllReduce(std::span<double> values) {
  if (broken_) return BrokenError("AllReduce");
  absl::Status status = CheckValues("AllReduce", values);
  if (!status.ok()) return status;
  if (world_size_ == 1 || values.empty()) return absl::OkStatus();
  gloo::AllreduceOptions opts(context_);
  return Guarded("AllReduce", [&] {
    opts.setOutput(values.data(), values.size());
    opts.setReduceFunction(&SumDoubles);
    opts.setTimeout(timeout_);
    gloo::allreduce(opts);
  });
}

absl::Status GlooCollective::Barrier() {
  if (broken_) return BrokenError("Barrier");
  if (world_size_ == 1) return absl::OkStatus();
  gloo::BarrierOptions opts(context_);
  return Guarded("Barrier", [&] {
    opts.setTimeout(timeout_);
    gloo::barrier(opts);
  });
}

}  // namespace sherd::internal
