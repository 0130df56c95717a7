#include "common/layout.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/limits.h"

namespace sherd {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 50;  // 4 PiB of fp32: sanity

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

absl::StatusOr<Layout> Layout::Build(std::vector<TensorDesc> tensors,
                                     int world_size, int64_t alignment) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("world size must be >= 1, got ", world_size));
  }
  if (alignment < 1) {
    return absl::InvalidArgumentError("alignment must be >= 1");
  }
  if (tensors.empty()) {
    return absl::InvalidArgumentError("a model needs at least one tensor");
  }
  Layout l;
  l.world_size_ = world_size;
  l.alignment_ = alignment;
  int64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    TensorDesc& d = tensors[i];
    if (d.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor #", i, " has an empty name"));
    }
    if (d.shape.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", d.name,
          "' has an empty shape; a scalar is registered as shape [1]"));
    }
    if (d.shape.size() > kMaxTensorDims) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", d.name, "' has ", d.shape.size(), " dimensions; at most ",
          kMaxTensorDims, " are supported (the checkpoint format's limit)"));
    }
    int64_t numel = 1;
    for (int64_t dim : d.shape) {
      if (dim <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", d.name, "' has shape [",
                         absl::StrJoin(d.shape, ", "),
                         "]: every dimension must be > 0"));
      }
      if (numel > kMaxElements / dim) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", d.name, "' is too large"));
      }
      numel *= dim;
    }
    if (!l.by_name_.emplace(d.name, static_cast<int>(i)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor name '", d.name, "'"));
    }
    offset = RoundUp(offset, alignment);
    if (offset > kMaxElements - numel) {
      return absl::InvalidArgumentError("model is too large");
    }
    l.tensors_.push_back({std::move(d), numel, offset});
    offset += numel;
    l.parameters_ += numel;
  }
  l.total_ = RoundUp(offset, alignment * world_size);
  return l;
}

Range Layout::Slice(int rank) const {
  int64_t s = slice_size();
  return {rank * s, (rank + 1) * s};
}

std::optional<int> Layout::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

std::vector<Piece> Layout::Where(int index) const {
  return Where(index, 0, tensors_[index].numel);
}

std::vector<Piece> Layout::Where(int index, int64_t begin, int64_t end) const {
  std::vector<Piece> out;
  const TensorPlacement& t = tensors_[index];
  begin = std::clamp<int64_t>(begin, 0, t.numel);
  end = std::clamp<int64_t>(end, begin, t.numel);
  if (begin == end) return out;
  const int64_t s = slice_size();
  int64_t flat = t.offset + begin;
  const int64_t flat_end = t.offset + end;
  while (flat < flat_end) {
    int rank = static_cast<int>(flat / s);
    int64_t stop = std::min(flat_end, (rank + 1) * s);
    out.push_back({rank, flat - t.offset, stop - t.offset, flat});
    flat = stop;
  }
  return out;
}

std::vector<GroupRun> Layout::GroupRuns(int rank) const {
  std::vector<GroupRun> runs;
  const Range slice = Slice(rank);
  auto add = [&](int64_t b, int64_t e, int group) {
    b = std::max(b, slice.begin);
    e = std::min(e, slice.end);
    if (b >= e) return;
    if (!runs.empty() && runs.back().group == group &&
        runs.back().end == b - slice.begin) {
      runs.back().end = e - slice.begin;
    } else {
      runs.push_back({b - slice.begin, e - slice.begin, group});
    }
  };
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorPlacement& t = tensors_[i];
    // A tensor's run extends over the padding after it, up to the next
    // tensor's offset (or the end of the buffer).
    int64_t next = i + 1 < tensors_.size() ? tensors_[i + 1].offset : total_;
    add(t.offset, next, t.desc.group);
  }
  return runs;
}

bool Layout::SameModel(const Layout& other) const {
  if (tensors_.size() != other.tensors_.size()) return false;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorDesc& a = tensors_[i].desc;
    const TensorDesc& b = other.tensors_[i].desc;
    if (a.name != b.name || a.shape != b.shape || a.dtype != b.dtype ||
        a.group != b.group) {
      return false;
    }
  }
  return true;
}

}  // namespace sherd
