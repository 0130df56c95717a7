// The MANIFEST text format, the ShardInfo codec and the shard header.
#include "server/checkpoint/format.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "server/checkpoint/manifest.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace sherd {
namespace {

ShardInfo FakeShard(const Layout& layout, int rank, int64_t step,
                    int64_t chunk_elems = 5) {
  ShardInfo s;
  s.rank = rank;
  s.file = ShardFileName(rank, layout.world_size());
  s.slice = layout.Slice(rank);
  s.step = step;
  s.bytes = ShardFileBytes(s.slice.size());
  s.chunk_elems = chunk_elems;
  s.header_checksum = 0x0123456789abcdefull + rank;
  for (int a = 0; a < kNumStateArrays; ++a) {
    for (int64_t k = 0; k < NumChunks(s.slice.size(), chunk_elems); ++k) {
      s.chunks[a].push_back(k * 1000003u + a * 7u + rank);
    }
  }
  return s;
}

Manifest FakeManifest(const ModelSpec& spec, int world, int64_t step) {
  Layout layout = *Layout::Build(spec.tensors, world);
  std::vector<ShardInfo> shards;
  for (int r = world - 1; r >= 0; --r) shards.push_back(FakeShard(layout, r, step));
  auto m = BuildManifest(spec, world, step, testing::Counters(step), shards,
                         absl::FromUnixMillis(1700000000123));
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

TEST(CheckpointFormat, ManifestRoundTripsEveryField) {
  ModelSpec spec = testing::RandomModel(1);
  spec.name = "odd name \"with\" spaces/and\\slashes \xc3\xa9";
  spec.tensors[2].name = "weird tensor=%name";
  spec.groups[1].eps = 1.17549435e-38f;
  spec.groups[1].lr_scale = 0.1f;
  Manifest m = FakeManifest(spec, 3, 42);
  std::string text = EncodeManifest(m);
  auto back = ParseManifest(text, "/x/MANIFEST");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << text;
  EXPECT_EQ(back->model.name, spec.name);
  ASSERT_EQ(back->model.tensors.size(), spec.tensors.size());
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    EXPECT_EQ(back->model.tensors[i].name, spec.tensors[i].name);
    EXPECT_EQ(back->model.tensors[i].shape, spec.tensors[i].shape);
    EXPECT_EQ(back->model.tensors[i].dtype, spec.tensors[i].dtype);
    EXPECT_EQ(back->model.tensors[i].group, spec.tensors[i].group);
  }
  EXPECT_EQ(back->model.groups, spec.groups);  // floats bit-exact
  EXPECT_EQ(back->world_size, 3);
  EXPECT_EQ(back->step, 42);
  EXPECT_EQ(back->time, absl::FromUnixMillis(1700000000123));
  EXPECT_EQ(back->counters, testing::Counters(42));
  ASSERT_EQ(back->shards.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(back->shards[r].rank, r);
    EXPECT_EQ(back->shards[r].chunks, m.shards[r].chunks);
    EXPECT_EQ(back->shards[r].header_checksum, m.shards[r].header_checksum);
  }
  EXPECT_EQ(EncodeManifest(*back), text);
}

TEST(CheckpointFormat, EveryFlippedManifestByteIsCaught) {
  Manifest m = FakeManifest(testing::RandomModel(2, 3), 2, 7);
  const std::string text = EncodeManifest(m);
  for (size_t i = 0; i < text.size(); ++i) {
    for (unsigned char bit : {0x01, 0x20, 0x80}) {
      std::string bad = text;
      bad[i] = static_cast<char>(bad[i] ^ bit);
      auto r = ParseManifest(bad, "/ckpt/MANIFEST");
      ASSERT_FALSE(r.ok()) << "byte " << i << " bit " << int(bit);
      EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
      EXPECT_NE(r.status().message().find("/ckpt/MANIFEST"), std::string::npos);
    }
  }
  for (size_t n = 0; n < text.size(); ++n) {  // every truncation
    EXPECT_TRUE(absl::IsDataLoss(
        ParseManifest(text.substr(0, n), "/ckpt/MANIFEST").status()));
  }
}

TEST(CheckpointFormat, NewerVersionIsFailedPrecondition) {
  std::string text = EncodeManifest(FakeManifest(testing::RandomModel(3), 1, 1));
  text = text.substr(0, text.rfind("checksum "));
  text.replace(text.find(" 1\n"), 3, " 2\n");
  text += absl::StrCat("checksum ", Hex64(Checksum(text.data(), text.size())),
                       "\n");
  auto r = ParseManifest(text, "/c/MANIFEST");
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
}

TEST(CheckpointFormat, BuildManifestRejectsWrongShards) {
  ModelSpec spec = testing::RandomModel(4);
  Layout layout = *Layout::Build(spec.tensors, 3);
  std::vector<ShardInfo> ok = {FakeShard(layout, 0, 5), FakeShard(layout, 1, 5),
                               FakeShard(layout, 2, 5)};
  EXPECT_TRUE(BuildManifest(spec, 3, 5, {}, ok).ok());
  auto missing = ok;
  missing.pop_back();
  EXPECT_TRUE(absl::IsInvalidArgument(BuildManifest(spec, 3, 5, {}, missing).status()));
  auto dup = ok;
  dup[2] = FakeShard(layout, 1, 5);
  EXPECT_TRUE(absl::IsInvalidArgument(BuildManifest(spec, 3, 5, {}, dup).status()));
  auto other_step = ok;
  other_step[1] = FakeShard(layout, 1, 4);
  EXPECT_TRUE(absl::IsInvalidArgument(BuildManifest(spec, 3, 5, {}, other_step).status()));
  auto bad_slice = ok;
  bad_slice[0].slice.end -= 1;
  EXPECT_TRUE(absl::IsInvalidArgument(BuildManifest(spec, 3, 5, {}, bad_slice).status()));
  auto bad_chunks = ok;
  bad_chunks[0].chunks[1].pop_back();
  EXPECT_TRUE(absl::IsInvalidArgument(BuildManifest(spec, 3, 5, {}, bad_chunks).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      BuildManifest(spec, 3, 5, {{"Bad Name", 1}}, ok).status()));
}

TEST(CheckpointFormat, ShardInfoCodecRoundTrips) {
  Layout layout = *Layout::Build(testing::RandomModel(5).tensors, 4);
  ShardInfo s = FakeShard(layout, 2, 9);
  auto back = DecodeShardInfo(EncodeShardInfo(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rank, 2);
  EXPECT_EQ(back->file, s.file);
  EXPECT_EQ(back->slice.begin, s.slice.begin);
  EXPECT_EQ(back->slice.end, s.slice.end);
  EXPECT_EQ(back->chunks, s.chunks);
  EXPECT_FALSE(DecodeShardInfo("shard 1 2 3\n").ok());
  EXPECT_FALSE(DecodeShardInfo("").ok());
  std::string text = EncodeShardInfo(s);
  EXPECT_FALSE(DecodeShardInfo(text.substr(0, text.rfind("chunks"))).ok());
}

TEST(CheckpointFormat, ShardHeaderRoundTripsAndDetectsDamage) {
  ShardHeader h{3, 5, {300, 400}, 1024, 77};
  std::string bytes = EncodeShardHeader(h);
  ASSERT_EQ(bytes.size(), static_cast<size_t>(kShardHeaderBytes));
  auto back = DecodeShardHeader(bytes, "f");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rank, 3);
  EXPECT_EQ(back->world_size, 5);
  EXPECT_EQ(back->slice.begin, 300);
  EXPECT_EQ(back->slice.end, 400);
  EXPECT_EQ(back->chunk_elems, 1024);
  EXPECT_EQ(back->step, 77);
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x10;
    auto r = DecodeShardHeader(bad, "/d/rank-3.shard");
    EXPECT_TRUE(absl::IsDataLoss(r.status())) << i;
  }
  EXPECT_FALSE(DecodeShardHeader(bytes.substr(1), "f").ok());
}

TEST(CheckpointFormat, DirectoryNames) {
  EXPECT_EQ(CheckpointDirName(100), "ckpt-000000000100");
  EXPECT_EQ(ParseCheckpointDirName("ckpt-000000000100"), 100);
  EXPECT_EQ(ParseCheckpointDirName("ckpt-1234567890123"), 1234567890123);
  EXPECT_FALSE(ParseCheckpointDirName("ckpt-100"));
  EXPECT_FALSE(ParseCheckpointDirName("ckpt-00000000010x"));
  EXPECT_FALSE(ParseCheckpointDirName("ckpt--00000000010"));
  EXPECT_FALSE(ParseCheckpointDirName(".tmp-ckpt-000000000100"));
  EXPECT_TRUE(IsTempDirName(".tmp-ckpt-5-abc"));
  EXPECT_EQ(ShardFileName(3, 12), "rank-00003-of-00012.shard");
}

}  // namespace
}  // namespace sherd
