// The layout: who owns what. Pure code, no I/O; the client, the server and
// sherdctl all compute the same layout from the same registered tensors.
//
// Tensors are packed in registration order into one flat fp32 buffer, each
// tensor's offset aligned to `alignment` elements (64 bytes by default, so
// SIMD loads of a tensor's start stay aligned). The total is padded to a
// multiple of world_size * alignment and split into world_size equal
// contiguous slices; rank r owns slice r. A tensor may straddle slices.
//
//   Layout layout = *Layout::Build(tensors, /*world_size=*/4);
//   for (const Piece& p : layout.Where(layout.Find("fc1.weight").value()))
//     ...  // rank p.rank holds elements [p.tensor_begin, p.tensor_end)
//
// Thread-safety: immutable after Build; safe to share.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace sherd {

inline constexpr int64_t kDefaultAlignment = 16;  // fp32 elements = 64 bytes

struct TensorDesc {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;
  int group = 0;  // index into the model's param groups
};

struct TensorPlacement {
  TensorDesc desc;
  int64_t numel = 0;
  int64_t offset = 0;  // in the flat buffer, elements
};

struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
};

// The part of one tensor that one rank owns.
struct Piece {
  int rank = 0;
  int64_t tensor_begin = 0;  // element range within the tensor
  int64_t tensor_end = 0;
  int64_t flat_begin = 0;    // flat index of tensor_begin
};

// A run of one rank's slice that belongs to one param group; relative to the
// start of the slice. Padding between tensors is covered by the group of the
// tensor before it (its values stay zero: zero grads keep them zero unless
// weight decay... which multiplies zero), so the optimizer needs no holes.
struct GroupRun {
  int64_t begin = 0;
  int64_t end = 0;
  int group = 0;
};

class Layout {
 public:
  // Validates the tensors: non-empty list, unique non-empty names, at least
  // one dimension, every dimension > 0, sizes that fit in int64.
  static absl::StatusOr<Layout> Build(std::vector<TensorDesc> tensors,
                                      int world_size,
                                      int64_t alignment = kDefaultAlignment);

  int world_size() const { return world_size_; }
  int64_t alignment() const { return alignment_; }
  int64_t total() const { return total_; }         // padded flat size
  int64_t parameters() const { return parameters_; }  // sum of numel
  int64_t slice_size() const { return total_ / world_size_; }
  Range Slice(int rank) const;

  const std::vector<TensorPlacement>& tensors() const { return tensors_; }
  std::optional<int> Find(absl::string_view name) const;

  // Which ranks hold which element ranges of tensor `index`, in rank order.
  std::vector<Piece> Where(int index) const;
  // The pieces of an element range [begin, end) of tensor `index`.
  std::vector<Piece> Where(int index, int64_t begin, int64_t end) const;
  // Rank `rank`'s slice as runs of param groups (adjacent runs of the same
  // group merged), relative to the slice start.
  std::vector<GroupRun> GroupRuns(int rank) const;

  // Same tensors (names, shapes, dtypes, groups) in the same order.
  bool SameModel(const Layout& other) const;

 private:
  int world_size_ = 1;
  int64_t alignment_ = kDefaultAlignment;
  int64_t total_ = 0;
  int64_t parameters_ = 0;
  std::vector<TensorPlacement> tensors_;
  absl::flat_hash_map<std::string, int> by_name_;
};

}  // namespace sherd
