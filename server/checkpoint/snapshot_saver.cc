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
                                  WriteOptions options, CopyOut copy) {
  if (slice.begin < 0 || slice.end < slice.begin) {
    return absl::InvalidArgumentError("SnapshotSaver: bad slice");
  }
  const float* src[kNumStateArrays] = {param, exp_avg, exp_avg_sq};
  if (!slice.empty() && (!param || !exp_avg || !exp_avg_sq)) {
    return absl::InvalidArgumentError("SnapshotSaver: null state array");
  }
  const int64_t n = slice.size();
  {
    absl::MutexLock lock(&mu_);
    if (in_flight_) {
      return absl::FailedPreconditionError(
          "a checkpoint save is already in flight on this rank");
    }
    // Claim the saver; the previous thread has finished its work (it
    // cleared in_flight_), so reaping it is immediate.
    in_flight_ = true;
    if (thread_.joinable()) thread_.join();
    result_.reset();
    written_ = 0;
    total_ = ShardFileBytes(n);
  }
  // The copy runs unlocked so progress() stays responsive; nothing else
  // touches copies_ while in_flight_ is ours.
  for (int a = 0; a < kNumStateArrays; ++a) {
    if (copies_[a].size() != n && !copies_[a].Allocate(n)) {
      absl::MutexLock lock(&mu_);
      in_flight_ = false;
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", n * 4, " bytes to snapshot the slice"));
    }
    if (n > 0 && copy) {
      if (absl::Status s = copy(copies_[a].data(), src[a], n); !s.ok()) {
        absl::MutexLock lock(&mu_);
        in_flight_ = false;
        return s;
      }
    } else if (n > 0) {
      std::memcpy(copies_[a].data(), src[a], static_cast<size_t>(n) * 4);
    }
  }
  options.bytes_written = &written_;
  absl::MutexLock lock(&mu_);
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
