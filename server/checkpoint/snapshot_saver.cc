#include "server/checkpoint/snapshot_saver.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sherd {

SnapshotSaver::~SnapshotSaver() {
  Wait().IgnoreError();
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) thread_.join();
}

absl::Status SnapshotSaver::Start(std::string dir, int rank, int world_size,
                                  Range slice, int64_t step,
                                  const float* param, const float* exp_avg,
                                  const float* exp_avg_sq, Done done,
                                  WriteOptions options) {
  absl::MutexLock lock(&mu_);
  if (in_flight_) {
    return absl::FailedPreconditionError(
        "a checkpoint save is already in flight on this rank");
  }
  if (slice.begin < 0 || slice.end < slice.begin) {
    return absl::InvalidArgumentError("SnapshotSaver: bad slice");
  }
  const float* src[kNumStateArrays] = {param, exp_avg, exp_avg_sq};
  if (!slice.empty() && (!param || !exp_avg || !exp_avg_sq)) {
    return absl::InvalidArgumentError("SnapshotSaver: null state array");
  }
  // The previous thread has finished its work (in_flight_ is false); reap it.
  if (thread_.joinable()) thread_.join();
  const int64_t n = slice.size();
  for (int a = 0; a < kNumStateArrays; ++a) {
    if (copies_[a].size() != n && !copies_[a].Allocate(n)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", n * 4, " bytes to snapshot the slice"));
    }
    if (n > 0) {
      std::memcpy(copies_[a].data(), src[a], static_cast<size_t>(n) * 4);
    }
  }
  in_flight_ = true;
  result_.reset();
  written_ = 0;
  total_ = ShardFileBytes(n);
  options.bytes_written = &written_;
  thread_ = std::thread(&SnapshotSaver::Run, this, std::move(dir), rank,
                        world_size, slice, step, std::move(done), options);
  return absl::OkStatus();
}

void SnapshotSaver::Run(std::string dir, int rank, int world_size,
                        Range slice, int64_t step, Done done,
                        WriteOptions options) {
  absl::StatusOr<ShardInfo> r =
      WriteShard(dir, rank, world_size, slice, step, copies_[0].data(),
                 copies_[1].data(), copies_[2].data(), options);
  if (done) done(r);
  absl::MutexLock lock(&mu_);
  result_ = std::move(r);
  in_flight_ = false;
}

absl::StatusOr<ShardInfo> SnapshotSaver::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](bool* in_flight) { return !*in_flight; }, &in_flight_));
  if (!result_.has_value()) {
    return absl::FailedPreconditionError("no checkpoint save was started");
  }
  return *result_;
}

SnapshotSaver::Progress SnapshotSaver::progress() const {
  Progress p;
  p.bytes_written = written_.load();
  p.bytes_total = total_.load();
  absl::MutexLock lock(&mu_);
  p.in_flight = in_flight_;
  return p;
}

}  // namespace sherd
