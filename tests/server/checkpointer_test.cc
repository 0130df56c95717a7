// Checkpoint saves on two ranks in one process (two Checkpointers sharing a
// store and a root, as two servers share rank 0's store and a directory):
// saves are scoped by their id (issue 13, defect 4).
#include "server/checkpointer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "server/rendezvous/kv_store.h"
#include "server/state/model_state.h"

namespace sherd {
namespace {

namespace fs = std::filesystem;

class TwoRanks : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("sherd-ckptr-" + std::to_string(getpid()));
    fs::remove_all(root_);
    spec_ = ModelSpec{.name = "m", .tensors = {{"w", {1000}, DType::kFloat32, 0}},
                      .groups = {ParamGroupConfig{.name = "default"}}};
    for (int r = 0; r < 2; ++r) {
      auto m = ModelState::Create(spec_, *Layout::Build(spec_.tensors, 2), r,
                                  "/sherd-ckptr." + std::to_string(getpid()) + "." +
                                      std::to_string(r));
      ASSERT_TRUE(m.ok()) << m.status();
      models_.push_back(std::move(*m));
      Fill(r, 1.0f);
    }
  }
  void TearDown() override { fs::remove_all(root_); }

  std::unique_ptr<Checkpointer> Make(int rank, const std::string& root) {
    CheckpointOptions o{.root = root, .report_timeout = absl::Minutes(10)};
    auto c = std::make_unique<Checkpointer>(o, rank, 2);
    EXPECT_TRUE(c->Prepare().ok());
    c->SetReportStore(store_);
    return c;
  }
  void Fill(int r, float base) {
    ModelState& m = *models_[r];
    for (int64_t i = 0; i < m.owned().size(); ++i) {
      m.master()[i] = base + std::sin(static_cast<float>(i + 1000 * r));
      m.exp_avg()[i] = 0;
      m.exp_avg_sq()[i] = 0;
    }
  }
  std::vector<float> Master(int r) {
    ModelState& m = *models_[r];
    return {m.master(), m.master() + m.owned().size()};
  }

  fs::path root_;
  ModelSpec spec_;
  std::vector<std::unique_ptr<ModelState>> models_;
  std::shared_ptr<InMemoryKvStore> store_ = std::make_shared<InMemoryKvStore>();
};

// Rank 1 saved step 4 once on its own (rank 0 never took part). A later
// save of the same step on both ranks must commit rank 1's new shard, not
// the old report: before ids, reports were keyed by step and rank 0 read
// the stale one.
TEST_F(TwoRanks, TwoSavesOfOneStepNeverReadEachOthersReports) {
  auto c0 = Make(0, root_.string());
  auto c1 = Make(1, root_.string());
  ASSERT_TRUE(c1->Start(*models_[1], 4, {}, "a").ok());
  ASSERT_TRUE(c1->WaitIdle(absl::Seconds(30)));
  ASSERT_TRUE(store_->Get("ckpt/a/shard/1", absl::ZeroDuration()).ok());

  Fill(1, 5.0f);
  const std::vector<float> want = Master(1);
  ASSERT_TRUE(c0->Start(*models_[0], 4, {}, "b").ok());
  ASSERT_TRUE(c1->Start(*models_[1], 4, {}, "b").ok());
  ASSERT_TRUE(c0->WaitIdle(absl::Seconds(30)));
  ASSERT_TRUE(c1->WaitIdle(absl::Seconds(30)));
  Checkpointer::Status s = c0->status();
  EXPECT_EQ(s.last_error, "");
  EXPECT_EQ(s.last_committed, "ckpt-000000000004");
  // The committed checkpoint holds rank 1's new slice.
  Fill(1, 0.0f);
  auto loaded = c1->Load(*models_[1], "ckpt-000000000004");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->master, want);
  // Rank 0 erased the reports of the save it committed.
  EXPECT_FALSE(store_->Get("ckpt/b/shard/1", absl::ZeroDuration()).ok());
}

// A rank that cannot start its part of a save says so, and rank 0 aborts
// the save at once instead of waiting the report timeout (10 minutes).
TEST_F(TwoRanks, AFailureToStartOnAnotherRankIsReportedAtOnce) {
  auto c0 = Make(0, root_.string());
  fs::create_directories(root_);
  const fs::path not_a_dir = root_ / "file";
  std::ofstream(not_a_dir) << "x";
  CheckpointOptions o{.root = not_a_dir.string()};
  Checkpointer c1(o, 1, 2);  // its root is a file: every save fails to start
  c1.SetReportStore(store_);
  ASSERT_TRUE(c0->Start(*models_[0], 7, {}, "c").ok());
  EXPECT_FALSE(c1.Start(*models_[1], 7, {}, "c").ok());
  ASSERT_TRUE(c0->WaitIdle(absl::Seconds(30))) << "rank 0 waited for the report timeout";
  Checkpointer::Status s = c0->status();
  EXPECT_NE(s.last_error.find("rank 1"), std::string::npos) << s.last_error;
  EXPECT_FALSE(fs::exists(root_ / "ckpt-000000000007"));
}

// --checkpoint-dir a/b/c where a/b does not exist yet: made, as `mkdir -p`
// would (before, the server refused to start: "mkdir ...: No such file or
// directory").
TEST_F(TwoRanks, MissingParentsOfTheRootAreMade) {
  const fs::path nested = root_ / "a" / "b" / "ckpt";
  CheckpointOptions o{.root = nested.string()};
  Checkpointer c(o, 0, 2);
  absl::Status s = c.Prepare();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(fs::is_directory(nested));
  // A root that cannot be a directory is still an error, naming it.
  std::ofstream(root_ / "file") << "x";
  Checkpointer bad(CheckpointOptions{.root = (root_ / "file" / "ckpt").string()}, 0, 2);
  s = bad.Prepare();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find((root_ / "file").string()), std::string::npos) << s;
}

TEST_F(TwoRanks, SaveIdsAreChecked) {
  auto c0 = Make(0, root_.string());
  for (const std::string& bad :
       std::vector<std::string>{"", "a/b", "../x", std::string(65, 'x')}) {
    EXPECT_EQ(c0->Start(*models_[0], 1, {}, bad).code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

}  // namespace
}  // namespace sherd
