// Server lifecycle: unix-socket listening, clean shutdown on SIGTERM and
// SIGINT with the shared memory unlinked, and flag errors.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>

#include <grpcpp/grpcpp.h>

#include "grpc/health/v1/health.grpc.pb.h"

#include "client/client.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::ServerProcess;

bool ShmExists(const std::string& prefix) {
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) return true;
  }
  return false;
}

void RegisterSmall(const std::string& address) {
  auto c = Client::Connect(address);
  ASSERT_TRUE(c.ok()) << c.status();
  ModelDef m{.name = "m", .tensors = {{"x", {100}, ""}}};
  ASSERT_TRUE((*c)->Register(m).ok());
  ASSERT_TRUE((*c)->shared_memory());
  ASSERT_TRUE((*c)->InitParams().ok());
  ASSERT_TRUE((*c)->Step({.lr = 0.1f}).ok());
}

class SignalTest : public ::testing::TestWithParam<int> {};

TEST_P(SignalTest, ShutsDownCleanlyAndUnlinksSharedMemory) {
  const std::string prefix = "sherd-test." + std::to_string(getpid()) + "." +
                             std::to_string(GetParam());
  auto s = ServerProcess::Start({"--shm-prefix", "/" + prefix});
  ASSERT_TRUE(s.ok()) << s.status();
  RegisterSmall(s->address());
  EXPECT_TRUE(ShmExists(prefix));
  s->process().Signal(GetParam());
  auto code = s->process().Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  EXPECT_FALSE(ShmExists(prefix));
}

INSTANTIATE_TEST_SUITE_P(Signals, SignalTest, ::testing::Values(SIGTERM, SIGINT));

// A chosen --shm-prefix is never swept: a name in use is refused, saying
// what to do.
TEST(Lifecycle, ATakenShmPrefixIsRefusedWithWhatToDo) {
  const std::string prefix = "/sherd-test." + std::to_string(getpid()) + ".taken";
  auto first = ServerProcess::Start({"--shm-prefix", prefix});
  ASSERT_TRUE(first.ok()) << first.status();
  RegisterSmall(first->address());
  auto second = ServerProcess::Start({"--shm-prefix", prefix});
  ASSERT_TRUE(second.ok()) << second.status();
  auto c = Client::Connect(second->address());
  ASSERT_TRUE(c.ok()) << c.status();
  auto r = (*c)->Register(ModelDef{.name = "m", .tensors = {{"x", {100}, ""}}, .groups = {}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists) << r.status();
  EXPECT_NE(r.status().message().find("--shm-prefix " + prefix), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("remove /dev/shm" + prefix + ".params"), std::string::npos)
      << r.status();
  EXPECT_EQ(second->Stop().value_or(-1), 0);
  EXPECT_EQ(first->Stop().value_or(-1), 0);
}

// A SIGKILLed server cannot unlink its P and G; the next server to start on
// the host removes them (and would free the name for a restarted container
// that gets the same pid).
TEST(Lifecycle, NextServerRemovesTheSegmentsOfAKilledOne) {
  auto killed = ServerProcess::Start();
  ASSERT_TRUE(killed.ok()) << killed.status();
  RegisterSmall(killed->address());
  const std::string prefix = "sherd." + std::to_string(killed->process().pid()) + ".r0.";
  EXPECT_TRUE(ShmExists(prefix));
  killed->process().Signal(SIGKILL);
  auto code = killed->process().Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 128 + SIGKILL);
  // Left behind now (not asserted: a server another test starts meanwhile
  // may already have swept them).

  auto next = ServerProcess::Start();
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_FALSE(ShmExists(prefix));
  EXPECT_EQ(next->Stop().value_or(-1), 0);
}

TEST(Lifecycle, ServesOnAUnixSocket) {
  std::string path = "/tmp/sherd-test-" + std::to_string(getpid()) + ".sock";
  auto s = ServerProcess::Start({}, "unix:" + path);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->address(), "unix:" + path);
  RegisterSmall(s->address());
  auto r = testing::RunProgram({SHERDCTL_BIN, "--server", s->address(), "status"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("model m"), std::string::npos);
  EXPECT_EQ(*s->Stop(), 0);
}

TEST(Lifecycle, StandardHealthServiceAnswers) {
  auto s = ServerProcess::Start();
  ASSERT_TRUE(s.ok()) << s.status();
  auto channel = grpc::CreateChannel(s->address(), grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(*s->Stop(), 0);
}

TEST(Lifecycle, BadFlagsExitWithUsageError) {
  auto r = testing::RunProgram({SHERD_SERVER_BIN, "--rank", "3", "--world-size", "2"});
  EXPECT_EQ(r.code, 2);
  r = testing::RunProgram({SHERD_SERVER_BIN, "--memory-limit", "12 parsecs"});
  EXPECT_EQ(r.code, 2);
  r = testing::RunProgram({SHERD_SERVER_BIN, "--no-such-flag"});
  EXPECT_EQ(r.code, 2);
  r = testing::RunProgram({SHERD_SERVER_BIN, "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--memory-limit"), std::string::npos);
}

// Options that depend on each other are checked at start (issue 13,
// defect 7): before, these were ignored and training started fresh, or
// failed at the first Register.
TEST(Lifecycle, DependentOptionsAreCheckedAtStart) {
  auto r = testing::RunProgram({SHERD_SERVER_BIN, "--restore", "ckpt-000000000004"});
  EXPECT_EQ(r.code, 2);
  r = testing::RunProgram({SHERD_SERVER_BIN, "--checkpoint-every", "5"});
  EXPECT_EQ(r.code, 2);
  r = testing::RunProgram({SHERD_SERVER_BIN, "--checkpoint-dir", "/tmp", "--restore", "latest"});
  EXPECT_EQ(r.code, 2);
  r = testing::RunProgram(
      {SHERD_SERVER_BIN, "--checkpoint-dir", "/tmp", "--restore", "ckpt-1/../../etc"});
  EXPECT_EQ(r.code, 2);
}

TEST(Lifecycle, ConfigFileAndEnvironment) {
  std::string cfg = "/tmp/sherd-test-" + std::to_string(getpid()) + ".toml";
  { FILE* f = fopen(cfg.c_str(), "w"); fputs("memory-limit = \"1KiB\"\n", f); fclose(f); }
  auto s = ServerProcess::Start({"--config", cfg});
  ASSERT_TRUE(s.ok()) << s.status();
  auto c = Client::Connect(s->address());
  ModelDef m{.name = "m", .tensors = {{"x", {1000}, ""}}};
  auto reg = (*c)->Register(m);
  EXPECT_EQ(reg.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(*s->Stop(), 0);
  std::remove(cfg.c_str());
}

}  // namespace
}  // namespace sherd
