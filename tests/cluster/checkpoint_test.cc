// Checkpoints through real servers: save on W ranks, restore on W' ranks,
// continue bit-identically; sherdctl's checkpoint commands; a corrupt
// checkpoint is refused, never loaded.
#include <gtest/gtest.h>

#include <algorithm>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <signal.h>
#include <unistd.h>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "client/client.h"
#include "sherd/v1/admin.grpc.pb.h"
#include "tests/testing/process.h"
#include "tests/testing/trainers.h"

namespace sherd {
namespace {

namespace fs = std::filesystem;
using testing::ClusterProcess;
using testing::RunProgram;

ModelDef Model() {
  return ModelDef{.name = "ck",
                  .tensors = {{"a", {50, 21}, ""}, {"b", {13}, "nd"}, {"c", {301}, ""}},
                  .groups = {{.name = "nd", .weight_decay = 0.0f}}};
}

// Identical on every rank, so the mean is exact for any power-of-two W and
// runs on 2 and 4 ranks must agree bit for bit.
float Grad(int step, size_t i) { return std::sin(0.3 * i + step) * 0.5f; }

class Trainers {
 public:
  Trainers(ClusterProcess& cluster, int world) {
    clients_.resize(world);
    ForEach([&](int r, std::unique_ptr<Client>& c) {
      auto made = Client::Connect(cluster.address(r));
      ASSERT_TRUE(made.ok()) << made.status();
      c = std::move(*made);
      auto info = c->Register(Model());
      ASSERT_TRUE(info.ok()) << info.status();
      if (!info->initialized) {
        size_t k = 0;
        for (const auto& t : Model().tensors)
          for (float& x : c->Param(t.name)) x = std::cos(0.1 * k++);
        ASSERT_TRUE(c->InitParams().ok());
      }
    });
  }
  void Steps(int until, float lr = 0.01f) {
    ForEach([&](int, std::unique_ptr<Client>& c) {
      while (c->next_step() <= until) {
        const int s = static_cast<int>(c->next_step());
        size_t k = 0;
        for (const auto& t : Model().tensors)
          for (float& g : c->Grad(t.name)) g = Grad(s, k++);
        auto r = c->Step({.lr = lr});
        ASSERT_TRUE(r.ok()) << r.status();
      }
    });
  }
  std::vector<float> Params() { return testing::FlatParams(*clients_[0], Model()); }
  Client& client(int r) { return *clients_[r]; }

 private:
  template <typename F>
  void ForEach(F fn) {
    testing::ForEachRank(clients_, fn);
  }
  std::vector<std::unique_ptr<Client>> clients_;
};

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sherd-ckpt-test-" + std::to_string(getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::vector<std::string> Flags(std::string restore) {
    return {"--checkpoint-dir", dir_.string(), "--restore", restore};
  }
  // The params of `steps` steps on `world` ranks without a failure (the
  // directory is emptied afterwards).
  std::vector<float> Reference(int world, int steps) {
    auto cluster = ClusterProcess::Start(world, Flags("none"));
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    if (!cluster.ok()) return {};
    Trainers t(*cluster, world);
    t.Steps(steps);
    std::vector<float> p = t.Params();
    EXPECT_TRUE(cluster->Stop());
    fs::remove_all(dir_);
    return p;
  }
  // After a rank was replaced: every rank serves, and sherdctl (asked at
  // `address`) says the cluster rewound to ckpt-4 at epoch 1.
  void ExpectRewoundToCkpt4(const std::string& address) {
    auto status = RunProgram({SHERDCTL_BIN, "--server", address, "status"});
    EXPECT_EQ(status.out.find("NOT_SERVING"), std::string::npos) << status.out;
    EXPECT_NE(status.out.find("membership epoch 1: ranks were replaced and the cluster rewound "
                              "to ckpt-000000000004"),
              std::string::npos)
        << status.out;
  }
  // Two ranks saving every `every` steps, trained to `steps` and stopped
  // (shutdown waits for the save in flight).
  void TrainWithPeriodicSaves(int every, int keep, int steps) {
    auto cluster = ClusterProcess::Start(
        2, {"--checkpoint-dir", dir_.string(), "--checkpoint-every", std::to_string(every),
            "--checkpoint-keep", std::to_string(keep)});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    Trainers t(*cluster, 2);
    t.Steps(steps);
    EXPECT_TRUE(cluster->Stop());
  }
  void ExpectNoTempDirs() {
    for (const auto& e : fs::directory_iterator(dir_)) {
      EXPECT_EQ(e.path().filename().string().rfind(".tmp", 0), std::string::npos) << e.path();
    }
  }
  fs::path dir_;
};

TEST_F(CheckpointTest, SaveOnTwoRanksRestoreOnFourContinuesIdentically) {
  std::vector<float> at6, continued;
  {
    auto cluster = ClusterProcess::Start(2, Flags("newest"));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    Trainers t(*cluster, 2);
    t.Steps(6);
    at6 = t.Params();
    auto save = RunProgram({SHERDCTL_BIN, "--server", cluster->address(1), "checkpoint", "save"});
    ASSERT_EQ(save.code, 0) << save.out;
    EXPECT_NE(save.out.find("committed ckpt-000000000006"), std::string::npos) << save.out;
    t.Steps(10);
    continued = t.Params();
    EXPECT_TRUE(cluster->Stop());
  }
  auto list = RunProgram({SHERDCTL_BIN, "checkpoint", "list", "--dir", dir_.string()});
  EXPECT_EQ(list.code, 0);
  EXPECT_NE(list.out.find("ckpt-000000000006  6"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("yes"), std::string::npos) << list.out;

  auto cluster = ClusterProcess::Start(4, Flags("ckpt-000000000006"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Trainers t(*cluster, 4);
  EXPECT_EQ(t.client(3).next_step(), 7);
  EXPECT_EQ(t.Params(), at6);  // P restored bit for bit
  t.Steps(10);
  EXPECT_EQ(t.Params(), continued);  // and training continues identically
  auto status = RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "status"});
  EXPECT_NE(status.out.find("ckpt-000000000006"), std::string::npos) << status.out;
  EXPECT_TRUE(cluster->Stop());
}

TEST_F(CheckpointTest, RuntimeRestoreRewindsEveryRankAndTrainingReplaysIdentically) {
  auto cluster = ClusterProcess::Start(2, Flags("none"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<float> at4, at8;
  {
    Trainers t(*cluster, 2);
    t.Steps(4);
    at4 = t.Params();
    auto save = RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "save"});
    ASSERT_EQ(save.code, 0) << save.out;
    t.Steps(8);
    at8 = t.Params();
    // A bad name restores nothing anywhere.
    auto bad = RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint",
                           "restore", "ckpt-000000000099"});
    EXPECT_EQ(bad.code, 1) << bad.out;
    EXPECT_EQ(t.Params(), at8);
    auto restore = RunProgram({SHERDCTL_BIN, "--server", cluster->address(1), "checkpoint",
                               "restore", "ckpt-000000000004"});
    ASSERT_EQ(restore.code, 0) << restore.out;
    EXPECT_NE(restore.out.find("continue at step 5"), std::string::npos) << restore.out;
    EXPECT_EQ(t.Params(), at4);  // P rewound on the trainers' shared buffers
    // The trainers' old step ids are refused, naming the new expected one.
    auto stale = t.client(0).Step({.lr = 0.01f});
    EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(stale.status().message().find("expected step 5"), std::string::npos)
        << stale.status();
  }
  Trainers again(*cluster, 2);  // re-register: next step 5
  EXPECT_EQ(again.client(0).next_step(), 5);
  again.Steps(8);
  EXPECT_EQ(again.Params(), at8);  // replaying steps 5..8 gives the same params
  EXPECT_TRUE(cluster->Stop());
}

// A restore is one transaction (issue 13, defect 4): a COMMIT that fails on
// one rank after another rank committed is rolled back there, so no rank is
// left at another step. Before, ABORT after COMMIT changed nothing and rank
// 0 stayed rewound while rank 1 was not.
TEST_F(CheckpointTest, APartialRestoreCommitIsRolledBack) {
  auto cluster = ClusterProcess::Start(2, Flags("none"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Trainers t(*cluster, 2);
  t.Steps(4);
  ASSERT_EQ(RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "save"}).code, 0);
  t.Steps(8);
  const std::vector<float> at8 = t.Params();
  auto restore = [&](int rank, v1::CheckpointRestoreRequest::Phase phase,
                     const std::string& txn) {
    auto admin = v1::Admin::NewStub(
        grpc::CreateChannel(cluster->address(rank), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::CheckpointRestoreRequest req;
    req.set_phase(phase);
    req.set_name("ckpt-000000000004");
    req.set_txn(txn);
    v1::CheckpointRestoreResponse resp;
    grpc::Status s = admin->CheckpointRestore(&ctx, req, &resp);
    return std::make_pair(s, resp);
  };
  using P = v1::CheckpointRestoreRequest;
  ASSERT_TRUE(restore(0, P::PREPARE, "x1").first.ok());
  ASSERT_TRUE(restore(1, P::PREPARE, "x1").first.ok());
  auto committed = restore(0, P::COMMIT, "x1");
  ASSERT_TRUE(committed.first.ok());
  EXPECT_EQ(committed.second.next_step(), 5);
  EXPECT_NE(t.Params(), at8);  // rank 0 rewound P on its trainer's buffers
  // Rank 1 loses what it prepared (another restore replaced it): its COMMIT
  // of x1 fails, and x1 is aborted everywhere.
  ASSERT_TRUE(restore(1, P::PREPARE, "x2").first.ok());
  EXPECT_EQ(restore(1, P::COMMIT, "x1").first.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_FALSE(restore(1, P::ABORT, "x1").second.rolled_back());  // x2's, untouched
  auto aborted = restore(0, P::ABORT, "x1");
  ASSERT_TRUE(aborted.first.ok());
  EXPECT_TRUE(aborted.second.rolled_back());
  EXPECT_EQ(aborted.second.next_step(), 9);
  EXPECT_TRUE(restore(1, P::ABORT, "x2").first.ok());
  EXPECT_EQ(t.Params(), at8);  // P as it was before the restore
  t.Steps(10);  // and both ranks step on from step 9
  EXPECT_TRUE(cluster->Stop());
}

// sherdctl rolls a partial commit back and says so: here rank 1's COMMIT
// fails (a test failpoint), after rank 0's succeeded.
TEST_F(CheckpointTest, SherdctlReportsARolledBackRestore) {
  setenv("SHERD_FAILPOINTS", "restore-commit@1", 1);
  auto cluster = ClusterProcess::Start(2, Flags("none"));
  unsetenv("SHERD_FAILPOINTS");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Trainers t(*cluster, 2);
  t.Steps(2);
  ASSERT_EQ(RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "save"}).code, 0);
  t.Steps(3);
  const std::vector<float> at3 = t.Params();
  auto r = RunProgram({"/bin/sh", "-c",
                       std::string(SHERDCTL_BIN) + " --server " + cluster->address(0) +
                           " checkpoint restore newest 2>&1"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("rank 1: commit of ckpt-000000000002 failed: failpoint"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("rolled back 1 rank(s) that had committed (0)"), std::string::npos) << r.out;
  EXPECT_EQ(t.Params(), at3);  // rank 0's rewind of P undone
  t.Steps(5);  // every rank still at step 4: nothing was restored
  EXPECT_TRUE(cluster->Stop());
}

// After a rewind, training goes on a new timeline (issue 13, defect 7):
// the old timeline's newer checkpoints are set aside, so the every-K save
// of a replayed step commits, and a restart resumes the new timeline.
// Before, the save of step 4 failed ("already exists") and a restart
// resumed the old step 4.
TEST_F(CheckpointTest, AfterARewindTheOldTimelineIsSetAside) {
  std::vector<float> new4;
  {
    auto cluster = ClusterProcess::Start(
        2, {"--checkpoint-dir", dir_.string(), "--checkpoint-every", "2", "--restore", "none"});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    {
      Trainers t(*cluster, 2);
      t.Steps(4);
    }
    auto wait_idle = [&] {  // the every-K save of step 4 commits in the background
      for (int i = 0; i < 100 && !fs::exists(dir_ / "ckpt-000000000004" / "MANIFEST"); ++i)
        absl::SleepFor(absl::Milliseconds(50));
    };
    wait_idle();
    ASSERT_TRUE(fs::exists(dir_ / "ckpt-000000000004" / "MANIFEST"));
    auto r = RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "restore",
                         "ckpt-000000000002"});
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(fs::exists(dir_ / "ckpt-000000000004")) << "nothing is set aside before a step";
    Trainers t(*cluster, 2);
    ASSERT_EQ(t.client(0).next_step(), 3);
    t.Steps(4, /*lr=*/0.05f);  // another timeline
    new4 = t.Params();
    EXPECT_TRUE(cluster->Stop());  // waits for the save of step 4
  }
  int rewound = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("rewound-", 0) == 0 && n.find("-ckpt-000000000004") != std::string::npos) ++rewound;
  }
  EXPECT_EQ(rewound, 1);
  auto cluster = ClusterProcess::Start(2, Flags("newest"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Trainers t(*cluster, 2);
  EXPECT_EQ(t.client(1).next_step(), 5);
  EXPECT_EQ(t.Params(), new4) << "a restart resumed the timeline that was rewound away from";
  EXPECT_TRUE(cluster->Stop());
}

// A killed rank restarted with the same rank, at a new address, rejoins
// the running cluster (issue 13, defect 8). Before, the survivors stayed
// NOT_SERVING until every server restarted, and the restarted rank got
// ALREADY_EXISTS. Now every rank rebuilds its collectives, rewinds to the
// newest complete checkpoint (all or nothing: one choice for the epoch), the
// trainers re-register, and training continues with no restart of the
// survivors, ending where a run without the failure ends.
TEST_F(CheckpointTest, AKilledRankRestartedRejoinsAndEveryRankRewinds) {
  const std::vector<float> reference = Reference(2, 8);  // without a failure
  ASSERT_FALSE(reference.empty());
  const std::vector<std::string> flags = {"--checkpoint-dir", dir_.string(),
                                          "--checkpoint-every", "2", "--restore", "none",
                                          "--collective-timeout", "4"};
  auto cluster = ClusterProcess::Start(2, flags);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  {
    Trainers t(*cluster, 2);
    t.Steps(5);  // checkpoints of steps 2 and 4
  }
  for (int i = 0; i < 100 && !fs::exists(dir_ / "ckpt-000000000004" / "MANIFEST"); ++i)
    absl::SleepFor(absl::Milliseconds(50));
  ASSERT_TRUE(fs::exists(dir_ / "ckpt-000000000004" / "MANIFEST"));
  const absl::Time killed = absl::Now();
  cluster->servers()[1].process().Signal(SIGKILL);
  ASSERT_TRUE(cluster->servers()[1].process().Wait(absl::Seconds(10)).ok());
  // The survivor refuses steps meanwhile (rank 1 is missing), state untouched.
  {
    auto c0 = Client::Connect(cluster->address(0));
    ASSERT_TRUE(c0.ok());
    ASSERT_TRUE((*c0)->Register(Model()).ok());
    auto refused = (*c0)->Step({.lr = 0.01f});
    EXPECT_FALSE(refused.ok());
  }
  std::vector<std::string> f1 = flags;
  f1.insert(f1.end(), {"--rank", "1", "--world-size", "2", "--coordinator", cluster->address(0)});
  const absl::Time restart = absl::Now();
  auto restarted = testing::ServerProcess::Start(f1);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_NE(restarted->address(), cluster->address(1)) << "a new port";
  cluster->servers()[1] = std::move(*restarted);
  // Rank 0 rewinds once it has rebuilt its collectives: its trainer
  // re-registers until it sees the step to continue from.
  std::unique_ptr<Client> c0;
  for (int i = 0; i < 300; ++i) {
    auto c = Client::Connect(cluster->address(0));
    ASSERT_TRUE(c.ok());
    auto info = (*c)->Register(Model());
    ASSERT_TRUE(info.ok()) << info.status();
    if (info->next_step == 5) {
      c0 = std::move(*c);
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_NE(c0, nullptr) << "rank 0 never rewound to ckpt-4";
  Trainers t(*cluster, 2);  // rank 1 restores the same checkpoint
  EXPECT_EQ(t.client(1).next_step(), 5);
  EXPECT_EQ(t.client(0).next_step(), 5);
  c0.reset();
  t.Steps(5);
  // The kill-to-restart part is this test's own (a refused step waits out
  // the agreement timeout); the restart-to-step part is the recovery.
  std::printf("kill to first step after it: %.2f s (restart of rank 1 to that step: %.2f s)\n",
              absl::ToDoubleSeconds(absl::Now() - killed),
              absl::ToDoubleSeconds(absl::Now() - restart));
  t.Steps(8);
  EXPECT_EQ(t.Params(), reference);
  ExpectRewoundToCkpt4(cluster->address(0));
  EXPECT_TRUE(cluster->Stop());
}

// Rank 0 too (issue 13): killed and restarted at its address, with an
// empty store, it is joined again by the survivors, which say what epoch
// they were at; the cluster re-forms past it, and every rank rewinds to the
// newest checkpoint, with no restart of the survivors.
TEST_F(CheckpointTest, AKilledRankZeroRestartedAtItsAddressIsRejoinedAndEveryRankRewinds) {
  constexpr int kWorld = 3;
  const std::vector<float> reference = Reference(kWorld, 8);  // without a failure
  ASSERT_FALSE(reference.empty());
  const std::vector<std::string> flags = {"--checkpoint-dir", dir_.string(),
                                          "--checkpoint-every", "2", "--restore", "none",
                                          "--collective-timeout", "4"};
  auto cluster = ClusterProcess::Start(kWorld, flags);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  {
    Trainers t(*cluster, kWorld);
    t.Steps(5);  // checkpoints of steps 2 and 4
  }
  for (int i = 0; i < 100 && !fs::exists(dir_ / "ckpt-000000000004" / "MANIFEST"); ++i)
    absl::SleepFor(absl::Milliseconds(50));
  ASSERT_TRUE(fs::exists(dir_ / "ckpt-000000000004" / "MANIFEST"));
  const std::string address0 = cluster->address(0);
  cluster->servers()[0].process().Signal(SIGKILL);
  ASSERT_TRUE(cluster->servers()[0].process().Wait(absl::Seconds(10)).ok());
  std::vector<std::string> f0 = flags;
  f0.insert(f0.end(), {"--rank", "0", "--world-size", std::to_string(kWorld)});
  const absl::Time restart = absl::Now();
  auto restarted = testing::ServerProcess::Start(f0, address0);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  cluster->servers()[0] = std::move(*restarted);
  // Every trainer re-registers until all see the step to continue from.
  bool together = false;
  for (int i = 0; i < 300 && !together; ++i) {
    std::vector<int64_t> next(kWorld, -1);
    for (int r = 0; r < kWorld; ++r) {
      auto c = Client::Connect(cluster->address(r));
      if (!c.ok()) break;
      auto info = (*c)->Register(Model());
      if (info.ok()) next[r] = info->next_step;
    }
    together = std::all_of(next.begin(), next.end(), [](int64_t n) { return n == 5; });
    if (!together) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(together) << "the ranks never rewound together to ckpt-4";
  Trainers t(*cluster, kWorld);
  t.Steps(5);
  std::printf("restart of rank 0 to the first step after it: %.2f s\n",
              absl::ToDoubleSeconds(absl::Now() - restart));
  t.Steps(8);
  EXPECT_EQ(t.Params(), reference);
  ExpectRewoundToCkpt4(cluster->address(1));
  EXPECT_TRUE(cluster->Stop());
}

// sherdctl checkpoint save checks that every rank is at the same step
// before it starts any save (issue 13, defect 4): before, rank 0's save
// started, and then waited minutes for a shard rank 1 never wrote.
TEST_F(CheckpointTest, SaveRefusesRanksAtDifferentStepsBeforeStartingAny) {
  auto cluster = ClusterProcess::Start(2, Flags("none"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Trainers t(*cluster, 2);
  t.Steps(2);
  auto save = RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "save"});
  ASSERT_EQ(save.code, 0) << save.out;
  t.Steps(4);
  // Rank 1 alone is rewound to step 2 (raw admin calls, one rank).
  auto admin = v1::Admin::NewStub(
      grpc::CreateChannel(cluster->address(1), grpc::InsecureChannelCredentials()));
  for (auto phase : {v1::CheckpointRestoreRequest::PREPARE, v1::CheckpointRestoreRequest::COMMIT}) {
    grpc::ClientContext ctx;
    v1::CheckpointRestoreRequest req;
    req.set_phase(phase);
    req.set_name("ckpt-000000000002");
    v1::CheckpointRestoreResponse resp;
    ASSERT_TRUE(admin->CheckpointRestore(&ctx, req, &resp).ok());
  }
  save = RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "save"});
  EXPECT_EQ(save.code, 1) << save.out;
  auto st = RunProgram({SHERDCTL_BIN, "--server", cluster->address(0), "checkpoint", "status"});
  EXPECT_EQ(st.code, 0);
  // No save started anywhere: nothing in flight, no step-4 checkpoint.
  EXPECT_EQ(st.out.find("yes"), std::string::npos) << st.out;
  EXPECT_FALSE(fs::exists(dir_ / "ckpt-000000000004"));
  EXPECT_TRUE(cluster->Stop());
}

TEST_F(CheckpointTest, EveryKStepsTrainerTriggeredAndOfflineTools) {
  TrainWithPeriodicSaves(/*every=*/4, /*keep=*/2, /*steps=*/8);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_TRUE(fs::exists(dir_ / "ckpt-000000000004"));
  EXPECT_TRUE(fs::exists(dir_ / "ckpt-000000000008"));
  ExpectNoTempDirs();
  auto verify = RunProgram({SHERDCTL_BIN, "checkpoint", "verify", "--dir", dir_.string(),
                            "ckpt-000000000008"});
  EXPECT_EQ(verify.code, 0) << verify.out;
  auto inspect = RunProgram({SHERDCTL_BIN, "checkpoint", "inspect", "--dir", dir_.string(),
                             "ckpt-000000000008", "b", "--state", "exp_avg_sq"});
  EXPECT_EQ(inspect.code, 0) << inspect.out;
  EXPECT_NE(inspect.out.find("b [13] exp_avg_sq at step 8"), std::string::npos) << inspect.out;
  const std::string out = (dir_ / "params.safetensors").string();
  auto exported = RunProgram({SHERDCTL_BIN, "checkpoint", "export", "--dir", dir_.string(),
                              "ckpt-000000000008", out});
  EXPECT_EQ(exported.code, 0) << exported.out;
  ASSERT_TRUE(fs::exists(out));
  EXPECT_GT(fs::file_size(out), (1050 + 13 + 301) * 4u);
}

// Saves every step: each one is due while the previous is usually still
// writing, and the step waits for it, so none is dropped and no rank leaves
// a save nobody commits.
TEST_F(CheckpointTest, EveryKStepsNeverDropsASaveThatIsDueWhileOneIsWriting) {
  TrainWithPeriodicSaves(/*every=*/1, /*keep=*/100, /*steps=*/12);
  ASSERT_FALSE(HasFatalFailure());
  for (int s = 1; s <= 12; ++s) {
    char name[32];
    std::snprintf(name, sizeof name, "ckpt-%012d", s);
    EXPECT_TRUE(fs::exists(dir_ / name / "MANIFEST")) << name;
  }
  ExpectNoTempDirs();
}

// Another model's checkpoint in the directory, even a newer one, does not
// block this model's start (issue 13, defect 5): it is passed over, and
// this model restores its own newest checkpoint, or starts fresh.
TEST_F(CheckpointTest, AnotherModelsCheckpointIsPassedOverNotABlock) {
  {
    auto cluster = ClusterProcess::Start(1, Flags("newest"));
    ASSERT_TRUE(cluster.ok());
    Trainers t(*cluster, 1);
    t.Steps(2);
    ASSERT_TRUE(t.client(0).Checkpoint().ok());
    EXPECT_TRUE(cluster->Stop());
  }
  const ModelDef other{.name = "other", .tensors = {{"x", {7}, ""}}};
  auto run_other = [&](int steps) {
    auto cluster = ClusterProcess::Start(1, Flags("newest"));
    ASSERT_TRUE(cluster.ok());
    auto c = Client::Connect(cluster->address(0));
    ASSERT_TRUE(c.ok());
    auto info = (*c)->Register(other);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_FALSE(info->initialized) << "nothing of this model to restore";
    ASSERT_TRUE((*c)->InitParams().ok());
    for (int s = 0; s < steps; ++s) ASSERT_TRUE((*c)->Step({.lr = 0.01f}).ok());
    auto saved = (*c)->Checkpoint();
    ASSERT_TRUE(saved.ok()) << saved.status();
    EXPECT_TRUE(cluster->Stop());
  };
  run_other(5);  // ck's step-2 checkpoint did not block it; saves step 5
  auto cluster = ClusterProcess::Start(1, Flags("newest"));
  ASSERT_TRUE(cluster.ok());
  auto c = Client::Connect(cluster->address(0));
  ASSERT_TRUE(c.ok());
  auto info = (*c)->Register(Model());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->initialized);
  EXPECT_EQ(info->next_step, 3) << "ck's own step-2 checkpoint, past other's step 5";
  EXPECT_TRUE(cluster->Stop());
}

// Flips one byte in the middle of the first shard file in `dir`; returns
// the file (empty if there is none).
fs::path CorruptShard(const fs::path& dir) {
  fs::path shard;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".shard" && (shard.empty() || e.path() < shard)) shard = e.path();
  }
  if (shard.empty()) return shard;
  std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(fs::file_size(shard) / 2));
  char c;
  f.read(&c, 1);
  f.seekp(-1, std::ios::cur);
  c ^= 0x40;
  f.write(&c, 1);
  return shard;
}

// The whole cluster restores one checkpoint, chosen once (issue 13, defect
// 7). Before, each rank chose at its own Register: when the newest
// checkpoint turned corrupt between two Registers, rank 0 restored ckpt-4,
// rank 1 fell back to ckpt-2, and the cluster trained a model stitched from
// both. Now rank 1 loads rank 0's choice or fails; it never falls back.
TEST_F(CheckpointTest, EveryRankRestoresTheCheckpointTheClusterChose) {
  TrainWithPeriodicSaves(/*every=*/2, /*keep=*/5, /*steps=*/4);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(fs::exists(dir_ / "ckpt-000000000004"));
  auto cluster = ClusterProcess::Start(2, Flags("newest"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto c0 = Client::Connect(cluster->address(0));
  ASSERT_TRUE(c0.ok());
  auto r0 = (*c0)->Register(Model());
  ASSERT_TRUE(r0.ok()) << r0.status();
  EXPECT_EQ(r0->next_step, 5);  // rank 0 chose ckpt-4 for the cluster
  ASSERT_FALSE(CorruptShard(dir_ / "ckpt-000000000004").empty());
  auto c1 = Client::Connect(cluster->address(1));
  ASSERT_TRUE(c1.ok());
  auto r1 = (*c1)->Register(Model());
  ASSERT_FALSE(r1.ok()) << "rank 1 restored step " << r1->next_step - 1
                        << " while rank 0 restored step 4";
  EXPECT_EQ(r1.status().code(), absl::StatusCode::kDataLoss) << r1.status();
  EXPECT_NE(r1.status().message().find("ckpt-000000000004, chosen for the whole cluster by rank 0"),
            std::string::npos)
      << r1.status();
  EXPECT_TRUE(cluster->Stop());
  // A restart chooses again: ckpt-4 no longer verifies, so every rank
  // restores ckpt-2, whichever registers first.
  auto again = ClusterProcess::Start(2, Flags("newest"));
  ASSERT_TRUE(again.ok()) << again.status();
  Trainers t(*again, 2);
  EXPECT_EQ(t.client(0).next_step(), 3);
  EXPECT_EQ(t.client(1).next_step(), 3);
  t.Steps(4);  // and the two ranks step together
  EXPECT_TRUE(again->Stop());
}

// Ranks that register different models learn it at Register, when a
// checkpoint choice is to be made, not at the first step.
TEST_F(CheckpointTest, AnotherModelOnOneRankIsRefusedAtRegister) {
  auto cluster = ClusterProcess::Start(2, Flags("newest"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto c0 = Client::Connect(cluster->address(0));
  ASSERT_TRUE(c0.ok());
  ASSERT_TRUE((*c0)->Register(Model()).ok());
  ModelDef other = Model();
  other.tensors[0].shape = {21, 50};
  auto c1 = Client::Connect(cluster->address(1));
  ASSERT_TRUE(c1.ok());
  auto r1 = (*c1)->Register(other);
  EXPECT_EQ(r1.status().code(), absl::StatusCode::kFailedPrecondition) << r1.status();
  EXPECT_NE(r1.status().message().find("rank 0 registered another model"), std::string::npos)
      << r1.status();
  EXPECT_TRUE(cluster->Stop());
}

TEST_F(CheckpointTest, CorruptCheckpointIsRefusedNotLoaded) {
  {
    auto cluster = ClusterProcess::Start(1, Flags("newest"));
    ASSERT_TRUE(cluster.ok());
    Trainers t(*cluster, 1);
    t.Steps(2);
    auto step = t.client(0).Checkpoint();
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(*step, 2);
    EXPECT_TRUE(cluster->Stop());
  }
  const fs::path shard = CorruptShard(dir_ / "ckpt-000000000002");
  ASSERT_FALSE(shard.empty());
  auto cluster = ClusterProcess::Start(1, Flags("newest"));
  ASSERT_TRUE(cluster.ok());
  auto c = Client::Connect(cluster->address(0));
  ASSERT_TRUE(c.ok());
  auto reg = (*c)->Register(Model());
  EXPECT_EQ(reg.status().code(), absl::StatusCode::kDataLoss) << reg.status();
  EXPECT_NE(reg.status().message().find(shard.filename().string()), std::string::npos)
      << reg.status();
  auto verify = RunProgram({SHERDCTL_BIN, "checkpoint", "verify", shard.parent_path().string()});
  EXPECT_EQ(verify.code, 1);
  EXPECT_TRUE(cluster->Stop());
}

}  // namespace
}  // namespace sherd

namespace sherd {
namespace {

// SIGKILL a server while it saves: on restart the leftovers are gone and it
// restores the newest complete checkpoint, whose params are exactly those
// the trainer saw after that step.
TEST(CheckpointCrash, ServerKilledMidSaveRestoresTheLastCompleteCheckpoint) {
  const fs::path dir = fs::temp_directory_path() / ("sherd-ckpt-kill-" + std::to_string(getpid()));
  fs::remove_all(dir);
  const ModelDef model{.name = "big", .tensors = {{"w", {1 << 22}, ""}}};  // 48 MiB of state
  std::map<int64_t, std::vector<float>> seen;  // params after each step
  {
    auto s = testing::ServerProcess::Start({"--checkpoint-dir", dir.string()});
    ASSERT_TRUE(s.ok()) << s.status();
    auto c = Client::Connect(s->address());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Register(model).ok());
    for (float& x : (*c)->Param("w")) x = 1.0f;
    ASSERT_TRUE((*c)->InitParams().ok());
    for (int step = 1; step <= 6; ++step) {
      for (float& g : (*c)->Grad("w")) g = 0.01f * step;
      ASSERT_TRUE((*c)->Step({.lr = 0.01f}).ok());
      auto p = (*c)->Param("w");
      seen[step].assign(p.begin(), p.begin() + 1024);
      if (step == 2) {  // one complete checkpoint (sherdctl waits for the commit)
        auto save = testing::RunProgram({SHERDCTL_BIN, "--server", s->address(), "checkpoint", "save"});
        ASSERT_EQ(save.code, 0) << save.out;
      } else if (step > 2) {
        (void)(*c)->Checkpoint();  // refused while the previous one is in flight
      }
    }
    s->process().Signal(SIGKILL);  // the last save is almost surely in flight
    ASSERT_TRUE(s->process().Wait(absl::Seconds(10)).ok());
  }
  auto s = testing::ServerProcess::Start({"--checkpoint-dir", dir.string()});
  ASSERT_TRUE(s.ok()) << s.status();
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().rfind(".tmp", 0), std::string::npos)
        << "leftover survived a restart: " << e.path();
  }
  auto c = Client::Connect(s->address());
  ASSERT_TRUE(c.ok());
  auto info = (*c)->Register(model);
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(info->initialized);
  const int64_t step = info->next_step - 1;
  EXPECT_GE(step, 2);
  ASSERT_TRUE(seen.count(step)) << step;
  auto p = (*c)->Param("w");
  EXPECT_EQ(std::vector<float>(p.begin(), p.begin() + 1024), seen[step]) << "step " << step;
  auto list = testing::RunProgram({SHERDCTL_BIN, "checkpoint", "list", "--dir", dir.string()});
  EXPECT_EQ(list.code, 0);
  EXPECT_EQ(list.out.find("DATA_LOSS"), std::string::npos) << list.out;
  EXPECT_EQ(*s->Stop(), 0);
  fs::remove_all(dir);
}

// A disk that fills during a save (here: a file-size limit on the server
// process) fails that save cleanly; training goes on and the previous
// checkpoint still verifies.
TEST(CheckpointCrash, FullDiskFailsTheSaveNotTraining) {
  if (access("/usr/bin/prlimit", X_OK) != 0) GTEST_SKIP() << "prlimit (util-linux) not installed";
  const fs::path dir = fs::temp_directory_path() / ("sherd-ckpt-full-" + std::to_string(getpid()));
  fs::remove_all(dir);
  const ModelDef small{.name = "s", .tensors = {{"w", {1000}, ""}}};
  {  // A first, small checkpoint fits.
    auto s = testing::ServerProcess::Start({"--checkpoint-dir", dir.string()}, "127.0.0.1:0",
                                           {"/usr/bin/prlimit", "--fsize=600000"});
    ASSERT_TRUE(s.ok()) << s.status();
    auto c = Client::Connect(s->address());
    ASSERT_TRUE((*c)->Register(small).ok());
    ASSERT_TRUE((*c)->InitParams().ok());
    ASSERT_TRUE((*c)->Step({.lr = 0.01f}).ok());
    auto save = testing::RunProgram({SHERDCTL_BIN, "--server", s->address(), "checkpoint", "save"});
    ASSERT_EQ(save.code, 0) << save.out;
    EXPECT_EQ(*s->Stop(), 0);
  }
  // A model whose buffers (4 B x 100k each) fit under the 600 kB limit but
  // whose shard (12 B x 100k) does not.
  const ModelDef big{.name = "b", .tensors = {{"w", {100000}, ""}}};
  auto s = testing::ServerProcess::Start({"--checkpoint-dir", dir.string(), "--restore", "none"},
                                         "127.0.0.1:0", {"/usr/bin/prlimit", "--fsize=600000"});
  ASSERT_TRUE(s.ok()) << s.status();
  auto c = Client::Connect(s->address());
  ASSERT_TRUE((*c)->Register(big).ok());
  ASSERT_TRUE((*c)->InitParams().ok());
  ASSERT_TRUE((*c)->Step({.lr = 0.01f}).ok());
  auto save = testing::RunProgram({SHERDCTL_BIN, "--server", s->address(), "checkpoint", "save"});
  EXPECT_EQ(save.code, 1) << save.out;  // the save failed, with a message
  ASSERT_TRUE((*c)->Step({.lr = 0.01f}).ok());  // training continues
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().rfind(".tmp", 0), std::string::npos) << e.path();
  }
  auto verify = testing::RunProgram(
      {SHERDCTL_BIN, "checkpoint", "verify", "--dir", dir.string(), "ckpt-000000000001"});
  EXPECT_EQ(verify.code, 0) << verify.out;
  EXPECT_EQ(*s->Stop(), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sherd
