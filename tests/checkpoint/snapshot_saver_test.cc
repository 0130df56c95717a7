// Asynchronous saves: the copy is taken before Start returns, at most one
// save is in flight, progress reaches the total, the destructor waits.
#include "server/checkpoint/snapshot_saver.h"

#include <cstring>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "server/checkpoint/directory.h"
#include "server/checkpoint/fault_injection.h"
#include "server/checkpoint/reader.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace sherd {
namespace {

using internal::CheckpointStage;

class SnapshotSaverTest : public ::testing::Test {
 protected:
  void TearDown() override { internal::SetCheckpointFaultHook(nullptr); }
  // Holds every background write at its start until `release_` fires.
  void BlockWrites() {
    internal::SetCheckpointFaultHook([this](CheckpointStage s) {
      if (s == CheckpointStage::kBeforeShard) release_.WaitForNotification();
      return absl::OkStatus();
    });
  }
  testing::TempRoot root_;
  ModelSpec spec_ = testing::RandomModel(61, 6);
  Layout layout_ = *Layout::Build(spec_.tensors, 1);
  absl::Notification release_;
};

TEST_F(SnapshotSaverTest, OneInFlightCopyTakenAtStartProgressReachesTotal) {
  testing::FullState s = testing::RandomState(layout_, 1);
  const testing::FullState original = s;
  auto dir = CreateTempCheckpointDir(root_.path(), 5);
  ASSERT_TRUE(dir.ok());
  SnapshotSaver saver;
  EXPECT_TRUE(absl::IsFailedPrecondition(saver.Wait().status()));
  BlockWrites();
  ASSERT_TRUE(saver.Start(*dir, 0, 1, layout_.Slice(0), 5, s.p.data(),
                          s.m.data(), s.v.data(), nullptr,
                          testing::SmallChunks()).ok());
  // The caller may change its state as soon as Start returns.
  std::fill(s.p.begin(), s.p.end(), 42.0f);
  EXPECT_TRUE(saver.progress().in_flight);
  absl::Status again = saver.Start(*dir, 0, 1, layout_.Slice(0), 5, s.p.data(),
                                   s.m.data(), s.v.data());
  EXPECT_TRUE(absl::IsFailedPrecondition(again)) << again;

  std::vector<int64_t> seen;
  internal::SetCheckpointFaultHook([&](CheckpointStage st) {
    if (st == CheckpointStage::kShardChunkWritten) {
      seen.push_back(saver.progress().bytes_written);
    }
    return absl::OkStatus();
  });
  release_.Notify();
  auto info = saver.Wait();
  ASSERT_TRUE(info.ok()) << info.status();
  const SnapshotSaver::Progress p = saver.progress();
  EXPECT_FALSE(p.in_flight);
  EXPECT_EQ(p.bytes_total, ShardFileBytes(layout_.slice_size()));
  EXPECT_EQ(p.bytes_written, p.bytes_total);
  ASSERT_FALSE(seen.empty());
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));

  auto manifest = BuildManifest(spec_, 1, 5, {}, {*info});
  ASSERT_TRUE(manifest.ok());
  auto committed = CommitCheckpoint(root_.path(), *dir, *manifest);
  ASSERT_TRUE(committed.ok()) << committed.status();
  auto ckpt = CheckpointReader::Open(*committed);
  ASSERT_TRUE(ckpt.ok());
  std::vector<float> p_back(layout_.total());
  ASSERT_TRUE(ckpt->LoadSlice(layout_, 0, p_back.data(), nullptr, nullptr).ok());
  EXPECT_EQ(std::memcmp(p_back.data(), original.p.data(), p_back.size() * 4), 0);
}

TEST_F(SnapshotSaverTest, ErrorsAreReportedNotThrown) {
  testing::FullState s = testing::RandomState(layout_, 2);
  SnapshotSaver saver;
  absl::StatusOr<ShardInfo> reported = absl::UnknownError("not called");
  ASSERT_TRUE(saver.Start(root_.Sub("no/such/dir"), 0, 1, layout_.Slice(0), 1,
                          s.p.data(), s.m.data(), s.v.data(),
                          [&](const absl::StatusOr<ShardInfo>& r) {
                            reported = r;
                          }).ok());
  EXPECT_TRUE(absl::IsNotFound(saver.Wait().status()));
  EXPECT_TRUE(absl::IsNotFound(reported.status()));
  // A failed save does not block the next one.
  auto dir = CreateTempCheckpointDir(root_.path(), 1);
  ASSERT_TRUE(saver.Start(*dir, 0, 1, layout_.Slice(0), 1, s.p.data(),
                          s.m.data(), s.v.data()).ok());
  EXPECT_TRUE(saver.Wait().ok());
}

TEST_F(SnapshotSaverTest, CopyFunctionIsUsedAndItsFailureStartsNothing) {
  testing::FullState s = testing::RandomState(layout_, 3);
  auto dir = CreateTempCheckpointDir(root_.path(), 2);
  ASSERT_TRUE(dir.ok());
  SnapshotSaver saver;
  bool called = false;
  // A device copy that fails (a broken GPU): nothing is written, nothing
  // stays in flight.
  absl::Status s1 = saver.Start(
      *dir, 0, 1, layout_.Slice(0), 2, s.p.data(), s.m.data(), s.v.data(),
      [&](const absl::StatusOr<ShardInfo>&) { called = true; }, {},
      [](float*, const float*, int64_t) { return absl::InternalError("copy failed"); });
  EXPECT_EQ(s1.code(), absl::StatusCode::kInternal);
  EXPECT_FALSE(saver.progress().in_flight);
  EXPECT_FALSE(called);
  // A working copy function is what fills the snapshot.
  int64_t copied = 0;
  ASSERT_TRUE(saver.Start(*dir, 0, 1, layout_.Slice(0), 2, s.p.data(), s.m.data(),
                          s.v.data(), nullptr, {},
                          [&](float* dst, const float* src, int64_t n) {
                            std::memcpy(dst, src, n * sizeof(float));
                            copied += n;
                            return absl::OkStatus();
                          }).ok());
  EXPECT_TRUE(saver.Wait().ok());
  EXPECT_EQ(copied, 3 * layout_.Slice(0).size());
}

TEST_F(SnapshotSaverTest, DestructorWaitsForSavesAndCommits) {
  // Two ranks, each with its saver; the last report commits, as a
  // coordinator would. Destroying the savers waits for all of it.
  const int world = 2;
  Layout layout = *Layout::Build(spec_.tensors, world);
  testing::FullState s = testing::RandomState(layout, 3);
  auto dir = CreateTempCheckpointDir(root_.path(), 9);
  ASSERT_TRUE(dir.ok());
  absl::Mutex mu;
  std::vector<ShardInfo> reports;
  absl::Status commit = absl::UnknownError("no commit");
  auto report = [&](const absl::StatusOr<ShardInfo>& r) {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(r.ok()) << r.status();
    reports.push_back(*r);
    if (static_cast<int>(reports.size()) < world) return;
    auto m = BuildManifest(spec_, world, 9, testing::Counters(9), reports);
    commit = m.ok() ? CommitCheckpoint(root_.path(), *dir, *m).status()
                    : m.status();
  };
  BlockWrites();
  {
    SnapshotSaver savers[2];
    for (int r = 0; r < world; ++r) {
      const int64_t b = layout.Slice(r).begin;
      ASSERT_TRUE(savers[r].Start(*dir, r, world, layout.Slice(r), 9,
                                  s.p.data() + b, s.m.data() + b,
                                  s.v.data() + b, report).ok());
    }
    release_.Notify();
  }  // ~SnapshotSaver x2
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(commit.ok()) << commit;
  EXPECT_TRUE(VerifyCheckpoint(root_.Sub(CheckpointDirName(9))).ok());
}

}  // namespace
}  // namespace sherd
