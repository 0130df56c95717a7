#include "server/checkpoint/reader.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/checkpoint/io.h"

namespace sherd {
namespace {

constexpr int64_t kMaxManifestBytes = int64_t{256} << 20;

// Opens one old rank's file and checks what is cheap to check: presence,
// exact size, header bytes against the manifest's checksum, header fields.
absl::StatusOr<internal::ScopedFd> OpenShard(const std::string& path,
                                             const ShardInfo& s,
                                             const Manifest& m) {
  auto fd = internal::OpenForRead(path);
  if (!fd.ok()) {
    if (absl::IsNotFound(fd.status())) {
      return absl::DataLossError(
          absl::StrCat(path, ": shard file of rank ", s.rank, " is missing"));
    }
    return fd.status();
  }
  ASSIGN_OR_RETURN(int64_t size, internal::FileSize(fd->get(), path));
  if (size != s.bytes) {
    return absl::DataLossError(absl::StrCat(
        path, ": ", size, " bytes, the manifest says ", s.bytes,
        size < s.bytes ? " (truncated)" : ""));
  }
  std::string head(kShardHeaderBytes, '\0');
  RETURN_IF_ERROR(internal::PreadAll(fd->get(), head.data(), head.size(), 0,
                                     path));
  if (Checksum(head.data(), head.size()) != s.header_checksum) {
    return absl::DataLossError(
        absl::StrCat(path, ": shard header checksum mismatch"));
  }
  ASSIGN_OR_RETURN(ShardHeader h, DecodeShardHeader(head, path));
  if (h.rank != s.rank || h.world_size != m.world_size ||
      h.slice.begin != s.slice.begin || h.slice.end != s.slice.end ||
      h.chunk_elems != s.chunk_elems || h.step != s.step) {
    return absl::DataLossError(
        absl::StrCat(path, ": shard header disagrees with the manifest"));
  }
  return fd;
}

// Reads chunk `k` of `array` into `dst` and checks it.
absl::Status ReadChunk(int fd, const std::string& path, const ShardInfo& s,
                       int array, int64_t k, float* dst) {
  const int64_t count = s.slice.size();
  const int64_t first = k * s.chunk_elems;
  const int64_t n = std::min(s.chunk_elems, count - first);
  const int64_t offset =
      ArrayOffset(count, static_cast<StateArray>(array), first);
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  RETURN_IF_ERROR(internal::PreadAll(fd, dst, bytes, offset, path));
  if (Checksum(dst, bytes) != s.chunks[array][k]) {
    return absl::DataLossError(absl::StrCat(
        path, ": checksum mismatch in ",
        StateArrayName(static_cast<StateArray>(array)), " chunk ", k,
        " (file bytes [", offset, ", ", offset + bytes, "))"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CheckpointReader> CheckpointReader::Open(
    const std::string& dir) {
  CheckpointReader r;
  r.dir_ = dir;
  ASSIGN_OR_RETURN(r.manifest_, ReadManifest(dir));
  return r;
}

std::string CheckpointReader::manifest_path() const {
  return internal::JoinPath(dir_, kManifestName);
}

std::string CheckpointReader::shard_path(int old_rank) const {
  return internal::JoinPath(dir_, manifest_.shards[old_rank].file);
}

absl::Status CheckpointReader::CheckModel(const ModelSpec& spec) const {
  return sherd::CheckModel(manifest_, spec, manifest_path());
}

absl::Status CheckpointReader::LoadRange(Range range, float* param,
                                         float* exp_avg,
                                         float* exp_avg_sq) const {
  if (range.begin < 0 || range.end < range.begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LoadRange: bad range [", range.begin, ", ", range.end, ")"));
  }
  float* const out[kNumStateArrays] = {param, exp_avg, exp_avg_sq};
  const int64_t saved_total = manifest_.layout.total();
  if (range.end > saved_total) {
    const int64_t from = std::max(range.begin, saved_total);
    for (float* o : out) {
      if (o) std::fill(o + (from - range.begin), o + range.size(), 0.0f);
    }
  }
  std::vector<float> scratch;
  for (const ShardInfo& s : manifest_.shards) {
    const int64_t a = std::max(range.begin, s.slice.begin);
    const int64_t b = std::min(range.end, s.slice.end);
    if (a >= b) continue;
    const std::string path = shard_path(s.rank);
    ASSIGN_OR_RETURN(internal::ScopedFd fd, OpenShard(path, s, manifest_));
    const int64_t rel_a = a - s.slice.begin, rel_b = b - s.slice.begin;
    const int64_t count = s.slice.size();
    for (int array = 0; array < kNumStateArrays; ++array) {
      if (out[array] == nullptr) continue;
      // Element i of this shard (slice-relative) goes to out[at(i)].
      const int64_t shift = s.slice.begin - range.begin;
      for (int64_t k = rel_a / s.chunk_elems; k * s.chunk_elems < rel_b; ++k) {
        const int64_t first = k * s.chunk_elems;
        const int64_t last = std::min(first + s.chunk_elems, count);
        if (first >= rel_a && last <= rel_b) {
          RETURN_IF_ERROR(
              ReadChunk(fd.get(), path, s, array, k, out[array] + shift + first));
          continue;
        }
        scratch.resize(static_cast<size_t>(last - first));
        RETURN_IF_ERROR(ReadChunk(fd.get(), path, s, array, k, scratch.data()));
        const int64_t lo = std::max(first, rel_a), hi = std::min(last, rel_b);
        std::memcpy(out[array] + shift + lo, scratch.data() + (lo - first),
                    static_cast<size_t>(hi - lo) * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::LoadSlice(const Layout& layout, int rank,
                                         float* param, float* exp_avg,
                                         float* exp_avg_sq) const {
  if (!layout.SameModel(manifest_.layout)) {
    return absl::FailedPreconditionError(absl::StrCat(
        manifest_path(), ": checkpoint is of a different model"));
  }
  if (layout.alignment() != manifest_.alignment) {
    return absl::FailedPreconditionError(absl::StrCat(
        manifest_path(), ": saved with alignment ", manifest_.alignment,
        ", the layout has ", layout.alignment()));
  }
  if (rank < 0 || rank >= layout.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("LoadSlice: bad rank ", rank));
  }
  return LoadRange(layout.Slice(rank), param, exp_avg, exp_avg_sq);
}

absl::Status CheckpointReader::CheckFiles() const {
  for (const ShardInfo& s : manifest_.shards) {
    RETURN_IF_ERROR(OpenShard(shard_path(s.rank), s, manifest_).status());
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::Verify(const VerifyProgress& progress) const {
  int64_t total = 0, done = 0;
  for (const ShardInfo& s : manifest_.shards) total += s.bytes;
  std::vector<float> scratch;
  for (const ShardInfo& s : manifest_.shards) {
    const std::string path = shard_path(s.rank);
    ASSIGN_OR_RETURN(internal::ScopedFd fd, OpenShard(path, s, manifest_));
    done += kShardHeaderBytes;
    // Sized after OpenShard checked the file is as large as the manifest
    // says, so a corrupt chunk size cannot make us allocate unboundedly.
    scratch.resize(static_cast<size_t>(
        std::min(s.chunk_elems, std::max<int64_t>(s.slice.size(), 1))));
    for (int array = 0; array < kNumStateArrays; ++array) {
      for (size_t k = 0; k < s.chunks[array].size(); ++k) {
        RETURN_IF_ERROR(ReadChunk(fd.get(), path, s, array,
                                  static_cast<int64_t>(k), scratch.data()));
        done += std::min(s.chunk_elems,
                         s.slice.size() - static_cast<int64_t>(k) *
                                              s.chunk_elems) * 4;
        if (progress) progress(done, total);
      }
    }
  }
  if (progress) progress(total, total);
  return absl::OkStatus();
}

absl::StatusOr<Manifest> ReadManifest(const std::string& dir) {
  const std::string path = internal::JoinPath(dir, kManifestName);
  auto text = internal::ReadSmallFile(path, kMaxManifestBytes);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(
          absl::StrCat(path, ": no MANIFEST, not a committed checkpoint"));
    }
    return text.status();
  }
  ASSIGN_OR_RETURN(Manifest m, ParseManifest(*text, path));
  // Retention and listing go by directory name; it must tell the truth.
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  base = base.substr(base.find_last_of('/') + 1);
  auto named = ParseCheckpointDirName(base);
  if (named.has_value() && *named != m.step) {
    return absl::DataLossError(absl::StrCat(
        path, ": manifest of step ", m.step, " in directory ", base));
  }
  return m;
}

absl::Status VerifyCheckpoint(const std::string& dir,
                              const VerifyProgress& progress) {
  ASSIGN_OR_RETURN(CheckpointReader r, CheckpointReader::Open(dir));
  return r.Verify(progress);
}

}  // namespace sherd
