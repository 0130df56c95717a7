// Writing a checkpoint: each rank writes its own shard into a shared temp
// directory; the coordinator, once every rank reported success, writes the
// MANIFEST and publishes the directory with one rename. A checkpoint
// without its MANIFEST does not exist (ListCheckpoints ignores it,
// CleanLeftovers removes it).
//
//   // coordinator                          // every rank r (in parallel)
//   dir = CreateTempCheckpointDir(root, s)  ->  info_r = WriteShard(dir, r, W,
//                                                   slice_r, s, p, m, v)
//   m = BuildManifest(spec, W, s, counters, {info_0 .. info_W-1})
//   CommitCheckpoint(root, dir, m)          // or AbortCheckpoint(dir)
//   ApplyRetention(root, keep)
//
// SaveCheckpoint() does all of it for a process that holds every slice.
// Ownership: the caller's arrays are read during the call only, and must
// not change meanwhile (checksums are taken from memory as it is written;
// SnapshotSaver writes from a private copy for that reason). Threads:
// different ranks' WriteShard calls may run concurrently; one commit per
// root at a time.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/checkpoint/format.h"
#include "server/checkpoint/manifest.h"

namespace sherd {

struct WriteOptions {
  int64_t chunk_bytes = kDefaultChunkBytes;  // checksum granularity, % 4 == 0
  // If set, advanced by every byte that reaches the file (progress).
  std::atomic<int64_t>* bytes_written = nullptr;
};

// Creates `root` (and parents) if needed and a fresh <root>/.tmp-ckpt-<step>-<nonce>/.
absl::StatusOr<std::string> CreateTempCheckpointDir(const std::string& root,
                                                    int64_t step);

// Writes rank `rank`'s shard (header + the three arrays of slice.size()
// elements) into `dir` and fsyncs it. On failure the partial file is
// removed; a full disk is RESOURCE_EXHAUSTED naming the file.
absl::StatusOr<ShardInfo> WriteShard(const std::string& dir, int rank,
                                     int world_size, Range slice, int64_t step,
                                     const float* param, const float* exp_avg,
                                     const float* exp_avg_sq,
                                     const WriteOptions& options = {});

// Checks every shard file of `manifest` is in `temp_dir` with its size,
// writes and fsyncs MANIFEST, fsyncs the directory, renames it to
// <root>/ckpt-<step> and fsyncs `root`. Returns the committed path. On
// failure before the rename `temp_dir` is removed and nothing changed.
// ALREADY_EXISTS if a checkpoint of that step is already committed.
absl::StatusOr<std::string> CommitCheckpoint(const std::string& root,
                                             const std::string& temp_dir,
                                             const Manifest& manifest);

// Gives up a save: removes `temp_dir`.
absl::Status AbortCheckpoint(const std::string& temp_dir);

// The slices of one process that holds all of them, indexed by rank.
struct SliceSource {
  const float* param = nullptr;
  const float* exp_avg = nullptr;
  const float* exp_avg_sq = nullptr;
};

// Temp dir, every shard in parallel, manifest, commit. Returns the
// committed path; on failure nothing is left behind.
absl::StatusOr<std::string> SaveCheckpoint(
    const std::string& root, const ModelSpec& spec, int world_size,
    int64_t step, std::map<std::string, int64_t> counters,
    const std::vector<SliceSource>& slices, const WriteOptions& options = {});

}  // namespace sherd
