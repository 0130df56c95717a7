#include "server/checkpoint/tools.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "server/checkpoint/io.h"
#include "server/checkpoint/reader.h"

namespace sherd {
namespace {

// Elements per read: large enough that a chunk is rarely read twice,
// small enough to bound the tools' memory.
constexpr int64_t kBlockElems = int64_t{4} << 20;

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&out, absl::StrFormat("\\u%04x", c));
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

std::string SafetensorsHeader(const Manifest& m) {
  std::string json = absl::StrCat(
      "{\"__metadata__\":{\"format\":\"pt\",\"sherd_model\":",
      JsonString(m.model.name), ",\"sherd_step\":\"", m.step, "\"}");
  int64_t offset = 0;
  for (const TensorPlacement& t : m.layout.tensors()) {
    const int64_t bytes = t.numel * 4;
    absl::StrAppend(&json, ",", JsonString(t.desc.name),
                    ":{\"dtype\":\"F32\",\"shape\":[",
                    absl::StrJoin(t.desc.shape, ","), "],\"data_offsets\":[",
                    offset, ",", offset + bytes, "]}");
    offset += bytes;
  }
  json += '}';
  // Pad so that the data starts 8-byte aligned, as the reference
  // implementation writes it.
  json.append((8 - json.size() % 8) % 8, ' ');
  return json;
}

absl::Status WriteExport(const CheckpointReader& ckpt, int fd,
                         const std::string& path, ExportResult* result) {
  const Manifest& m = ckpt.manifest();
  const std::string json = SafetensorsHeader(m);
  const uint64_t n = json.size();
  RETURN_IF_ERROR(internal::WriteAll(fd, &n, sizeof(n), path));
  RETURN_IF_ERROR(internal::WriteAll(fd, json.data(), json.size(), path));
  result->bytes = sizeof(n) + json.size();
  // Stream the flat buffer in blocks and write each tensor's part of a
  // block; tensors are in offset order, which is the file's order.
  const auto& tensors = m.layout.tensors();
  const int64_t end = tensors.back().offset + tensors.back().numel;
  std::vector<float> block(static_cast<size_t>(std::min(end, kBlockElems)));
  size_t t = 0;
  for (int64_t b = 0; b < end; b += kBlockElems) {
    const int64_t e = std::min(end, b + kBlockElems);
    RETURN_IF_ERROR(ckpt.LoadRange({b, e}, block.data(), nullptr, nullptr));
    for (; t < tensors.size(); ++t) {
      const int64_t lo = std::max(b, tensors[t].offset);
      const int64_t hi = std::min(e, tensors[t].offset + tensors[t].numel);
      if (lo < hi) {
        RETURN_IF_ERROR(internal::WriteAll(fd, block.data() + (lo - b),
                                           (hi - lo) * 4, path));
        result->bytes += (hi - lo) * 4;
      }
      if (tensors[t].offset + tensors[t].numel > e) break;  // continues
    }
  }
  result->tensors = static_cast<int64_t>(tensors.size());
  return internal::FsyncFd(fd, path);
}

}  // namespace

absl::StatusOr<TensorInspection> InspectTensor(const std::string& dir,
                                               absl::string_view tensor,
                                               StateArray state) {
  ASSIGN_OR_RETURN(CheckpointReader ckpt, CheckpointReader::Open(dir));
  const Manifest& m = ckpt.manifest();
  std::optional<int> index = m.layout.Find(tensor);
  if (!index) {
    return absl::NotFoundError(absl::StrCat(
        ckpt.manifest_path(), ": no tensor '", tensor, "' in this checkpoint"));
  }
  const TensorPlacement& t = m.layout.tensors()[*index];
  TensorInspection out;
  out.name = t.desc.name;
  out.shape = t.desc.shape;
  out.dtype = t.desc.dtype;
  out.group = t.desc.group;
  out.numel = t.numel;
  out.state = state;
  out.step = m.step;
  std::vector<float> block(static_cast<size_t>(std::min(t.numel, kBlockElems)));
  float* dst[kNumStateArrays] = {nullptr, nullptr, nullptr};
  dst[static_cast<int>(state)] = block.data();
  for (int64_t b = 0; b < t.numel; b += kBlockElems) {
    const int64_t e = std::min(t.numel, b + kBlockElems);
    RETURN_IF_ERROR(ckpt.LoadRange({t.offset + b, t.offset + e}, dst[0],
                                   dst[1], dst[2]));
    out.stats.Merge(ComputeStats(block.data(), e - b));
  }
  return out;
}

absl::StatusOr<ExportResult> ExportSafetensors(const std::string& dir,
                                               const std::string& out_file) {
  ASSIGN_OR_RETURN(CheckpointReader ckpt, CheckpointReader::Open(dir));
  const std::string temp = absl::StrCat(out_file, ".tmp");
  ExportResult result;
  absl::Status s;
  {
    ASSIGN_OR_RETURN(internal::ScopedFd fd, internal::OpenForWrite(temp));
    s = WriteExport(ckpt, fd.get(), temp, &result);
  }
  if (s.ok()) s = internal::Rename(temp, out_file);
  if (!s.ok()) {
    ::unlink(temp.c_str());
    return s;
  }
  return result;
}

}  // namespace sherd
