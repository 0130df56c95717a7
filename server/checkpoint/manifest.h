// The MANIFEST: a checkpoint's commit record, as a line-oriented text file
// that ends with an XXH3 checksum of everything before it. Text so that an
// operator can read it with `cat`; checksummed so that a flipped byte is
// DATA_LOSS rather than a silently different layout.
//
//   ASSIGN_OR_RETURN(Manifest m, BuildManifest(spec, world, step, counters,
//                                              shards_reported_by_ranks));
//   std::string text = EncodeManifest(m);
//   ASSIGN_OR_RETURN(Manifest back, ParseManifest(text, path));
//
// Pure functions, thread-safe.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/checkpoint/format.h"

namespace sherd {

// Assembles the manifest once every rank reported its shard: checks that
// the shards are exactly ranks 0..W-1 of the layout of `spec` over
// `world_size`, each with the slice, size, step and chunk count it must
// have. INVALID_ARGUMENT otherwise (a rank reported something wrong).
absl::StatusOr<Manifest> BuildManifest(
    const ModelSpec& spec, int world_size, int64_t step,
    std::map<std::string, int64_t> counters, std::vector<ShardInfo> shards,
    absl::Time time = absl::Now(), int64_t alignment = kDefaultAlignment);

std::string EncodeManifest(const Manifest& m);

// Verifies the checksum, parses, and validates every field against the
// layout it implies. DATA_LOSS naming `path` for anything malformed;
// FAILED_PRECONDITION for a format version this build does not read.
absl::StatusOr<Manifest> ParseManifest(absl::string_view text,
                                       const std::string& path);

// The checkpoint holds state for `spec`: same model name, same tensors
// (names, shapes, dtypes, groups, order) and the same param group names.
// Hyperparameter values may differ (a resumed run may change weight decay);
// the manifest's are in manifest.model.groups. FAILED_PRECONDITION naming
// `manifest_path` otherwise.
absl::Status CheckModel(const Manifest& m, const ModelSpec& spec,
                        const std::string& manifest_path);

// A rank's ShardInfo as text, so it can travel in an RPC to the coordinator.
std::string EncodeShardInfo(const ShardInfo& info);
absl::StatusOr<ShardInfo> DecodeShardInfo(absl::string_view text);

}  // namespace sherd
