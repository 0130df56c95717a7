#include "server/checkpoint/manifest_text.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/limits.h"

namespace sherd::internal {
namespace {

constexpr int64_t kMaxWorld = int64_t{1} << 20;
constexpr int64_t kMaxAlignment = int64_t{1} << 20;

bool Plain(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '/' || c == ':' || c == '+' || c == '-';
}

// Lowercase only: the writer emits lowercase, and accepting 'A' for 'a'
// would let a flipped case bit in the checksum trailer go unnoticed.
int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::string ParseGroup(const Tokens& t, Manifest* m) {
  ParamGroupConfig g;
  int64_t index;
  if (t.size() != 8 || !t.Int(1, &index) || !ParseName(t[2], &g.name) ||
      !t.Float(3, &g.lr_scale) || !t.Float(4, &g.beta1) ||
      !t.Float(5, &g.beta2) || !t.Float(6, &g.eps) ||
      !t.Float(7, &g.weight_decay)) {
    return "bad group line";
  }
  if (index != static_cast<int64_t>(m->model.groups.size())) {
    return "groups out of order";
  }
  m->model.groups.push_back(std::move(g));
  return "";
}

std::string ParseTensor(const Tokens& t, Manifest* m, ManifestFields* f) {
  TensorDesc d;
  int64_t index, group, offset, numel;
  if (t.size() != 8 || !t.Int(1, &index) || !ParseName(t[2], &d.name) ||
      !t.Int(4, &group) || !t.Int(5, &offset) || !t.Int(6, &numel)) {
    return "bad tensor line";
  }
  auto dtype = ParseDType(t[3]);
  if (!dtype.ok()) return "bad dtype";
  d.dtype = *dtype;
  if (index != static_cast<int64_t>(m->model.tensors.size())) {
    return "tensors out of order";
  }
  if (group < 0 || group > kMaxWorld) return "bad group index";
  d.group = static_cast<int>(group);
  std::vector<absl::string_view> dims = absl::StrSplit(t[7], ',');
  if (dims.size() > kMaxTensorDims) return "too many dimensions";
  for (absl::string_view dim : dims) {
    int64_t v;
    if (!absl::SimpleAtoi(dim, &v)) return "bad shape";
    d.shape.push_back(v);  // Layout::Build range-checks the values
  }
  m->model.tensors.push_back(std::move(d));
  f->placements.emplace_back(offset, numel);
  return "";
}

std::string ParseShard(const Tokens& t, Manifest* m, ManifestFields* f) {
  if (f->chunk_lines != kNumStateArrays) return "shard without chunk lines";
  ShardInfo s;
  int64_t rank;
  if (t.size() != 9 || !t.Int(1, &rank) || !ParseName(t[2], &s.file) ||
      !t.Int(3, &s.slice.begin) || !t.Int(4, &s.slice.end) ||
      !t.Int(5, &s.step) || !t.Int(6, &s.bytes) || !t.Int(7, &s.chunk_elems) ||
      !ParseHex64(t[8], &s.header_checksum)) {
    return "bad shard line";
  }
  if (rank < 0 || rank >= kMaxWorld) return "bad rank";
  s.rank = static_cast<int>(rank);
  m->shards.push_back(std::move(s));
  f->chunk_lines = 0;
  return "";
}

std::string ParseChunks(const Tokens& t, Manifest* m, ManifestFields* f) {
  int64_t rank, n;
  if (t.size() < 4 || !t.Int(1, &rank) || !t.Int(3, &n)) {
    return "bad chunks line";
  }
  if (m->shards.empty() || m->shards.back().rank != rank ||
      f->chunk_lines >= kNumStateArrays ||
      t[2] != StateArrayName(static_cast<StateArray>(f->chunk_lines))) {
    return "chunks line out of place";
  }
  if (n != static_cast<int64_t>(t.size()) - 4) return "wrong chunk count";
  std::vector<uint64_t>& out = m->shards.back().chunks[f->chunk_lines];
  out.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (!ParseHex64(t[4 + i], &out[i])) return "bad chunk checksum";
  }
  ++f->chunk_lines;
  return "";
}

// A singleton integer field ("step 100"), which must appear once.
std::string ParseSingle(const Tokens& t, bool* seen, int64_t* out,
                        int64_t lo, int64_t hi) {
  if (*seen) return absl::StrCat("duplicate ", t[0]);
  if (t.size() != 2 || !t.Int(1, out) || *out < lo || *out > hi) {
    return absl::StrCat("bad ", t[0]);
  }
  *seen = true;
  return "";
}

}  // namespace

std::string Name(absl::string_view raw) {
  std::string out = "=";
  for (char c : raw) {
    if (Plain(c)) {
      out += c;
    } else {
      absl::StrAppend(&out, "%", absl::Hex(static_cast<unsigned char>(c),
                                           absl::kZeroPad2));
    }
  }
  return out;
}

bool ParseName(absl::string_view token, std::string* out) {
  if (token.empty() || token[0] != '=') return false;
  out->clear();
  for (size_t i = 1; i < token.size(); ++i) {
    if (token[i] != '%') {
      if (!Plain(token[i])) return false;
      *out += token[i];
      continue;
    }
    if (i + 2 >= token.size()) return false;
    int hi = HexDigit(token[i + 1]), lo = HexDigit(token[i + 2]);
    if (hi < 0 || lo < 0) return false;
    *out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

bool ParseHex64(absl::string_view token, uint64_t* out) {
  if (token.size() != 16) return false;
  uint64_t v = 0;
  for (char c : token) {
    int d = HexDigit(c);
    if (d < 0) return false;
    v = v << 4 | static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

bool IsCounterName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(absl::ascii_islower(static_cast<unsigned char>(c)) ||
          absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '_')) {
      return false;
    }
  }
  return true;
}

Tokens::Tokens(absl::string_view line)
    : tokens_(absl::StrSplit(line, ' ', absl::SkipEmpty())) {}

bool Tokens::Int(size_t i, int64_t* out) const {
  return i < tokens_.size() && absl::SimpleAtoi(tokens_[i], out);
}

bool Tokens::Float(size_t i, float* out) const {
  return i < tokens_.size() && absl::SimpleAtof(tokens_[i], out);
}

std::string ManifestFields::Missing() const {
  if (!model) return "model";
  if (!step) return "step";
  if (!time) return "time_unix_ms";
  if (!world_size) return "world_size";
  if (!alignment) return "alignment";
  if (!total_seen) return "total";
  if (chunk_lines != kNumStateArrays) return "chunk lines";
  return "";
}

std::string ParseManifestLine(absl::string_view line, Manifest* m,
                              ManifestFields* f) {
  Tokens t(line);
  if (t.size() == 0) return "empty line";
  const absl::string_view key = t[0];
  int64_t v;
  if (key == "model") {
    if (f->model) return "duplicate model";
    if (t.size() != 2 || !ParseName(t[1], &m->model.name)) return "bad model";
    f->model = true;
    return "";
  }
  if (key == "step") return ParseSingle(t, &f->step, &m->step, 0, INT64_MAX);
  if (key == "time_unix_ms") {
    std::string p = ParseSingle(t, &f->time, &v, INT64_MIN, INT64_MAX);
    m->time = absl::FromUnixMillis(v);
    return p;
  }
  if (key == "world_size") {
    std::string p = ParseSingle(t, &f->world_size, &v, 1, kMaxWorld);
    m->world_size = static_cast<int>(v);
    return p;
  }
  if (key == "alignment") {
    return ParseSingle(t, &f->alignment, &m->alignment, 1, kMaxAlignment);
  }
  if (key == "total") {
    return ParseSingle(t, &f->total_seen, &f->total, 0, INT64_MAX);
  }
  if (key == "counter") {
    if (t.size() != 3 || !IsCounterName(t[1]) || !t.Int(2, &v)) {
      return "bad counter";
    }
    if (!m->counters.emplace(std::string(t[1]), v).second) {
      return "duplicate counter";
    }
    return "";
  }
  if (key == "group") return ParseGroup(t, m);
  if (key == "tensor") return ParseTensor(t, m, f);
  if (key == "shard") return ParseShard(t, m, f);
  if (key == "chunks") return ParseChunks(t, m, f);
  return absl::StrCat("unknown key '", absl::CHexEscape(key), "'");
}

}  // namespace sherd::internal
