#include "common/layout.h"
#include "common/limits.h"

#include <gtest/gtest.h>

#include <random>

namespace sherd {
namespace {

std::vector<TensorDesc> Tensors(std::vector<std::vector<int64_t>> shapes) {
  std::vector<TensorDesc> t;
  for (size_t i = 0; i < shapes.size(); ++i) {
    t.push_back({"t" + std::to_string(i), shapes[i], DType::kFloat32,
                 static_cast<int>(i % 2)});
  }
  return t;
}

TEST(Layout, AlignsOffsetsAndPadsTotal) {
  auto l = Layout::Build(Tensors({{3}, {5, 2}, {1}}), 2, 16);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->tensors()[0].offset, 0);
  EXPECT_EQ(l->tensors()[1].offset, 16);
  EXPECT_EQ(l->tensors()[2].offset, 32);
  EXPECT_EQ(l->parameters(), 3 + 10 + 1);
  EXPECT_EQ(l->total(), 64);  // 33 rounded up to 2 * 16
  EXPECT_EQ(l->slice_size(), 32);
  EXPECT_EQ(l->Slice(1).begin, 32);
  EXPECT_EQ(l->Slice(1).end, 64);
}

TEST(Layout, WhereSplitsAStraddlingTensor) {
  // One tensor of 100 elements over 3 ranks: total 144, slices of 48.
  auto l = Layout::Build(Tensors({{100}}), 3, 16);
  ASSERT_TRUE(l.ok());
  auto pieces = l->Where(0);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].rank, 0);
  EXPECT_EQ(pieces[0].tensor_end, 48);
  EXPECT_EQ(pieces[1].rank, 1);
  EXPECT_EQ(pieces[1].tensor_begin, 48);
  EXPECT_EQ(pieces[1].flat_begin, 48);
  EXPECT_EQ(pieces[2].tensor_end, 100);
  auto part = l->Where(0, 40, 50);
  ASSERT_EQ(part.size(), 2u);
  EXPECT_EQ(part[0].tensor_begin, 40);
  EXPECT_EQ(part[1].tensor_end, 50);
  EXPECT_TRUE(l->Where(0, 60, 60).empty());
}

TEST(Layout, RejectsBadTensors) {
  EXPECT_EQ(Layout::Build({}, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Layout::Build(Tensors({{}}), 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Layout::Build(Tensors({{3, 0}}), 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Layout::Build(Tensors({{-2}}), 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Layout::Build(Tensors({{int64_t{1} << 40, int64_t{1} << 40}}), 1)
                .status().code(),
            absl::StatusCode::kInvalidArgument);
  auto dup = Tensors({{2}, {3}});
  dup[1].name = dup[0].name;
  auto s = Layout::Build(dup, 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("duplicate"), absl::string_view::npos);
  auto unnamed = Tensors({{2}});
  unnamed[0].name = "";
  EXPECT_FALSE(Layout::Build(unnamed, 1).ok());
  EXPECT_FALSE(Layout::Build(Tensors({{2}}), 0).ok());
  // As many dimensions as a checkpoint manifest holds, no more (issue 13,
  // defect 5: a 65-dimension model trained and saved, then no Register
  // could load the directory).
  EXPECT_TRUE(Layout::Build(Tensors({std::vector<int64_t>(kMaxTensorDims, 1)}), 1).ok());
  s = Layout::Build(Tensors({std::vector<int64_t>(kMaxTensorDims + 1, 1)}), 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("65 dimensions; at most 64"), absl::string_view::npos) << s;
}

// Property: for random models and world sizes, the pieces of every tensor
// tile it exactly, and group runs tile every slice exactly.
TEST(Layout, PiecesAndRunsTileExactly) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    int n = 1 + rng() % 8;
    std::vector<std::vector<int64_t>> shapes;
    for (int i = 0; i < n; ++i) shapes.push_back({1 + static_cast<int64_t>(rng() % 300)});
    int world = 1 + rng() % 5;
    auto l = Layout::Build(Tensors(shapes), world, 1 + rng() % 32);
    ASSERT_TRUE(l.ok());
    EXPECT_EQ(l->total() % (world * l->alignment()), 0);
    for (size_t t = 0; t < l->tensors().size(); ++t) {
      EXPECT_EQ(l->tensors()[t].offset % l->alignment(), 0);
      int64_t next = 0;
      for (const Piece& p : l->Where(static_cast<int>(t))) {
        EXPECT_EQ(p.tensor_begin, next);
        Range s = l->Slice(p.rank);
        EXPECT_GE(p.flat_begin, s.begin);
        EXPECT_LE(p.flat_begin + p.tensor_end - p.tensor_begin, s.end);
        next = p.tensor_end;
      }
      EXPECT_EQ(next, l->tensors()[t].numel);
    }
    for (int r = 0; r < world; ++r) {
      int64_t next = 0;
      for (const GroupRun& run : l->GroupRuns(r)) {
        EXPECT_EQ(run.begin, next);
        next = run.end;
      }
      EXPECT_EQ(next, l->slice_size());
    }
  }
}

TEST(Layout, SameModelComparesEverything) {
  auto a = Layout::Build(Tensors({{4}, {5}}), 1);
  auto b = Layout::Build(Tensors({{4}, {5}}), 2);
  auto c = Layout::Build(Tensors({{4}, {6}}), 1);
  EXPECT_TRUE(a->SameModel(*b));
  EXPECT_FALSE(a->SameModel(*c));
}

}  // namespace
}  // namespace sherd
