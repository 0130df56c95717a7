// Test-only fault injection for the checkpoint writer: a hook called at each
// stage of a save, so tests can crash (_exit) or fail a save at an exact
// point instead of racing it with sleeps. Production code never sets it.
//
// Threads: the hook may be called from several writer threads at once; it
// is set and cleared by the test while no save runs.
#pragma once

#include <functional>

#include "absl/status/status.h"

namespace sherd::internal {

enum class CheckpointStage {
  kBeforeShard,        // WriteShard entered, nothing written yet
  kShardChunkWritten,  // after each chunk of a shard reached the file
  kShardWritten,       // a shard is complete and fsynced
  kCommitBegin,        // all shards reported; no MANIFEST yet
  kManifestWritten,    // MANIFEST written and fsynced in the temp dir
  kRenamed,            // temp dir renamed to ckpt-<step>, root not fsynced
};

// A non-OK return fails the save at that stage with that status.
using CheckpointFaultHook = std::function<absl::Status(CheckpointStage)>;

void SetCheckpointFaultHook(CheckpointFaultHook hook);  // empty clears
absl::Status ReachCheckpointStage(CheckpointStage stage);

}  // namespace sherd::internal
