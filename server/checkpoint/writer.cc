#include "server/checkpoint/writer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "server/checkpoint/fault_injection.h"
#include "server/checkpoint/io.h"

namespace sherd {

namespace {

using internal::CheckpointStage;
using internal::ReachCheckpointStage;

// Writes the header and the three arrays, checksumming each chunk from the
// caller's memory as it goes, so the data is read once.
absl::Status WriteShardBody(int fd, const std::string& path,
                            const ShardHeader& header,
                            const float* const arrays[kNumStateArrays],
                            const WriteOptions& options, ShardInfo* info) {
  const std::string head = EncodeShardHeader(header);
  info->header_checksum = Checksum(head.data(), head.size());
  RETURN_IF_ERROR(internal::WriteAll(fd, head.data(), head.size(), path));
  if (options.bytes_written) *options.bytes_written += head.size();
  const int64_t count = header.slice.size();
  for (int a = 0; a < kNumStateArrays; ++a) {
    for (int64_t b = 0; b < count; b += header.chunk_elems) {
      const int64_t n = std::min(header.chunk_elems, count - b);
      const size_t bytes = static_cast<size_t>(n) * sizeof(float);
      info->chunks[a].push_back(Checksum(arrays[a] + b, bytes));
      RETURN_IF_ERROR(internal::WriteAll(fd, arrays[a] + b, bytes, path));
      if (options.bytes_written) *options.bytes_written += bytes;
      RETURN_IF_ERROR(ReachCheckpointStage(CheckpointStage::kShardChunkWritten));
    }
  }
  return internal::FsyncFd(fd, path);
}

}  // namespace

absl::StatusOr<std::string> CreateTempCheckpointDir(const std::string& root,
                                                    int64_t step) {
  RETURN_IF_ERROR(internal::MakeDirs(root));
  std::random_device rd;
  const uint64_t nonce = (uint64_t{rd()} << 32) ^ rd() ^
                         static_cast<uint64_t>(::getpid());
  std::string dir = internal::JoinPath(
      root, absl::StrFormat("%s%d-%016x", kTempPrefix, step, nonce));
  if (::mkdir(dir.c_str(), 0755) != 0) {
    return internal::ErrnoStatus(errno, "mkdir", dir);
  }
  return dir;
}

absl::StatusOr<ShardInfo> WriteShard(const std::string& dir, int rank,
                                     int world_size, Range slice, int64_t step,
                                     const float* param, const float* exp_avg,
                                     const float* exp_avg_sq,
                                     const WriteOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size || slice.begin < 0 ||
      slice.end < slice.begin || step < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WriteShard: bad rank ", rank, " of ", world_size, ", slice [",
        slice.begin, ", ", slice.end, ") or step ", step));
  }
  if (options.chunk_bytes < 4 || options.chunk_bytes % 4 != 0) {
    return absl::InvalidArgumentError("chunk_bytes must be a multiple of 4");
  }
  if (!slice.empty() && (!param || !exp_avg || !exp_avg_sq)) {
    return absl::InvalidArgumentError("WriteShard: null state array");
  }
  RETURN_IF_ERROR(ReachCheckpointStage(CheckpointStage::kBeforeShard));
  ShardInfo info;
  info.rank = rank;
  info.file = ShardFileName(rank, world_size);
  info.slice = slice;
  info.step = step;
  info.bytes = ShardFileBytes(slice.size());
  info.chunk_elems = options.chunk_bytes / 4;
  const std::string path = internal::JoinPath(dir, info.file);
  ShardHeader header{rank, world_size, slice, info.chunk_elems, step};
  const float* const arrays[kNumStateArrays] = {param, exp_avg, exp_avg_sq};
  absl::Status s;
  {
    auto fd = internal::OpenForWrite(path);
    if (!fd.ok()) return fd.status();
    s = WriteShardBody(fd->get(), path, header, arrays, options, &info);
  }
  if (!s.ok()) {
    ::unlink(path.c_str());  // a half-written shard is worth nothing
    return s;
  }
  RETURN_IF_ERROR(ReachCheckpointStage(CheckpointStage::kShardWritten));
  return info;
}

absl::Status AbortCheckpoint(const std::string& temp_dir) {
  return internal::RemoveTree(temp_dir);
}

namespace {

absl::StatusOr<std::string> CommitSteps(const std::string& root,
                                        const std::string& temp_dir,
                                        const Manifest& m) {
  RETURN_IF_ERROR(ReachCheckpointStage(CheckpointStage::kCommitBegin));
  for (const ShardInfo& s : m.shards) {
    const std::string path = internal::JoinPath(temp_dir, s.file);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      return absl::DataLossError(
          absl::StrCat(path, ": shard of rank ", s.rank, " is missing"));
    }
    if (st.st_size != s.bytes) {
      return absl::DataLossError(absl::StrCat(path, ": ", st.st_size,
                                              " bytes, expected ", s.bytes));
    }
  }
  const std::string final_dir =
      internal::JoinPath(root, CheckpointDirName(m.step));
  if (internal::PathExists(final_dir)) {
    return absl::AlreadyExistsError(
        absl::StrCat(final_dir, ": a checkpoint of step ", m.step,
                     " already exists"));
  }
  RETURN_IF_ERROR(internal::WriteFileSynced(
      internal::JoinPath(temp_dir, kManifestName), EncodeManifest(m)));
  // The shard and MANIFEST names must be durable before the directory
  // becomes visible under its final name.
  RETURN_IF_ERROR(internal::FsyncDir(temp_dir));
  RETURN_IF_ERROR(ReachCheckpointStage(CheckpointStage::kManifestWritten));
  RETURN_IF_ERROR(internal::Rename(temp_dir, final_dir));
  return final_dir;
}

}  // namespace

absl::StatusOr<std::string> CommitCheckpoint(const std::string& root,
                                             const std::string& temp_dir,
                                             const Manifest& manifest) {
  auto committed = CommitSteps(root, temp_dir, manifest);
  if (!committed.ok()) {
    AbortCheckpoint(temp_dir).IgnoreError();
    return committed.status();
  }
  // Past the rename the checkpoint is visible; a failure to make the rename
  // durable is reported, but the directory stays (it is complete).
  RETURN_IF_ERROR(ReachCheckpointStage(CheckpointStage::kRenamed));
  RETURN_IF_ERROR(internal::FsyncDir(root));
  return committed;
}

absl::StatusOr<std::string> SaveCheckpoint(
    const std::string& root, const ModelSpec& spec, int world_size,
    int64_t step, std::map<std::string, int64_t> counters,
    const std::vector<SliceSource>& slices, const WriteOptions& options) {
  ASSIGN_OR_RETURN(Layout layout, Layout::Build(spec.tensors, world_size));
  if (static_cast<int>(slices.size()) != world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SaveCheckpoint: ", slices.size(), " slices for world size ",
        world_size));
  }
  ASSIGN_OR_RETURN(std::string temp_dir, CreateTempCheckpointDir(root, step));
  std::vector<absl::StatusOr<ShardInfo>> results(
      world_size, absl::UnknownError("not written"));
  const int threads = std::min(world_size, 8);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int r = t; r < world_size; r += threads) {
        results[r] = WriteShard(temp_dir, r, world_size, layout.Slice(r), step,
                                slices[r].param, slices[r].exp_avg,
                                slices[r].exp_avg_sq, options);
      }
    });
  }
  for (std::thread& th : pool) th.join();
  std::vector<ShardInfo> shards;
  for (auto& r : results) {
    if (!r.ok()) {
      AbortCheckpoint(temp_dir).IgnoreError();
      return r.status();
    }
    shards.push_back(*std::move(r));
  }
  auto manifest = BuildManifest(spec, world_size, step, std::move(counters),
                                std::move(shards));
  if (!manifest.ok()) {
    AbortCheckpoint(temp_dir).IgnoreError();
    return manifest.status();
  }
  return CommitCheckpoint(root, temp_dir, *manifest);
}

}  // namespace sherd
