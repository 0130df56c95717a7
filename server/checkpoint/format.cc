#include "server/checkpoint/format.h"

#include <bit>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "xxhash.h"

namespace sherd {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the shard format stores raw little-endian values");

constexpr char kShardMagic[8] = {'S', 'H', 'R', 'D', 'S', 'H', 'R', 'D'};
constexpr int64_t kMaxWorld = int64_t{1} << 20;

// Field offsets inside the 128-byte header.
constexpr size_t kOffVersion = 8, kOffHeaderBytes = 12, kOffRank = 16,
                 kOffWorld = 20, kOffBegin = 24, kOffEnd = 32,
                 kOffCount = 40, kOffChunk = 48, kOffStep = 56,
                 kOffArrays = 64, kOffChecksum = kShardHeaderBytes - 8;

template <typename T>
void Put(std::string& buf, size_t off, T v) {
  std::memcpy(buf.data() + off, &v, sizeof(T));
}
template <typename T>
T Get(absl::string_view buf, size_t off) {
  T v;
  std::memcpy(&v, buf.data() + off, sizeof(T));
  return v;
}

}  // namespace

absl::string_view StateArrayName(StateArray a) {
  switch (a) {
    case StateArray::kParam: return "param";
    case StateArray::kExpAvg: return "exp_avg";
    case StateArray::kExpAvgSq: return "exp_avg_sq";
  }
  return "?";
}

absl::StatusOr<StateArray> ParseStateArray(absl::string_view name) {
  for (int i = 0; i < kNumStateArrays; ++i) {
    if (name == StateArrayName(static_cast<StateArray>(i))) {
      return static_cast<StateArray>(i);
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown state '", name, "' (param, exp_avg or exp_avg_sq)"));
}

std::string CheckpointDirName(int64_t step) {
  return absl::StrFormat("%s%012d", kCheckpointPrefix, step);
}

std::optional<int64_t> ParseCheckpointDirName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, kCheckpointPrefix)) return std::nullopt;
  if (name.size() < 12) return std::nullopt;
  for (char c : name) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return std::nullopt;
    }
  }
  int64_t step;
  if (!absl::SimpleAtoi(name, &step)) return std::nullopt;
  return step;
}

std::string ShardFileName(int rank, int world_size) {
  return absl::StrFormat("rank-%05d-of-%05d.shard", rank, world_size);
}

bool IsTempDirName(absl::string_view name) {
  return absl::StartsWith(name, kTempPrefix);
}

int64_t ShardFileBytes(int64_t count) {
  return kShardHeaderBytes + kNumStateArrays * count * int64_t{4};
}

int64_t NumChunks(int64_t count, int64_t chunk_elems) {
  return chunk_elems <= 0 ? 0 : (count + chunk_elems - 1) / chunk_elems;
}

int64_t ArrayOffset(int64_t count, StateArray array, int64_t index) {
  return kShardHeaderBytes +
         (static_cast<int64_t>(array) * count + index) * int64_t{4};
}

uint64_t Checksum(const void* data, size_t n) { return XXH3_64bits(data, n); }

std::string Hex64(uint64_t v) { return absl::StrFormat("%016x", v); }

std::string EncodeShardHeader(const ShardHeader& h) {
  std::string buf(kShardHeaderBytes, '\0');
  std::memcpy(buf.data(), kShardMagic, sizeof(kShardMagic));
  Put<uint32_t>(buf, kOffVersion, kCheckpointFormatVersion);
  Put<uint32_t>(buf, kOffHeaderBytes, kShardHeaderBytes);
  Put<uint32_t>(buf, kOffRank, static_cast<uint32_t>(h.rank));
  Put<uint32_t>(buf, kOffWorld, static_cast<uint32_t>(h.world_size));
  Put<int64_t>(buf, kOffBegin, h.slice.begin);
  Put<int64_t>(buf, kOffEnd, h.slice.end);
  Put<int64_t>(buf, kOffCount, h.slice.size());
  Put<int64_t>(buf, kOffChunk, h.chunk_elems);
  Put<int64_t>(buf, kOffStep, h.step);
  Put<uint32_t>(buf, kOffArrays, kNumStateArrays);
  Put<uint64_t>(buf, kOffChecksum, Checksum(buf.data(), kOffChecksum));
  return buf;
}

absl::StatusOr<ShardHeader> DecodeShardHeader(absl::string_view bytes,
                                              const std::string& path) {
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat(path, ": corrupt shard header (", what, ")"));
  };
  if (bytes.size() != static_cast<size_t>(kShardHeaderBytes)) {
    return bad("short");
  }
  if (std::memcmp(bytes.data(), kShardMagic, sizeof(kShardMagic)) != 0) {
    return bad("bad magic");
  }
  if (Get<uint64_t>(bytes, kOffChecksum) !=
      Checksum(bytes.data(), kOffChecksum)) {
    return bad("checksum mismatch");
  }
  if (Get<uint32_t>(bytes, kOffVersion) != kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": shard format version ", Get<uint32_t>(bytes, kOffVersion),
        ", this build reads version ", kCheckpointFormatVersion));
  }
  ShardHeader h;
  h.rank = static_cast<int>(Get<uint32_t>(bytes, kOffRank));
  h.world_size = static_cast<int>(Get<uint32_t>(bytes, kOffWorld));
  h.slice = {Get<int64_t>(bytes, kOffBegin), Get<int64_t>(bytes, kOffEnd)};
  h.chunk_elems = Get<int64_t>(bytes, kOffChunk);
  h.step = Get<int64_t>(bytes, kOffStep);
  if (Get<uint32_t>(bytes, kOffHeaderBytes) != kShardHeaderBytes ||
      Get<uint32_t>(bytes, kOffArrays) != kNumStateArrays ||
      h.world_size < 1 || h.world_size > kMaxWorld || h.rank < 0 ||
      h.rank >= h.world_size || h.slice.begin < 0 ||
      h.slice.end < h.slice.begin ||
      Get<int64_t>(bytes, kOffCount) != h.slice.size() || h.chunk_elems < 1) {
    return bad("inconsistent fields");
  }
  return h;
}

}  // namespace sherd
