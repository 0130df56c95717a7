// The stale-segment sweep: which names it removes (dead creator, or this
// process before it made any) and which it never touches.
#include "server/state/shm_names.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace sherd {
namespace {

namespace fs = std::filesystem;

// A pid that belonged to a process which has exited and been reaped.
pid_t DeadPid() {
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  return pid;
}

class StaleSegmentsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sherd-shm-test-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Make(const std::string& name, size_t bytes) {
    std::ofstream(dir_ / name) << std::string(bytes, 'x');
  }
  bool Has(const std::string& name) { return fs::exists(dir_ / name); }
  fs::path dir_;
};

TEST_F(StaleSegmentsTest, RemovesSegmentsOfDeadServersAndOfThisPid) {
  const std::string dead = std::to_string(DeadPid());
  const std::string self = std::to_string(getpid());
  const std::string alive = std::to_string(getppid());
  Make("sherd." + dead + ".r0.0.params", 4096);
  Make("sherd." + dead + ".r0.0.grads", 4096);
  Make("sherd." + self + ".r3.12.grads", 100);       // a restarted container's pid
  Make("sherd." + alive + ".r1.0.params", 64);       // a live server's
  Make("sherd." + dead + ".r0.0.params.bak", 8);     // not ours
  Make("sherd." + dead + ".rx.0.params", 8);         // not the scheme
  Make("sherd-devtest." + dead + ".params", 8);      // a custom --shm-prefix
  Make("sherd.notapid.r0.0.grads", 8);
  Make("other", 8);

  StaleSegments s = RemoveStaleSegments(dir_.string(), getpid());
  EXPECT_EQ(s.removed, 3);
  EXPECT_EQ(s.bytes, 4096 + 4096 + 100);
  EXPECT_FALSE(Has("sherd." + dead + ".r0.0.params"));
  EXPECT_FALSE(Has("sherd." + dead + ".r0.0.grads"));
  EXPECT_FALSE(Has("sherd." + self + ".r3.12.grads"));
  EXPECT_TRUE(Has("sherd." + alive + ".r1.0.params"));
  EXPECT_TRUE(Has("sherd." + dead + ".r0.0.params.bak"));
  EXPECT_TRUE(Has("sherd." + dead + ".rx.0.params"));
  EXPECT_TRUE(Has("sherd-devtest." + dead + ".params"));
  EXPECT_TRUE(Has("sherd.notapid.r0.0.grads"));
  EXPECT_TRUE(Has("other"));
}

TEST_F(StaleSegmentsTest, WithoutSelfOnlyDeadCreatorsCount) {
  const std::string self = std::to_string(getpid());
  Make("sherd." + self + ".r0.0.params", 8);
  EXPECT_EQ(RemoveStaleSegments(dir_.string()).removed, 0);
  EXPECT_TRUE(Has("sherd." + self + ".r0.0.params"));
}

TEST_F(StaleSegmentsTest, AMissingDirectoryIsNothingToDo) {
  StaleSegments s = RemoveStaleSegments((dir_ / "absent").string(), getpid());
  EXPECT_EQ(s.removed, 0);
  EXPECT_EQ(s.bytes, 0);
}

TEST(DefaultShmPrefix, NamesThisProcessRankAndACounter) {
  const std::string a = DefaultShmPrefix(2);
  const std::string b = DefaultShmPrefix(2);
  const std::string head = "/sherd." + std::to_string(getpid()) + ".r2.";
  EXPECT_EQ(a.rfind(head, 0), 0u) << a;
  EXPECT_EQ(b.rfind(head, 0), 0u) << b;
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace sherd
