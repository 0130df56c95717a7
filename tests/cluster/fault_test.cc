// Faults with real processes: a shard server killed mid-training, a trainer
// killed and restarted. Nothing here sleeps to wait: tests wait on lines a
// process prints, on calls returning, or on exit.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "sherd/v1/admin.grpc.pb.h"
#include "tests/testing/inspect.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::ClusterProcess;
using testing::Process;

ModelDef Model() { return ModelDef{.name = "f", .tensors = {{"w", {1000}, ""}}}; }

std::vector<float> Master(const std::string& address) {
  return testing::MasterValues(address, "w");
}

TEST(Faults, LostPeerFailsTheStepOnSurvivorsWithoutHangingOrHalfApplying) {
  const int kWorld = 3;
  auto cluster = ClusterProcess::Start(kWorld, {"--collective-timeout", "2"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<std::unique_ptr<Client>> clients(kWorld);
  auto run_all = [&](auto fn) {
    std::vector<std::thread> ts;
    for (int r = 0; r < kWorld; ++r) ts.emplace_back([&, r] { fn(r); });
    for (auto& t : ts) t.join();
  };
  run_all([&](int r) {
    ClientOptions o;
    o.max_retries = 1;
    auto c = Client::Connect(cluster->address(r), o);
    ASSERT_TRUE(c.ok());
    clients[r] = std::move(*c);
    ASSERT_TRUE(clients[r]->Register(Model()).ok());
    for (float& x : clients[r]->Param("w")) x = 1.0f;
    ASSERT_TRUE(clients[r]->InitParams().ok());
    for (int s = 0; s < 2; ++s) {
      for (float& g : clients[r]->Grad("w")) g = 0.1f * (r + 1);
      // On a loaded machine one trainer may reach its first step more than
      // the 2 s collective timeout after another: every rank then refuses
      // that step (DEADLINE_EXCEEDED, nothing applied) and may retry it.
      absl::StatusOr<StepResult> step = clients[r]->Step({.lr = 0.01f});
      for (int retry = 0; retry < 5 && absl::IsDeadlineExceeded(step.status()); ++retry) {
        step = clients[r]->Step({.lr = 0.01f});
      }
      ASSERT_TRUE(step.ok()) << step.status();
    }
  });
  ASSERT_FALSE(HasFailure());
  std::vector<float> before0 = Master(cluster->address(0));
  std::vector<float> before1 = Master(cluster->address(1));

  // Rank 2's server dies; the survivors' trainers step on.
  cluster->servers()[2].process().Signal(SIGKILL);
  ASSERT_TRUE(cluster->servers()[2].process().Wait(absl::Seconds(10)).ok());
  std::vector<absl::Status> results(2);
  std::vector<std::thread> ts;
  for (int r = 0; r < 2; ++r) {
    ts.emplace_back([&, r] { results[r] = clients[r]->Step({.lr = 0.01f}).status(); });
  }
  for (auto& t : ts) t.join();
  // The survivors' step agreement waits for rank 2 up to the collective
  // timeout, then both refuse the step, naming it; no collective started.
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(results[r].code(), absl::StatusCode::kDeadlineExceeded) << r << ": " << results[r];
    EXPECT_NE(results[r].message().find("rank 2 did not take part in step 3"),
              std::string::npos) << results[r];
  }
  // Nothing applied on the survivors.
  EXPECT_EQ(Master(cluster->address(0)), before0);
  EXPECT_EQ(Master(cluster->address(1)), before1);

  // sherdctl from a survivor: the survivors still serve (their collectives
  // were never entered), rank 2 is unreachable.
  auto st = testing::RunProgram({SHERDCTL_BIN, "--server", cluster->address(0),
                                 "--timeout", "2", "status"});
  EXPECT_EQ(st.code, 0);
  EXPECT_EQ(st.out.find("NOT_SERVING"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("UNREACHABLE"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("1 of 3 ranks not serving"), std::string::npos) << st.out;
  // The survivors still stop cleanly.
  for (int r = 0; r < 2; ++r) {
    auto code = cluster->servers()[r].Stop();
    ASSERT_TRUE(code.ok());
    EXPECT_EQ(*code, 0);
  }
}

// Runs train_mlp on every rank of a fresh W=2 cluster; if kill_at > 0, the
// rank-1 trainer is SIGKILLed once it has printed step kill_at, and started
// again. Returns each rank's params fingerprint line.
std::vector<std::string> TrainMlp(int kill_at) {
  std::vector<std::string> prints;
  auto cluster = ClusterProcess::Start(2, {"--collective-timeout", "60"});
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  if (!cluster.ok()) return prints;
  auto trainer = [&](int r) {
    return Process::Start({TRAIN_MLP_BIN, "--server", cluster->address(r), "--steps", "30",
                           "--hidden", "64", "--batch", "32", "--log-every", "1"},
                          {"OPENBLAS_NUM_THREADS=1"});
  };
  std::vector<Process> trainers;
  for (int r = 0; r < 2; ++r) trainers.push_back(std::move(*trainer(r)));
  if (kill_at > 0) {
    auto line = trainers[1].WaitForLine("rank 1 step   " + std::to_string(kill_at),
                                        absl::Seconds(60));
    EXPECT_TRUE(line.ok()) << line.status();
    trainers[1].Signal(SIGKILL);
    EXPECT_TRUE(trainers[1].Wait(absl::Seconds(10)).ok());
    trainers[1] = std::move(*trainer(1));
    auto again = trainers[1].WaitForLine("re-attached", absl::Seconds(60));
    EXPECT_TRUE(again.ok()) << again.status();
  }
  for (int r = 0; r < 2; ++r) {
    auto fp = trainers[r].WaitForLine("params fnv1a64", absl::Seconds(120));
    EXPECT_TRUE(fp.ok()) << fp.status();
    prints.push_back(fp.ok() ? *fp : "");
    auto code = trainers[r].Wait(absl::Seconds(30));
    EXPECT_TRUE(code.ok());
    EXPECT_EQ(*code, 0) << trainers[r].output();
  }
  EXPECT_TRUE(cluster->Stop());
  return prints;
}

TEST(Faults, TrainerKilledAndRestartedContinuesIdentically) {
  std::vector<std::string> uninterrupted = TrainMlp(0);
  std::vector<std::string> restarted = TrainMlp(12);
  ASSERT_EQ(uninterrupted.size(), 2u);
  ASSERT_EQ(restarted.size(), 2u);
  EXPECT_EQ(uninterrupted, restarted);
  EXPECT_NE(uninterrupted[0], "");
  // Both ranks hold the same params.
  EXPECT_EQ(uninterrupted[0].substr(6), uninterrupted[1].substr(6));
}

}  // namespace
}  // namespace sherd

namespace sherd {
namespace {

// A Step sent while the cluster is still forming is UNAVAILABLE; the client
// retries it with the same step id until the last rank has joined.
TEST(Faults, StepRetriesWhileTheClusterForms) {
  auto rank0 = testing::ServerProcess::Start({"--rank", "0", "--world-size", "2"});
  ASSERT_TRUE(rank0.ok()) << rank0.status();
  ClientOptions o;
  o.max_retries = 100;
  o.retry_backoff = absl::Milliseconds(20);
  o.max_retry_backoff = absl::Milliseconds(200);
  auto c0 = Client::Connect(rank0->address(), o);
  ASSERT_TRUE(c0.ok());
  ASSERT_TRUE((*c0)->Register(Model()).ok());
  ASSERT_TRUE((*c0)->InitParams().ok());
  auto pending = (*c0)->StepAsync({.lr = 0.01f});
  // Rank 0's step fails UNAVAILABLE until rank 1 joins; only then start it.
  auto rank1 = testing::ServerProcess::Start(
      {"--rank", "1", "--world-size", "2", "--coordinator", rank0->address()});
  ASSERT_TRUE(rank1.ok()) << rank1.status();
  auto c1 = Client::Connect(rank1->address(), o);
  ASSERT_TRUE(c1.ok());
  ASSERT_TRUE((*c1)->Register(Model()).ok());
  ASSERT_TRUE((*c1)->InitParams().ok());
  auto r1 = (*c1)->Step({.lr = 0.01f});
  auto r0 = pending.get();
  ASSERT_TRUE(r0.ok()) << r0.status();
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r0->step, 1);
  EXPECT_TRUE(r0->applied);
  EXPECT_GT(r0->retries, 0);
  EXPECT_EQ(*rank1->Stop(), 0);
  EXPECT_EQ(*rank0->Stop(), 0);
}

}  // namespace
}  // namespace sherd

namespace sherd {
namespace {

// An exception on a thread the server does not own (Gloo's I/O loop throws
// when a peer's message fails its checks) ends the process; the server says
// so and removes its shared memory instead of leaving it behind (issue 13,
// defect 1). The test-only failpoint throws on such a thread.
TEST(Faults, AnExceptionOnALibraryThreadAbortsAndLeavesNoSharedMemory) {
  auto server = testing::ServerProcess::Start(
      {}, "127.0.0.1:0", {"/usr/bin/env", "SHERD_FAILPOINTS=library-thread-throws@0"});
  ASSERT_TRUE(server.ok()) << server.status();
  const pid_t pid = server->process().pid();
  auto c = Client::Connect(server->address());
  ASSERT_TRUE(c.ok()) << c.status();
  (void)(*c)->Register(Model());  // may or may not answer before the abort
  auto code = server->process().Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 128 + SIGABRT);
  // The env wrapper execs the server: its pid is the server's.
  const std::string mine = absl::StrCat("sherd.", pid, ".");
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    EXPECT_NE(e.path().filename().string().rfind(mine, 0), 0u) << e.path() << " was left behind";
  }
}

}  // namespace
}  // namespace sherd
