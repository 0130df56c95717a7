// The chaos run of issue 13: W = 4 shard servers and 4 trainers train 1,000
// steps while servers are SIGKILLed at random and restarted (at a new
// port), and trainers drop their connection at random and come back. Every
// recovery rewinds the whole cluster to its newest complete checkpoint, so
// the final params must equal those of a run without failures (the
// gradients depend on the step id only: replaying a step after a rewind
// applies exactly what the first try applied), the applied-step count must
// be exactly 1,000 (no step applied twice, none lost), and no rewind may go
// back past a checkpoint that had committed before the failure.
//
// Rank 0 is killed too; it restarts at its own address (the others'
// --coordinator), the rest at a new port. What it does not do: SIGKILL
// trainer processes (trainers are threads here; one "dies" by dropping its
// client between steps).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <random>
#include <signal.h>
#include <thread>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/testing/process.h"
#include "tests/testing/trainers.h"

namespace sherd {
namespace {

namespace fs = std::filesystem;
using testing::ClusterProcess;

constexpr int kWorld = 4;
constexpr int kSteps = 1000;
constexpr absl::Duration kBudget = absl::Minutes(6);  // the test's time bound

ModelDef Model() {
  return ModelDef{.name = "chaos",
                  .tensors = {{"w", {64, 48}, ""}, {"b", {48}, "nd"}, {"v", {517}, ""}},
                  .groups = {{.name = "nd", .weight_decay = 0.0f}}};
}

float Grad(int64_t step, size_t i) { return std::sin(0.05 * i + 0.3 * step) * 0.25f; }

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

struct Shared {
  std::mutex mu;
  std::vector<std::string> address;            // per rank; changes on restart
  std::vector<std::atomic<int64_t>> done = std::vector<std::atomic<int64_t>>(kWorld);
  std::vector<std::atomic<bool>> drop = std::vector<std::atomic<bool>>(kWorld);
  std::atomic<bool> stop{false};
  // Rewinds the trainers saw (a Register answering a step below the one
  // they were at), and the newest committed checkpoint when the failure
  // that caused it happened.
  std::atomic<int64_t> committed_at_failure{0};
  std::atomic<int> rewinds{0};
  std::atomic<int> lost_commits{0};
  std::atomic<int> reconnects{0};
  std::atomic<int64_t> replayed_steps{0};
  std::string address_of(int r) {
    std::lock_guard<std::mutex> l(mu);
    return address[r];
  }
};

// One trainer: steps until kStep, re-registering after any failure to
// learn the step the cluster continues from.
void Trainer(int rank, Shared& sh, std::vector<float>* final_params) {
  std::unique_ptr<Client> c;
  int64_t next = 1;  // the step this trainer will send
  while (!sh.stop && next <= kSteps) {
    if (sh.drop[rank].exchange(false)) {
      c.reset();  // the trainer "dies" and comes back
      ++sh.reconnects;
    }
    if (c == nullptr) {
      auto made = Client::Connect(sh.address_of(rank));
      if (!made.ok()) {
        absl::SleepFor(absl::Milliseconds(100));
        continue;
      }
      auto info = (*made)->Register(Model());
      if (!info.ok()) {
        absl::SleepFor(absl::Milliseconds(100));
        continue;
      }
      c = std::move(*made);
      if (!info->initialized) {
        size_t k = 0;
        for (const auto& t : Model().tensors)
          for (float& x : c->Param(t.name)) x = std::cos(0.1 * k++);
        if (!c->InitParams().ok()) {
          c.reset();
          continue;
        }
      }
      if (info->next_step < next) {
        ++sh.rewinds;
        sh.replayed_steps += next - info->next_step;
        if (info->next_step - 1 < sh.committed_at_failure) ++sh.lost_commits;
      }
      next = info->next_step;
    }
    size_t k = 0;
    for (const auto& t : Model().tensors)
      for (float& g : c->Grad(t.name)) g = Grad(next, k++);
    auto r = c->Step({.lr = 0.01f});
    if (!r.ok()) {
      c.reset();  // re-register: the cluster may have rewound
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    sh.done[rank] = next;
    ++next;
  }
  if (rank == 0 && c != nullptr) *final_params = testing::FlatParams(*c, Model());
}

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
      ASSERT_TRUE((*c)->Register(Model()).ok());
      size_t k = 0;
      for (const auto& t : Model().tensors)
        for (float& x : (*c)->Param(t.name)) x = std::cos(0.1 * k++);
      ASSERT_TRUE((*c)->InitParams().ok());
      for (int64_t s = 1; s <= kSteps; ++s) {
        size_t i = 0;
        for (const auto& t : Model().tensors)
          for (float& g : (*c)->Grad(t.name)) g = Grad(s, i++);
        auto st = (*c)->Step({.lr = 0.01f});
        ASSERT_TRUE(st.ok()) << st.status();
      }
      if (r == 0) out = testing::FlatParams(**c, Model());
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
  Shared sh;
  for (int r = 0; r < kWorld; ++r) sh.address.push_back(cluster->address(r));
  std::vector<float> final_params;
  std::vector<std::thread> trainers;
  for (int r = 0; r < kWorld; ++r) {
    trainers.emplace_back([&, r] { Trainer(r, sh, &final_params); });
  }
  // The chaos runs on this thread: the servers it starts die with the
  // thread that started them.
  std::mt19937 rng(20261207);
  int server_kills = 0, trainer_drops = 0;
  std::vector<int> victims(kWorld, 0);
  const absl::Time start = absl::Now();
  auto min_done = [&] {
    int64_t m = kSteps;
    for (int r = 0; r < kWorld; ++r) m = std::min<int64_t>(m, sh.done[r]);
    return m;
  };
  while (min_done() < kSteps && absl::Now() - start < kBudget) {
    absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(300, 1500)(rng)));
    if (min_done() >= kSteps - 50) continue;  // let the last steps finish
    const int what = std::uniform_int_distribution<int>(0, 2)(rng);
    if (what == 0) {
      sh.drop[std::uniform_int_distribution<int>(0, kWorld - 1)(rng)] = true;
      ++trainer_drops;
      continue;
    }
    // SIGKILL a server and restart it: rank 0 at its address, the others
    // at a new port.
    const int victim = std::uniform_int_distribution<int>(0, kWorld - 1)(rng);
    sh.committed_at_failure = NewestCommitted(dir);
    cluster->servers()[victim].process().Signal(SIGKILL);
    ASSERT_TRUE(cluster->servers()[victim].process().Wait(absl::Seconds(10)).ok());
    ++server_kills;
    std::vector<std::string> f = flags;
    f.insert(f.end(), {"--rank", std::to_string(victim), "--world-size", std::to_string(kWorld)});
    if (victim > 0) f.insert(f.end(), {"--coordinator", cluster->address(0)});
    auto restarted = victim == 0 ? testing::ServerProcess::Start(f, cluster->address(0))
                                 : testing::ServerProcess::Start(f);
    victims[victim]++;
    ASSERT_TRUE(restarted.ok()) << restarted.status();
    {
      std::lock_guard<std::mutex> l(sh.mu);
      sh.address[victim] = restarted->address();
    }
    cluster->servers()[victim] = std::move(*restarted);
    // Let training get going again before the next failure.
    const int64_t at = min_done();
    for (const absl::Time until = absl::Now() + absl::Seconds(60);
         min_done() <= at + 5 && min_done() < kSteps && absl::Now() < until;) {
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  const bool finished = min_done() >= kSteps;
  sh.stop = !finished;
  for (auto& t : trainers) t.join();
  std::printf("chaos: %d steps on %d ranks in %.1f s: %d server kills, %d trainer drops, "
              "%d trainer reconnects, %d rewinds seen by trainers (%lld steps replayed), "
              "%d rewinds past a committed checkpoint\n",
              kSteps, kWorld, absl::ToDoubleSeconds(absl::Now() - start), server_kills,
              trainer_drops, sh.reconnects.load(), sh.rewinds.load(),
              static_cast<long long>(sh.replayed_steps.load()), sh.lost_commits.load());
  ASSERT_TRUE(finished) << "training did not reach step " << kSteps << " within "
                        << absl::FormatDuration(kBudget) << " (min step " << min_done() << ")";
  std::printf("server kills by rank:");
  for (int r = 0; r < kWorld; ++r) std::printf(" %d", victims[r]);
  std::printf("\n");
  EXPECT_GT(server_kills, 0);
  EXPECT_EQ(sh.lost_commits, 0) << "a rewind went back past a committed checkpoint";
  // Every rank applied exactly kSteps steps on the final timeline.
  for (int r = 0; r < kWorld; ++r) {
    auto c = Client::Connect(cluster->address(r));
    ASSERT_TRUE(c.ok());
    auto info = (*c)->Register(Model());
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->next_step, kSteps + 1) << "rank " << r;
    EXPECT_EQ(info->adam_step, kSteps) << "rank " << r << ": steps applied twice or lost";
  }
  EXPECT_EQ(final_params, reference) << "the final params differ from the run without failures";
  EXPECT_TRUE(cluster->Stop());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sherd
