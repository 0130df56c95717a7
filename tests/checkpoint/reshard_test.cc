// Save with W ranks, load with W' ranks: every new rank reads exactly the
// flat range it now owns, and the state is bit-identical.
#include <cstring>

#include "gtest/gtest.h"
#include "server/checkpoint/directory.h"
#include "server/checkpoint/reader.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace sherd {
namespace {

struct ReshardCase {
  int from, to;
  int64_t chunk_bytes;
};

class ReshardTest : public ::testing::TestWithParam<ReshardCase> {};

// Loads the checkpoint as `world` ranks and reassembles the full flat state.
testing::FullState LoadAll(const CheckpointReader& ckpt, const ModelSpec& spec,
                           int world) {
  Layout layout = *Layout::Build(spec.tensors, world);
  testing::FullState s;
  for (auto* a : {&s.p, &s.m, &s.v}) a->assign(layout.total(), -1.0f);
  for (int r = 0; r < world; ++r) {
    const int64_t b = layout.Slice(r).begin;
    absl::Status st = ckpt.LoadSlice(layout, r, s.p.data() + b, s.m.data() + b,
                                     s.v.data() + b);
    EXPECT_TRUE(st.ok()) << st;
  }
  return s;
}

void ExpectBitIdentical(const std::vector<float>& saved,
                        const std::vector<float>& loaded) {
  const size_t common = std::min(saved.size(), loaded.size());
  ASSERT_EQ(std::memcmp(saved.data(), loaded.data(), common * sizeof(float)), 0);
  for (size_t i = common; i < loaded.size(); ++i) {
    ASSERT_EQ(loaded[i], 0.0f) << "new padding at " << i;  // never garbage
  }
  for (size_t i = common; i < saved.size(); ++i) {
    ASSERT_EQ(saved[i], 0.0f);  // dropped old padding held nothing
  }
}

TEST_P(ReshardTest, StateIsBitIdentical) {
  const ReshardCase c = GetParam();
  testing::TempRoot root;
  // Several seeds: model sizes that are not multiples of either world size.
  for (uint32_t seed : {11u, 12u, 13u}) {
    ModelSpec spec = testing::RandomModel(seed, 5 + seed % 4);
    Layout old_layout = *Layout::Build(spec.tensors, c.from);
    testing::FullState saved = testing::RandomState(old_layout, seed);
    WriteOptions options;
    options.chunk_bytes = c.chunk_bytes;
    const int64_t step = 100 + seed;
    std::string dir = testing::Save(root.path(), spec, c.from, step, saved,
                                    options);
    auto ckpt = CheckpointReader::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ASSERT_TRUE(ckpt->CheckModel(spec).ok());
    EXPECT_EQ(ckpt->manifest().step, step);
    EXPECT_EQ(ckpt->manifest().counters, testing::Counters(step));
    EXPECT_EQ(ckpt->manifest().model.groups, spec.groups);
    testing::FullState loaded = LoadAll(*ckpt, spec, c.to);
    ExpectBitIdentical(saved.p, loaded.p);
    ExpectBitIdentical(saved.m, loaded.m);
    ExpectBitIdentical(saved.v, loaded.v);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Worlds, ReshardTest,
    ::testing::Values(ReshardCase{4, 2, 64}, ReshardCase{2, 4, 64},
                      ReshardCase{3, 5, 64}, ReshardCase{1, 3, 64},
                      ReshardCase{4, 1, 64}, ReshardCase{4, 2, 4},
                      ReshardCase{3, 5, 100}, ReshardCase{2, 2, kDefaultChunkBytes},
                      ReshardCase{1, 1, kDefaultChunkBytes},
                      ReshardCase{5, 3, kDefaultChunkBytes}),
    [](const ::testing::TestParamInfo<ReshardCase>& info) {
      return absl::StrCat("W", info.param.from, "to", info.param.to, "chunk",
                          info.param.chunk_bytes);
    });

TEST(CheckpointLoad, AnyRangeMatchesAndSkipsNullStates) {
  testing::TempRoot root;
  ModelSpec spec = testing::RandomModel(21, 9);
  Layout layout = *Layout::Build(spec.tensors, 3);
  testing::FullState saved = testing::RandomState(layout, 21);
  auto ckpt = CheckpointReader::Open(
      testing::Save(root.path(), spec, 3, 1, saved, testing::SmallChunks()));
  ASSERT_TRUE(ckpt.ok());
  std::mt19937 rng(5);
  for (int i = 0; i < 300; ++i) {
    int64_t b = rng() % (layout.total() + 40);
    int64_t e = b + rng() % 200;
    std::vector<float> m(e - b, 7.0f), v(e - b, 7.0f);
    ASSERT_TRUE(ckpt->LoadRange({b, e}, nullptr, m.data(), v.data()).ok());
    for (int64_t j = b; j < e; ++j) {
      const float want_m = j < layout.total() ? saved.m[j] : 0.0f;
      const float want_v = j < layout.total() ? saved.v[j] : 0.0f;
      ASSERT_EQ(std::memcmp(&m[j - b], &want_m, 4), 0) << j;
      ASSERT_EQ(std::memcmp(&v[j - b], &want_v, 4), 0) << j;
    }
  }
  EXPECT_TRUE(absl::IsInvalidArgument(
      ckpt->LoadRange({5, 4}, nullptr, nullptr, nullptr)));
  EXPECT_TRUE(absl::IsInvalidArgument(
      ckpt->LoadRange({-1, 4}, nullptr, nullptr, nullptr)));
}

TEST(CheckpointLoad, SpecialValuesSurviveBitExactly) {
  testing::TempRoot root;
  ModelSpec spec = testing::RandomModel(22, 2);
  Layout layout = *Layout::Build(spec.tensors, 2);
  testing::FullState s = testing::RandomState(layout, 22);
  const uint32_t specials[] = {0x7fc00001u, 0xffc12345u, 0x7f800000u,
                               0xff800000u, 0x80000000u, 0x00000001u};
  for (size_t i = 0; i < std::size(specials); ++i) {
    std::memcpy(&s.p[i], &specials[i], 4);
  }
  auto ckpt = CheckpointReader::Open(testing::Save(root.path(), spec, 2, 3, s));
  ASSERT_TRUE(ckpt.ok());
  testing::FullState back = LoadAll(*ckpt, spec, 1);
  ExpectBitIdentical(s.p, back.p);
}

TEST(CheckpointLoad, LayoutOfAnotherModelIsRefused) {
  testing::TempRoot root;
  ModelSpec spec = testing::RandomModel(23);
  Layout layout = *Layout::Build(spec.tensors, 2);
  auto ckpt = CheckpointReader::Open(testing::Save(
      root.path(), spec, 2, 1, testing::RandomState(layout, 1)));
  ASSERT_TRUE(ckpt.ok());
  ModelSpec other = spec;
  other.tensors[1].shape[0] += 1;
  Layout other_layout = *Layout::Build(other.tensors, 2);
  std::vector<float> buf(other_layout.slice_size());
  absl::Status s = ckpt->LoadSlice(other_layout, 0, buf.data(), nullptr, nullptr);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("MANIFEST"), std::string::npos);
  Layout aligned = *Layout::Build(spec.tensors, 2, /*alignment=*/4);
  EXPECT_TRUE(absl::IsFailedPrecondition(
      ckpt->LoadSlice(aligned, 0, buf.data(), nullptr, nullptr)));
}

}  // namespace
}  // namespace sherd
