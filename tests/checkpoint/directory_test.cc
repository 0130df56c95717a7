// Listing, crash leftovers, retention, re-saving a step.
#include <sys/stat.h>

#include <fstream>

#include "gtest/gtest.h"
#include "server/checkpoint/directory.h"
#include "server/checkpoint/writer.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace sherd {
namespace {

std::vector<int64_t> ListedSteps(const std::string& root) {
  auto listed = ListCheckpoints(root);
  EXPECT_TRUE(listed.ok()) << listed.status();
  std::vector<int64_t> steps;
  if (listed.ok()) {
    for (const CheckpointInfo& c : *listed) steps.push_back(c.step);
  }
  return steps;
}

std::vector<std::string> Entries(const std::string& root) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class DirectoryTest : public ::testing::Test {
 protected:
  std::string SaveStep(int64_t step, int world = 2) {
    Layout layout = *Layout::Build(spec_.tensors, world);
    return testing::Save(root_.path(), spec_, world, step,
                         testing::RandomState(layout, step));
  }
  testing::TempRoot root_;
  ModelSpec spec_ = testing::RandomModel(41);
};

TEST_F(DirectoryTest, ListsCommittedNewestFirstWithDetails) {
  const absl::Time before = absl::Now() - absl::Seconds(1);
  SaveStep(5, 1);
  SaveStep(300, 3);
  SaveStep(20, 2);
  auto listed = ListCheckpoints(root_.path());
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 3u);
  EXPECT_EQ((*listed)[0].step, 300);
  EXPECT_EQ((*listed)[0].world_size, 3);
  EXPECT_EQ((*listed)[0].name, "ckpt-000000000300");
  EXPECT_EQ((*listed)[1].step, 20);
  EXPECT_EQ((*listed)[2].step, 5);
  for (const CheckpointInfo& c : *listed) {
    EXPECT_TRUE(c.status.ok()) << c.status;
    EXPECT_FALSE(c.verified);
    EXPECT_GT(c.time, before);
    EXPECT_LE(c.time, absl::Now());
    int64_t on_disk = 0;
    for (const auto& e : std::filesystem::directory_iterator(c.path)) {
      on_disk += std::filesystem::file_size(e.path());
    }
    EXPECT_EQ(c.bytes, on_disk);
  }
  ListOptions verify;
  verify.verify = true;
  listed = ListCheckpoints(root_.path(), verify);
  ASSERT_TRUE(listed.ok());
  for (const CheckpointInfo& c : *listed) EXPECT_TRUE(c.verified);
  testing::TempRoot empty;
  EXPECT_TRUE(ListedSteps(empty.Sub("does-not-exist")).empty());
}

TEST_F(DirectoryTest, CleanLeftoversRemovesOnlyLeftovers) {
  SaveStep(10);
  ASSERT_TRUE(CreateTempCheckpointDir(root_.path(), 20).ok());
  auto tmp = CreateTempCheckpointDir(root_.path(), 30);
  ASSERT_TRUE(tmp.ok());
  std::ofstream(*tmp + "/rank-00000-of-00002.shard") << "partial";
  const std::string orphan = root_.Sub(CheckpointDirName(40));  // no MANIFEST
  ASSERT_EQ(::mkdir(orphan.c_str(), 0755), 0);
  std::ofstream(orphan + "/rank-00000-of-00001.shard") << "x";
  std::ofstream(root_.Sub("notes.txt")) << "operator's file";
  ASSERT_EQ(::mkdir(root_.Sub("ckpt-other").c_str(), 0755), 0);

  EXPECT_EQ(ListedSteps(root_.path()), std::vector<int64_t>{10});
  auto removed = CleanLeftovers(root_.path());
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->size(), 3u);
  EXPECT_EQ(Entries(root_.path()),
            (std::vector<std::string>{"ckpt-000000000010", "ckpt-other",
                                      "notes.txt"}));
  EXPECT_TRUE(VerifyCheckpoint(root_.Sub(CheckpointDirName(10))).ok());
  removed = CleanLeftovers(root_.path());
  ASSERT_TRUE(removed.ok());
  EXPECT_TRUE(removed->empty());
}

TEST_F(DirectoryTest, RetentionKeepsTheLastK) {
  for (int64_t step : {1, 2, 3, 4, 5}) SaveStep(step);
  auto removed = ApplyRetention(root_.path(), 2);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->size(), 3u);
  EXPECT_EQ(ListedSteps(root_.path()), (std::vector<int64_t>{5, 4}));
  EXPECT_EQ(Entries(root_.path()).size(), 2u);  // nothing else left behind
  EXPECT_TRUE(absl::IsInvalidArgument(ApplyRetention(root_.path(), 0).status()));
}

TEST_F(DirectoryTest, RetentionNeverDropsTheLastGoodOne) {
  SaveStep(1);
  SaveStep(2);
  std::string newest = SaveStep(3);
  std::filesystem::remove(newest + "/" + ShardFileName(1, 2));  // corrupt
  auto removed = ApplyRetention(root_.path(), 1);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(ListedSteps(root_.path()), (std::vector<int64_t>{3, 2}));
  auto found = FindNewestLoadable(root_.path(), spec_);
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->reader.manifest().step, 2);
}

TEST_F(DirectoryTest, AnotherModelsCheckpointsArePassedOver) {
  SaveStep(1);
  ModelSpec other = testing::RandomModel(7);
  other.name = "another";
  Layout layout = *Layout::Build(other.tensors, 2);
  testing::Save(root_.path(), other, 2, 5, testing::RandomState(layout, 5));
  auto found = FindNewestLoadable(root_.path(), spec_);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->reader.manifest().step, 1);
  EXPECT_TRUE(found->skipped.empty());
  // Only another model's: nothing to restore, not an error.
  ModelSpec third = testing::RandomModel(9);
  third.name = "third";
  EXPECT_EQ(FindNewestLoadable(root_.path(), third).status().code(),
            absl::StatusCode::kNotFound);
}

// After a rewind to step 2: this model's newer checkpoints leave the ckpt-*
// namespace (renamed, not deleted); older ones, the restored one and
// another model's newer one stay.
TEST_F(DirectoryTest, SetAsideNewerThanMovesOnlyThisModelsNewerCheckpoints) {
  for (int64_t s : {1, 2, 3, 4}) SaveStep(s);
  ModelSpec other = testing::RandomModel(7);
  other.name = "another";
  Layout layout = *Layout::Build(other.tensors, 2);
  testing::Save(root_.path(), other, 2, 5, testing::RandomState(layout, 5));
  auto moved = SetAsideNewerThan(root_.path(), 2, spec_);
  ASSERT_TRUE(moved.ok()) << moved.status();
  ASSERT_EQ(moved->size(), 2u);
  EXPECT_EQ((*moved)[0].rfind(kRewoundPrefix, 0), 0u);
  EXPECT_NE((*moved)[0].find("-ckpt-000000000004"), std::string::npos);
  EXPECT_NE((*moved)[1].find("-ckpt-000000000003"), std::string::npos);
  const std::vector<std::string> entries = Entries(root_.path());
  for (const std::string& m : *moved) {
    EXPECT_NE(std::find(entries.begin(), entries.end(), m), entries.end()) << m;
  }
  auto list = ListCheckpoints(root_.path());
  ASSERT_TRUE(list.ok());
  std::vector<int64_t> steps;
  for (const CheckpointInfo& c : *list) steps.push_back(c.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{5, 2, 1}));
  // The step can be saved again on the new timeline.
  EXPECT_FALSE(SaveStep(4).empty());
  // Nothing newer: nothing moves.
  auto again = SetAsideNewerThan(root_.path(), 4, spec_);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
}

TEST_F(DirectoryTest, SavingAStepTwiceIsAlreadyExistsAndLeavesNoTemp) {
  std::string first = SaveStep(7);
  Layout layout = *Layout::Build(spec_.tensors, 2);
  testing::FullState s = testing::RandomState(layout, 123);
  auto again = SaveCheckpoint(root_.path(), spec_, 2, 7, {},
                              testing::Slices(layout, s));
  EXPECT_TRUE(absl::IsAlreadyExists(again.status())) << again.status();
  EXPECT_EQ(Entries(root_.path()), std::vector<std::string>{"ckpt-000000000007"});
  EXPECT_TRUE(VerifyCheckpoint(first).ok());
}

TEST_F(DirectoryTest, DistributedProtocolStepByStep) {
  // What the coordinator and the ranks do over RPC, in one process: ranks
  // report encoded ShardInfos; the coordinator commits only with all.
  const int world = 3;
  Layout layout = *Layout::Build(spec_.tensors, world);
  testing::FullState s = testing::RandomState(layout, 8);
  auto dir = CreateTempCheckpointDir(root_.path(), 8);
  ASSERT_TRUE(dir.ok());
  std::vector<ShardInfo> reported;
  for (int r = 0; r < world; ++r) {
    const int64_t b = layout.Slice(r).begin;
    auto info = WriteShard(*dir, r, world, layout.Slice(r), 8, s.p.data() + b,
                           s.m.data() + b, s.v.data() + b);
    ASSERT_TRUE(info.ok()) << info.status();
    auto wire = DecodeShardInfo(EncodeShardInfo(*info));
    ASSERT_TRUE(wire.ok()) << wire.status();
    reported.push_back(*wire);
  }
  auto partial = BuildManifest(spec_, world, 8, {}, {reported[0], reported[2]});
  EXPECT_TRUE(absl::IsInvalidArgument(partial.status()));
  auto manifest = BuildManifest(spec_, world, 8, testing::Counters(8), reported);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  auto committed = CommitCheckpoint(root_.path(), *dir, *manifest);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_TRUE(VerifyCheckpoint(*committed).ok());
  EXPECT_FALSE(std::filesystem::exists(*dir));
}

}  // namespace
}  // namespace sherd
