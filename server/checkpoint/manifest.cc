#include "server/checkpoint/manifest.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "server/checkpoint/manifest_text.h"

namespace sherd {
namespace {

using internal::Tokens;

constexpr char kMagicLine[] = "sherd-checkpoint-manifest";

// Checks the geometry of one shard against itself (and, when `layout` is
// given, against the layout). Returns an empty string when it is sound.
std::string ShardProblem(const ShardInfo& s, const Layout* layout,
                         int world_size, int64_t step) {
  const std::string who = absl::StrCat("rank ", s.rank, ": ");
  if (s.rank < 0 || s.rank >= world_size) return who + "rank out of range";
  if (s.file != ShardFileName(s.rank, world_size)) {
    return absl::StrCat(who, "file '", s.file, "' should be '",
                        ShardFileName(s.rank, world_size), "'");
  }
  // Bounded so that the size arithmetic below cannot overflow.
  if (s.slice.begin < 0 || s.slice.end < s.slice.begin ||
      s.slice.end > (int64_t{1} << 52)) {
    return who + "bad slice";
  }
  if (layout != nullptr && (s.slice.begin != layout->Slice(s.rank).begin ||
                            s.slice.end != layout->Slice(s.rank).end)) {
    return absl::StrCat(who, "slice [", s.slice.begin, ", ", s.slice.end,
                        ") is not the layout's [", layout->Slice(s.rank).begin,
                        ", ", layout->Slice(s.rank).end, ")");
  }
  if (s.step != step) {
    return absl::StrCat(who, "saved step ", s.step, ", not ", step);
  }
  if (s.bytes != ShardFileBytes(s.slice.size())) return who + "wrong size";
  if (s.chunk_elems < 1 || s.chunk_elems > (int64_t{1} << 40)) {
    return who + "bad chunk size";
  }
  for (const auto& c : s.chunks) {
    if (static_cast<int64_t>(c.size()) !=
        NumChunks(s.slice.size(), s.chunk_elems)) {
      return who + "wrong number of chunk checksums";
    }
  }
  return "";
}

std::string ManifestProblem(const Manifest& m) {
  if (static_cast<int>(m.shards.size()) != m.world_size) {
    return absl::StrCat(m.shards.size(), " shards for world size ",
                        m.world_size);
  }
  if (m.model.groups.empty()) return "no param groups";
  for (const TensorPlacement& t : m.layout.tensors()) {
    if (t.desc.group < 0 ||
        t.desc.group >= static_cast<int>(m.model.groups.size())) {
      return absl::StrCat("tensor '", t.desc.name, "' has no group ",
                          t.desc.group);
    }
  }
  for (const auto& [name, value] : m.counters) {
    if (!internal::IsCounterName(name)) return "bad counter name";
  }
  for (int r = 0; r < m.world_size; ++r) {
    if (m.shards[r].rank != r) return absl::StrCat("no shard for rank ", r);
    std::string p = ShardProblem(m.shards[r], &m.layout, m.world_size, m.step);
    if (!p.empty()) return p;
  }
  return "";
}

}  // namespace

absl::StatusOr<Manifest> BuildManifest(const ModelSpec& spec, int world_size,
                                       int64_t step,
                                       std::map<std::string, int64_t> counters,
                                       std::vector<ShardInfo> shards,
                                       absl::Time time, int64_t alignment) {
  Manifest m;
  m.model = spec;
  m.world_size = world_size;
  m.alignment = alignment;
  m.step = step;
  m.time = time;
  m.counters = std::move(counters);
  ASSIGN_OR_RETURN(m.layout, Layout::Build(spec.tensors, world_size, alignment));
  std::sort(shards.begin(), shards.end(),
            [](const ShardInfo& a, const ShardInfo& b) { return a.rank < b.rank; });
  m.shards = std::move(shards);
  std::string problem = ManifestProblem(m);
  if (!problem.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot commit checkpoint of step ", step, ": ", problem));
  }
  return m;
}

std::string EncodeManifest(const Manifest& m) {
  using internal::Name;
  std::string out = absl::StrCat(kMagicLine, " ", m.version, "\n");
  absl::StrAppend(&out, "model ", Name(m.model.name), "\n");
  absl::StrAppend(&out, "step ", m.step, "\n");
  absl::StrAppend(&out, "time_unix_ms ", absl::ToUnixMillis(m.time), "\n");
  absl::StrAppend(&out, "world_size ", m.world_size, "\n");
  absl::StrAppend(&out, "alignment ", m.alignment, "\n");
  absl::StrAppend(&out, "total ", m.layout.total(), "\n");
  for (const auto& [name, value] : m.counters) {
    absl::StrAppend(&out, "counter ", name, " ", value, "\n");
  }
  for (size_t i = 0; i < m.model.groups.size(); ++i) {
    const ParamGroupConfig& g = m.model.groups[i];
    absl::StrAppend(&out, absl::StrFormat(
        "group %d %s %.9g %.9g %.9g %.9g %.9g\n", i, Name(g.name), g.lr_scale,
        g.beta1, g.beta2, g.eps, g.weight_decay));
  }
  for (size_t i = 0; i < m.layout.tensors().size(); ++i) {
    const TensorPlacement& t = m.layout.tensors()[i];
    absl::StrAppend(&out, "tensor ", i, " ", Name(t.desc.name), " ",
                    DTypeName(t.desc.dtype), " ", t.desc.group, " ", t.offset,
                    " ", t.numel, " ", absl::StrJoin(t.desc.shape, ","), "\n");
  }
  for (const ShardInfo& s : m.shards) absl::StrAppend(&out, EncodeShardInfo(s));
  absl::StrAppend(&out, "checksum ", Hex64(Checksum(out.data(), out.size())),
                  "\n");
  return out;
}

absl::StatusOr<Manifest> ParseManifest(absl::string_view text,
                                       const std::string& path) {
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat(path, ": corrupt manifest (", what, ")"));
  };
  // The trailer is checked before anything in the body is trusted.
  if (text.empty() || text.back() != '\n') return bad("truncated");
  size_t cut = text.rfind('\n', text.size() - 2);
  cut = cut == absl::string_view::npos ? 0 : cut + 1;
  absl::string_view body = text.substr(0, cut);
  Tokens trailer(text.substr(cut, text.size() - cut - 1));
  uint64_t want;
  if (trailer.size() != 2 || trailer[0] != "checksum" ||
      !internal::ParseHex64(trailer[1], &want)) {
    return bad("no checksum trailer; truncated?");
  }
  if (Checksum(body.data(), body.size()) != want) {
    return bad("checksum mismatch");
  }
  std::vector<absl::string_view> lines =
      absl::StrSplit(body, '\n', absl::SkipEmpty());
  if (lines.empty()) return bad("empty");
  Tokens head(lines[0]);
  int64_t version;
  if (head.size() != 2 || head[0] != kMagicLine || !head.Int(1, &version)) {
    return bad("not a sherd manifest");
  }
  if (version != kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": checkpoint format version ", version,
        ", this build reads version ", kCheckpointFormatVersion));
  }
  Manifest m;
  internal::ManifestFields f;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string problem = internal::ParseManifestLine(lines[i], &m, &f);
    if (!problem.empty()) {
      return bad(absl::StrCat("line ", i + 1, ": ", problem));
    }
  }
  std::string missing = f.Missing();
  if (!missing.empty()) return bad(absl::StrCat("missing ", missing));
  auto layout = Layout::Build(m.model.tensors, m.world_size, m.alignment);
  if (!layout.ok()) return bad(layout.status().message());
  m.layout = *std::move(layout);
  if (m.layout.total() != f.total) return bad("total disagrees with layout");
  for (size_t i = 0; i < f.placements.size(); ++i) {
    const TensorPlacement& t = m.layout.tensors()[i];
    if (t.offset != f.placements[i].first ||
        t.numel != f.placements[i].second) {
      return bad(absl::StrCat("tensor '", t.desc.name,
                              "' placement disagrees with layout"));
    }
  }
  std::string problem = ManifestProblem(m);
  if (!problem.empty()) return bad(problem);
  return m;
}

absl::Status CheckModel(const Manifest& m, const ModelSpec& spec,
                        const std::string& manifest_path) {
  auto mismatch = [&](absl::string_view what) {
    return absl::FailedPreconditionError(absl::StrCat(
        manifest_path, ": checkpoint is of a different model (", what, ")"));
  };
  if (m.model.name != spec.name) {
    return mismatch(absl::StrCat("model '", m.model.name, "', expected '",
                                 spec.name, "'"));
  }
  const auto& a = m.model.tensors;
  const auto& b = spec.tensors;
  if (a.size() != b.size()) {
    return mismatch(absl::StrCat(a.size(), " tensors, expected ", b.size()));
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].shape != b[i].shape ||
        a[i].dtype != b[i].dtype || a[i].group != b[i].group) {
      return mismatch(absl::StrCat(
          "tensor #", i, " is '", a[i].name, "' [", absl::StrJoin(a[i].shape, ","),
          "] ", DTypeName(a[i].dtype), " group ", a[i].group, ", expected '",
          b[i].name, "' [", absl::StrJoin(b[i].shape, ","), "] ",
          DTypeName(b[i].dtype), " group ", b[i].group));
    }
  }
  if (m.model.groups.size() != spec.groups.size()) {
    return mismatch(absl::StrCat(m.model.groups.size(),
                                 " param groups, expected ",
                                 spec.groups.size()));
  }
  for (size_t i = 0; i < spec.groups.size(); ++i) {
    if (m.model.groups[i].name != spec.groups[i].name) {
      return mismatch(absl::StrCat("param group #", i, " is '",
                                   m.model.groups[i].name, "', expected '",
                                   spec.groups[i].name, "'"));
    }
  }
  return absl::OkStatus();
}

std::string EncodeShardInfo(const ShardInfo& s) {
  std::string out = absl::StrCat(
      "shard ", s.rank, " ", internal::Name(s.file), " ", s.slice.begin, " ",
      s.slice.end, " ", s.step, " ", s.bytes, " ", s.chunk_elems, " ",
      Hex64(s.header_checksum), "\n");
  for (int a = 0; a < kNumStateArrays; ++a) {
    absl::StrAppend(&out, "chunks ", s.rank, " ",
                    StateArrayName(static_cast<StateArray>(a)), " ",
                    s.chunks[a].size());
    for (uint64_t c : s.chunks[a]) absl::StrAppend(&out, " ", Hex64(c));
    out += '\n';
  }
  return out;
}

absl::StatusOr<ShardInfo> DecodeShardInfo(absl::string_view text) {
  Manifest m;
  internal::ManifestFields f;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::string problem = internal::ParseManifestLine(line, &m, &f);
    if (problem.empty() && !absl::StartsWith(line, "shard ") &&
        !absl::StartsWith(line, "chunks ")) {
      problem = "not a shard line";
    }
    if (!problem.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("bad shard info: ", problem));
    }
  }
  if (m.shards.size() != 1) {
    return absl::InvalidArgumentError("bad shard info: expected one shard");
  }
  const ShardInfo& s = m.shards[0];
  // The world size is not in the text; take it from the file name.
  int world = 0;
  if (std::sscanf(s.file.c_str(), "rank-%*d-of-%d.shard", &world) != 1 ||
      world < 1) {
    return absl::InvalidArgumentError("bad shard info: file name");
  }
  std::string problem = ShardProblem(s, nullptr, world, s.step);
  if (!problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("bad shard info: ", problem));
  }
  return s;
}

}  // namespace sherd
