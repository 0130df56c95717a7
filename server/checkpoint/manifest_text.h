// Line-level pieces of the MANIFEST text format, shared by the manifest
// parser and the ShardInfo codec. Every value from disk is range-checked
// here before it reaches a struct; problems come back as short strings that
// the caller wraps into a Status naming the file.
//
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/checkpoint/format.h"

namespace sherd::internal {

// Names (model, tensors, groups, files) are written as '=' followed by the
// name with every byte outside [A-Za-z0-9._/:+-] as %XX, so a name is one
// space-free token and the empty name is "=".
std::string Name(absl::string_view raw);
bool ParseName(absl::string_view token, std::string* out);
bool ParseHex64(absl::string_view token, uint64_t* out);
bool IsCounterName(absl::string_view name);

// The space-separated tokens of one line.
class Tokens {
 public:
  explicit Tokens(absl::string_view line);
  size_t size() const { return tokens_.size(); }
  absl::string_view operator[](size_t i) const { return tokens_[i]; }
  bool Int(size_t i, int64_t* out) const;
  bool Float(size_t i, float* out) const;

 private:
  std::vector<absl::string_view> tokens_;
};

// What ParseManifestLine has seen so far, for the checks that span lines.
struct ManifestFields {
  bool model = false, step = false, time = false, world_size = false,
       alignment = false, total_seen = false;
  int64_t total = 0;
  std::vector<std::pair<int64_t, int64_t>> placements;  // offset, numel
  int chunk_lines = kNumStateArrays;  // of the latest shard
  std::string Missing() const;        // "" when the manifest is complete
};

// Parses one body line into `m`; returns "" or what is wrong with it.
std::string ParseManifestLine(absl::string_view line, Manifest* m,
                              ManifestFields* f);

}  // namespace sherd::internal
