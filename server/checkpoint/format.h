// The on-disk checkpoint format (docs/checkpoint_format.md is the full
// description): names, the shard file header, chunk geometry, and the
// structs the writer produces and the reader validates.
//
//   <root>/ckpt-000000000100/MANIFEST                 the commit record
//   <root>/ckpt-000000000100/rank-00000-of-00004.shard
//   <root>/.tmp-ckpt-100-<nonce>/                      a save in progress
//
// A shard file is a 128-byte header (self-checksummed) followed by three
// fp32 arrays of the rank's slice: master params, exp_avg, exp_avg_sq. Each
// array is checksummed per chunk (XXH3-64, 4 MiB by default); the chunk
// checksums live in the MANIFEST, which checksums itself. So every byte of
// every file is covered by a checksum the reader checks.
//
// Pure data and encoding; no I/O. Thread-safe (no state).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "server/state/model_state.h"

namespace sherd {

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 128;
inline constexpr int64_t kDefaultChunkBytes = int64_t{4} << 20;
inline constexpr int kNumStateArrays = 3;  // param, exp_avg, exp_avg_sq
inline constexpr char kManifestName[] = "MANIFEST";
inline constexpr char kCheckpointPrefix[] = "ckpt-";
inline constexpr char kTempPrefix[] = ".tmp-ckpt-";

// Which of the three saved arrays.
enum class StateArray { kParam = 0, kExpAvg = 1, kExpAvgSq = 2 };
absl::string_view StateArrayName(StateArray a);  // "param", "exp_avg", ...
absl::StatusOr<StateArray> ParseStateArray(absl::string_view name);

// One rank's file: what WriteShard reports to the coordinator and what the
// manifest records for each rank.
struct ShardInfo {
  int rank = 0;
  std::string file;       // name inside the checkpoint directory
  Range slice;            // flat element range of the saved layout
  int64_t step = 0;
  int64_t bytes = 0;      // file size
  int64_t chunk_elems = 0;
  uint64_t header_checksum = 0;
  // Per array, per chunk XXH3-64; chunk k of an array covers slice-relative
  // elements [k * chunk_elems, min((k + 1) * chunk_elems, slice.size())).
  std::array<std::vector<uint64_t>, kNumStateArrays> chunks;
};

// The commit record of one checkpoint.
struct Manifest {
  int version = kCheckpointFormatVersion;
  ModelSpec model;
  int world_size = 1;
  int64_t alignment = kDefaultAlignment;
  int64_t step = 0;
  absl::Time time;
  // Trainer/optimizer counters beside the step id (e.g. "adam_step",
  // "steps_applied", "steps_skipped"); names are [a-z0-9_]+.
  std::map<std::string, int64_t> counters;
  std::vector<ShardInfo> shards;  // indexed by rank
  Layout layout;                  // derived from model + world + alignment
};

// The fixed header at the start of every shard file.
struct ShardHeader {
  int rank = 0;
  int world_size = 1;
  Range slice;
  int64_t chunk_elems = 0;
  int64_t step = 0;
};

std::string CheckpointDirName(int64_t step);  // "ckpt-000000000100"
// The step of a committed directory name, or nullopt for any other name.
std::optional<int64_t> ParseCheckpointDirName(absl::string_view name);
std::string ShardFileName(int rank, int world_size);
bool IsTempDirName(absl::string_view name);

int64_t ShardFileBytes(int64_t count);  // header + 3 arrays
int64_t NumChunks(int64_t count, int64_t chunk_elems);
// Byte offset of element `index` (slice-relative) of `array` in a shard file.
int64_t ArrayOffset(int64_t count, StateArray array, int64_t index);

uint64_t Checksum(const void* data, size_t n);
std::string Hex64(uint64_t v);  // 16 lowercase hex digits

// Fixed-size little-endian encoding; the last 8 bytes checksum the rest.
std::string EncodeShardHeader(const ShardHeader& h);
// DATA_LOSS naming `path` on a bad magic, checksum or field.
absl::StatusOr<ShardHeader> DecodeShardHeader(absl::string_view bytes,
                                              const std::string& path);

}  // namespace sherd
