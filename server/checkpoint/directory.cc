#include "server/checkpoint/directory.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/checkpoint/io.h"

namespace sherd {
namespace {

// Committed-looking directory names (ckpt-<step>) with their steps.
absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> CheckpointDirs(
    const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> dirs;
  if (!internal::PathExists(root)) return dirs;
  ASSIGN_OR_RETURN(std::vector<std::string> names, internal::ListDir(root));
  for (std::string& name : names) {
    auto step = ParseCheckpointDirName(name);
    if (step && internal::IsDirectory(internal::JoinPath(root, name))) {
      dirs.emplace_back(*step, std::move(name));
    }
  }
  std::sort(dirs.begin(), dirs.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return dirs;
}

bool HasManifest(const std::string& dir) {
  return internal::PathExists(internal::JoinPath(dir, kManifestName));
}

CheckpointInfo Describe(const std::string& root, int64_t step,
                        const std::string& name, bool verify) {
  CheckpointInfo info;
  info.name = name;
  info.path = internal::JoinPath(root, name);
  info.step = step;
  auto reader = CheckpointReader::Open(info.path);
  if (!reader.ok()) {
    info.status = reader.status();
    return info;
  }
  const Manifest& m = reader->manifest();
  info.time = m.time;
  info.world_size = m.world_size;
  for (const ShardInfo& s : m.shards) info.bytes += s.bytes;
  auto manifest_text = internal::ReadSmallFile(reader->manifest_path(),
                                               int64_t{256} << 20);
  if (manifest_text.ok()) info.bytes += manifest_text->size();
  info.status = verify ? reader->Verify() : reader->CheckFiles();
  info.verified = verify && info.status.ok();
  return info;
}

}  // namespace

absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(
    const std::string& root, const ListOptions& options) {
  ASSIGN_OR_RETURN(auto dirs, CheckpointDirs(root));
  std::vector<CheckpointInfo> out;
  for (const auto& [step, name] : dirs) {
    if (!HasManifest(internal::JoinPath(root, name))) continue;
    out.push_back(Describe(root, step, name, options.verify));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> CleanLeftovers(
    const std::string& root) {
  std::vector<std::string> removed;
  if (!internal::PathExists(root)) return removed;
  ASSIGN_OR_RETURN(std::vector<std::string> names, internal::ListDir(root));
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string path = internal::JoinPath(root, name);
    const bool leftover =
        IsTempDirName(name) ||
        (ParseCheckpointDirName(name).has_value() &&
         internal::IsDirectory(path) && !HasManifest(path));
    if (!leftover) continue;
    RETURN_IF_ERROR(internal::RemoveTree(path));
    SHERD_LOG(Info, "checkpoint: removed leftover %s", path);
    removed.push_back(name);
  }
  if (!removed.empty()) RETURN_IF_ERROR(internal::FsyncDir(root));
  return removed;
}

absl::StatusOr<std::vector<std::string>> ApplyRetention(const std::string& root,
                                                        int keep) {
  if (keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("retention must keep at least 1 checkpoint, got ", keep));
  }
  ASSIGN_OR_RETURN(std::vector<CheckpointInfo> all, ListCheckpoints(root));
  std::vector<std::string> removed;
  int good = 0;
  for (const CheckpointInfo& c : all) {
    if (good < keep) {
      if (c.status.ok()) ++good;
      continue;
    }
    // Out of the ckpt-* namespace first: from here on a crash leaves a
    // leftover for CleanLeftovers, not a checkpoint with missing files.
    const std::string doomed =
        internal::JoinPath(root, absl::StrCat(kTempPrefix, "delete-", c.name));
    RETURN_IF_ERROR(internal::Rename(c.path, doomed));
    RETURN_IF_ERROR(internal::FsyncDir(root));
    RETURN_IF_ERROR(internal::RemoveTree(doomed));
    removed.push_back(c.name);
  }
  return removed;
}

absl::StatusOr<std::vector<std::string>> SetAsideNewerThan(const std::string& root,
                                                            int64_t step,
                                                            const ModelSpec& spec) {
  ASSIGN_OR_RETURN(auto dirs, CheckpointDirs(root));
  std::vector<std::string> moved;
  const std::string tag = absl::StrCat(kRewoundPrefix, absl::ToUnixSeconds(absl::Now()), "-");
  for (const auto& [s, name] : dirs) {
    if (s <= step) break;  // newest first
    const std::string path = internal::JoinPath(root, name);
    if (!HasManifest(path)) continue;
    auto reader = CheckpointReader::Open(path);
    if (!reader.ok() || !reader->CheckModel(spec).ok()) continue;
    const std::string to = tag + name;
    RETURN_IF_ERROR(internal::Rename(path, internal::JoinPath(root, to)));
    moved.push_back(to);
  }
  if (!moved.empty()) RETURN_IF_ERROR(internal::FsyncDir(root));
  return moved;
}

absl::StatusOr<LoadableCheckpoint> FindNewestLoadable(
    const std::string& root, const ModelSpec& spec,
    const FindOptions& options) {
  ASSIGN_OR_RETURN(auto dirs, CheckpointDirs(root));
  std::vector<absl::Status> skipped;
  for (const auto& [step, name] : dirs) {
    const std::string path = internal::JoinPath(root, name);
    if (!HasManifest(path)) continue;
    auto reader = CheckpointReader::Open(path);
    absl::Status s = reader.status();
    if (s.ok()) {
      // Another model's checkpoint (a directory shared by two jobs, or a
      // model whose shapes changed) is not this model's to restore: passed
      // over with a warning. It never makes this model's start fail.
      if (absl::Status other = reader->CheckModel(spec); !other.ok()) {
        SHERD_LOG(Warning, "checkpoint: passing over %s: %s", path, other.message());
        continue;
      }
    }
    if (s.ok()) s = options.verify_data ? reader->Verify() : reader->CheckFiles();
    if (s.ok()) return LoadableCheckpoint{*std::move(reader), std::move(skipped)};
    SHERD_LOG(Warning, "checkpoint: skipping %s: %s", path, s.ToString());
    skipped.push_back(std::move(s));
  }
  if (skipped.empty()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint in ", root));
  }
  absl::Status newest = skipped.front();
  if (skipped.size() == 1) return newest;
  return absl::Status(newest.code(),
                      absl::StrCat(newest.message(), " (and ",
                                   skipped.size() - 1,
                                   " older checkpoints are unusable too)"));
}

}  // namespace sherd
