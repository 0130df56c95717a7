// Asynchronous save of one rank's shard: Start() copies the slice's three
// arrays into buffers the saver owns and returns; a background thread then
// writes the shard (WriteShard) and reports the result. So the step
// pipeline is held only for the memcpy, never for the disk.
//
//   SnapshotSaver saver;
//   // under the step mutex:
//   RETURN_IF_ERROR(saver.Start(temp_dir, rank, world, slice, step,
//                               master, exp_avg, exp_avg_sq,
//                               [&](const absl::StatusOr<ShardInfo>& r) {
//                                 ReportToCoordinator(r);  // may commit
//                               }));
//   ... later: saver.progress(), saver.Wait()
//
// At most one save is in flight: Start() while one runs is
// FAILED_PRECONDITION. `done` runs on the background thread before the save
// stops counting as in flight, so Wait() and the destructor also wait for
// it (a coordinator's commit inside `done` is covered by shutdown); `done`
// must not call Start(). The copy buffers are kept and reused between saves.
// Threads: all methods are thread-safe; the destructor waits.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/aligned_buffer.h"
#include "server/checkpoint/writer.h"

namespace sherd {

class SnapshotSaver {
 public:
  using Done = std::function<void(const absl::StatusOr<ShardInfo>&)>;
  // Copies n floats of state into host memory (state on a GPU); null:
  // memcpy.
  using CopyOut =
      std::function<absl::Status(float* host_dst, const float* src, int64_t n)>;
  struct Progress {
    int64_t bytes_written = 0;
    int64_t bytes_total = 0;  // of the latest save
    bool in_flight = false;
  };

  SnapshotSaver() = default;
  SnapshotSaver(const SnapshotSaver&) = delete;
  SnapshotSaver& operator=(const SnapshotSaver&) = delete;
  ~SnapshotSaver();  // waits for the save in flight

  // Copies slice.size() floats from each array (with `copy` when set),
  // then saves in the background. RESOURCE_EXHAUSTED if the copy cannot be
  // allocated; a failed `copy` is returned and nothing is saved.
  absl::Status Start(std::string dir, int rank, int world_size, Range slice,
                     int64_t step, const float* param, const float* exp_avg,
                     const float* exp_avg_sq, Done done = nullptr,
                     WriteOptions options = {}, CopyOut copy = nullptr);

  // Waits until no save is in flight; the latest save's result
  // (FAILED_PRECONDITION if there was none).
  absl::StatusOr<ShardInfo> Wait();
  Progress progress() const;

 private:
  void Run(std::string dir, int rank, int world_size, Range slice,
           int64_t step, Done done, WriteOptions options);

  mutable absl::Mutex mu_;
  bool in_flight_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::StatusOr<ShardInfo>> result_ ABSL_GUARDED_BY(mu_);
  std::thread thread_ ABSL_GUARDED_BY(mu_);
  // Written by Start() only while no save is in flight; read by the thread.
  AlignedFloats copies_[kNumStateArrays];
  std::atomic<int64_t> written_{0};
  std::atomic<int64_t> total_{0};
};

}  // namespace sherd
