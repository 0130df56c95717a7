// The chaos run of issue 13: W = 4 shard servers and 4 trainer processes
// train 1,000 steps while servers and trainers are SIGKILLed at random and
// restarted (rank 0 at its address, the other servers at a new port).
// Every server loss rewinds the whole cluster to its newest complete
// checkpoint, so the final params must equal those of a run without
// failures (the gradients depend on the step id only: replaying a step
// after a rewind applies exactly what the first try applied), the
// applied-step count must be exactly 1,000 (no step applied twice, none
// lost), and no rewind may go back past a checkpoint that had committed
// before the failure. The trainers are chaos_trainer processes; the test
// talks to them through files (chaos_trainer.cc says which).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/cluster/chaos_model.h"
#include "tests/testing/process.h"
#include "tests/testing/trainers.h"

namespace sherd {
namespace {

namespace fs = std::filesystem;
using testing::ClusterProcess;

using chaos::kSteps;
using chaos::kWorld;
constexpr absl::Duration kBudget = absl::Minutes(6);  // the test's time bound

// Newest committed checkpoint step in `dir` (0: none).
int64_t NewestCommitted(const fs::path& dir) {
  int64_t newest = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("ckpt-", 0) != 0 || !fs::exists(e.path() / "MANIFEST")) continue;
    newest = std::max<int64_t>(newest, std::stoll(n.substr(5)));
  }
  return newest;
}

// The files through which the test and its trainer processes talk.
class Control {
 public:
  explicit Control(fs::path dir) : dir_(std::move(dir)) {
    fs::create_directories(dir_);
    Write("committed", "0");
    for (int r = 0; r < kWorld; ++r) {
      const std::string path = (dir_ / absl::StrCat("done.", r)).string();
      const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
      EXPECT_GE(fd, 0) << path;
      EXPECT_EQ(ftruncate(fd, sizeof(int64_t)), 0);
      void* m = mmap(nullptr, sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      EXPECT_NE(m, MAP_FAILED);
      close(fd);
      done_.push_back(static_cast<std::atomic<int64_t>*>(m));
    }
  }
  ~Control() {
    for (auto* d : done_) munmap(d, sizeof(int64_t));
  }
  // Atomically (a rename): a trainer never reads half a file.
  void Write(const std::string& name, const std::string& value) {
    const fs::path tmp = dir_ / (name + ".tmp");
    std::ofstream(tmp) << value << "\n";
    fs::rename(tmp, dir_ / name);
  }
  void SetAddress(int r, const std::string& a) { Write(absl::StrCat("address.", r), a); }
  int64_t Done(int r) const { return done_[r]->load(); }
  int64_t MinDone() const {
    int64_t m = kSteps;
    for (int r = 0; r < kWorld; ++r) m = std::min(m, Done(r));
    return m;
  }
  struct Counts {
    int rewinds = 0, past_commit = 0;
    int64_t replayed = 0;
  };
  Counts Events() const {
    Counts c;
    for (int r = 0; r < kWorld; ++r) {
      std::ifstream f(dir_ / absl::StrCat("events.", r));
      std::string word;
      int64_t from, to, past;
      while (f >> word >> from >> to >> past) {
        ++c.rewinds;
        c.replayed += from - to;
        c.past_commit += past;
      }
    }
    return c;
  }
  absl::StatusOr<testing::Process> StartTrainer(int r) {
    return testing::Process::Start({CHAOS_TRAINER_BIN, dir_.string(), std::to_string(r)});
  }

 private:
  fs::path dir_;
  std::vector<std::atomic<int64_t>*> done_;
};

std::vector<float> Reference() {
  auto cluster = ClusterProcess::Start(kWorld, {});
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  if (!cluster.ok()) return {};
  std::vector<std::unique_ptr<Client>> cs(kWorld);
  std::vector<std::thread> ts;
  std::vector<float> out;
  for (int r = 0; r < kWorld; ++r) {
    ts.emplace_back([&, r] {
      auto c = Client::Connect(cluster->address(r));
      ASSERT_TRUE(c.ok());
      ASSERT_TRUE((*c)->Register(chaos::Model()).ok());
      chaos::InitialParams(**c);
      ASSERT_TRUE((*c)->InitParams().ok());
      for (int64_t s = 1; s <= kSteps; ++s) {
        chaos::Grads(**c, s);
        auto st = (*c)->Step({.lr = 0.01f});
        ASSERT_TRUE(st.ok()) << st.status();
      }
      if (r == 0) out = testing::FlatParams(**c, chaos::Model());
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_TRUE(cluster->Stop());
  return out;
}

TEST(Chaos, KillsAndRestartsNeverApplyAStepTwiceNorLoseACommittedOne) {
  const absl::Time t0 = absl::Now();
  const std::vector<float> reference = Reference();
  ASSERT_FALSE(reference.empty());
  std::printf("reference run (%d steps, W=%d): %.1f s\n", kSteps, kWorld,
              absl::ToDoubleSeconds(absl::Now() - t0));

  const fs::path dir = fs::temp_directory_path() / ("sherd-chaos-" + std::to_string(getpid()));
  fs::remove_all(dir);
  const std::vector<std::string> flags = {"--checkpoint-dir", dir.string(),
                                          "--checkpoint-every", "25",
                                          "--checkpoint-keep", "3",
                                          "--collective-timeout", "3"};
  auto cluster = ClusterProcess::Start(kWorld, flags);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Control ctl(dir / "ctl");
  std::vector<testing::Process> trainers;
  for (int r = 0; r < kWorld; ++r) {
    ctl.SetAddress(r, cluster->address(r));
    auto t = ctl.StartTrainer(r);
    ASSERT_TRUE(t.ok()) << t.status();
    trainers.push_back(std::move(*t));
  }
  // The chaos runs on this thread: the processes it starts die with the
  // thread that started them.
  std::mt19937 rng(20261207);
  int server_kills = 0, trainer_kills = 0;
  std::vector<int> victims(kWorld, 0);
  const absl::Time start = absl::Now();
  // Let training get going again before the next failure.
  auto let_it_run = [&] {
    const int64_t at = ctl.MinDone();
    for (const absl::Time until = absl::Now() + absl::Seconds(60);
         ctl.MinDone() <= at + 5 && ctl.MinDone() < kSteps && absl::Now() < until;) {
      absl::SleepFor(absl::Milliseconds(50));
    }
  };
  while (ctl.MinDone() < kSteps && absl::Now() - start < kBudget) {
    absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(300, 1500)(rng)));
    if (ctl.MinDone() >= kSteps - 50) continue;  // let the last steps finish
    const int what = std::uniform_int_distribution<int>(0, 2)(rng);
    if (what == 0) {
      // SIGKILL a trainer process (often inside a Step call) and restart it.
      const int victim = std::uniform_int_distribution<int>(0, kWorld - 1)(rng);
      trainers[victim].Signal(SIGKILL);
      ASSERT_TRUE(trainers[victim].Wait(absl::Seconds(10)).ok());
      ++trainer_kills;
      auto t = ctl.StartTrainer(victim);
      ASSERT_TRUE(t.ok()) << t.status();
      trainers[victim] = std::move(*t);
      let_it_run();
      continue;
    }
    // SIGKILL a server and restart it: rank 0 at its address, the others
    // at a new port.
    const int victim = std::uniform_int_distribution<int>(0, kWorld - 1)(rng);
    ctl.Write("committed", std::to_string(NewestCommitted(dir)));
    cluster->servers()[victim].process().Signal(SIGKILL);
    ASSERT_TRUE(cluster->servers()[victim].process().Wait(absl::Seconds(10)).ok());
    ++server_kills;
    ++victims[victim];
    std::vector<std::string> f = flags;
    f.insert(f.end(), {"--rank", std::to_string(victim), "--world-size", std::to_string(kWorld)});
    if (victim > 0) f.insert(f.end(), {"--coordinator", cluster->address(0)});
    auto restarted = victim == 0 ? testing::ServerProcess::Start(f, cluster->address(0))
                                 : testing::ServerProcess::Start(f);
    ASSERT_TRUE(restarted.ok()) << restarted.status();
    ctl.SetAddress(victim, restarted->address());
    cluster->servers()[victim] = std::move(*restarted);
    let_it_run();
  }
  const bool finished = ctl.MinDone() >= kSteps;
  const double chaos_s = absl::ToDoubleSeconds(absl::Now() - start);
  for (int r = 0; r < kWorld; ++r) {
    if (!finished) trainers[r].Signal(SIGKILL);
    auto code = trainers[r].Wait(absl::Seconds(60));
    if (finished) {
      EXPECT_TRUE(code.ok() && *code == 0) << "trainer " << r << " did not finish";
    }
  }
  const Control::Counts events = ctl.Events();
  std::printf("chaos: %d steps on %d ranks in %.1f s: %d server kills (by rank:", kSteps, kWorld,
              chaos_s, server_kills);
  for (int r = 0; r < kWorld; ++r) std::printf(" %d", victims[r]);
  std::printf("), %d trainer kills, %d rewinds seen by trainers (%lld steps replayed), "
              "%d rewinds past a committed checkpoint\n",
              trainer_kills, events.rewinds, static_cast<long long>(events.replayed),
              events.past_commit);
  ASSERT_TRUE(finished) << "training did not reach step " << kSteps << " within "
                        << absl::FormatDuration(kBudget) << " (min step " << ctl.MinDone() << ")";
  EXPECT_GT(server_kills, 0);
  EXPECT_EQ(events.past_commit, 0) << "a rewind went back past a committed checkpoint";
  // Every rank applied exactly kSteps steps on the final timeline.
  std::vector<float> final_params;
  for (int r = 0; r < kWorld; ++r) {
    auto c = Client::Connect(cluster->address(r));
    ASSERT_TRUE(c.ok());
    auto info = (*c)->Register(chaos::Model());
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->next_step, kSteps + 1) << "rank " << r;
    EXPECT_EQ(info->adam_step, kSteps) << "rank " << r << ": steps applied twice or lost";
    if (r == 0) final_params = testing::FlatParams(**c, chaos::Model());
  }
  EXPECT_EQ(final_params, reference) << "the final params differ from the run without failures";
  EXPECT_TRUE(cluster->Stop());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sherd
