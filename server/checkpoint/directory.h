// Operations on a checkpoint root directory as a whole: list, clean up
// after crashes, retention, and choosing what to load.
//
//   <root>/ckpt-<step, 12 digits>/   committed iff it holds a MANIFEST
//   <root>/.tmp-ckpt-*/               saves in progress or abandoned
//
// Threads / processes: CleanLeftovers and ApplyRetention must not run while
// a save into the same root is in flight (call CleanLeftovers at start-up,
// ApplyRetention after a commit, both from the coordinator only). Listing
// and FindNewestLoadable only read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/checkpoint/reader.h"

namespace sherd {

struct CheckpointInfo {
  std::string name;         // "ckpt-000000000100"
  std::string path;
  int64_t step = 0;
  absl::Time time = absl::InfinitePast();  // when it was saved
  int world_size = 0;
  int64_t bytes = 0;        // shard files + MANIFEST
  bool verified = false;    // every checksum was checked by this listing
  // OK, or why it cannot be loaded: corrupt MANIFEST, missing or short
  // file, bad header (always checked), bad chunk (when verified).
  absl::Status status;
};

struct ListOptions {
  bool verify = false;  // check every checksum (reads every byte)
};

// Committed checkpoints (those with a MANIFEST), newest step first. A root
// that does not exist holds none.
absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(
    const std::string& root, const ListOptions& options = {});

// Removes what a crash leaves behind: .tmp-ckpt-* directories and ckpt-*
// directories without a MANIFEST. Returns the names removed.
absl::StatusOr<std::vector<std::string>> CleanLeftovers(
    const std::string& root);

// Keeps the newest `keep` (>= 1) checkpoints that pass the cheap check
// (MANIFEST, files, headers) and any newer than those; removes the others,
// so a corrupt newest checkpoint never costs the last good one. Each is
// first renamed out of the ckpt-* namespace, then deleted, so a crash
// mid-delete leaves a leftover, never a half checkpoint. Returns the names
// removed.
absl::StatusOr<std::vector<std::string>> ApplyRetention(
    const std::string& root, int keep);

// After a rewind: once training goes on from the checkpoint of step `step`,
// the checkpoints of `spec` newer than it belong to the timeline that was
// rewound away from. Each is renamed out of the ckpt-* namespace to
// rewound-<unix seconds>-ckpt-<step>, so neither a restart (--restore
// newest) nor a save of the same step on the new timeline finds it; its
// files stay for the operator to inspect or delete. Other models'
// checkpoints and unreadable ones stay where they are. Returns the new
// names.
absl::StatusOr<std::vector<std::string>> SetAsideNewerThan(const std::string& root,
                                                            int64_t step,
                                                            const ModelSpec& spec);
inline constexpr char kRewoundPrefix[] = "rewound-";

struct FindOptions {
  // Check every checksum before choosing (one full read). Without it only
  // the cheap check runs, and the loading ranks' own chunk checks are the
  // last line of defence.
  bool verify_data = true;
};

struct LoadableCheckpoint {
  CheckpointReader reader;
  std::vector<absl::Status> skipped;  // newer checkpoints passed over, why
};

// The newest checkpoint of `spec` under `root` that checks out, skipping
// corrupt ones. Checkpoints of another model are passed over with a
// warning and never make this fail. NOT_FOUND if the root holds none of
// this model; if it holds only unusable ones, the newest one's error
// (DATA_LOSS naming the file).
absl::StatusOr<LoadableCheckpoint> FindNewestLoadable(
    const std::string& root, const ModelSpec& spec,
    const FindOptions& options = {});

}  // namespace sherd
