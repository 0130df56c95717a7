// The shared-memory backend (server/collective/local): on one host, and
// hierarchical over several simulated hosts (ranks as threads, "hosts" by
// LocalShmOptions::host_id, Gloo over loopback across them). Gradients are
// small integers, so every sum is exact whatever its order. Plus the
// conformance suite for what it passes through to Gloo.
#include <unistd.h>

#include <atomic>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/shm_region.h"
#include "gtest/gtest.h"
#include "server/collective/gloo/factory.h"
#include "server/collective/local/factory.h"
#include "tests/collective/collective_conformance.h"

namespace sherd::collective_test {
namespace {

// Rank `rank` of a `world`-rank group on host `host` (nullopt: this host's
// real /dev/shm id). Cross-host groups are Gloo over the same store.
std::unique_ptr<Collective> Make(std::shared_ptr<KvStore> store, const std::string& prefix,
                                 int rank, int world, const std::string& host,
                                 absl::Duration timeout) {
  GlooOptions gloo;
  gloo.timeout = timeout;
  gloo.prefix = prefix + "/gloo";
  auto inner = CreateGlooCollective(*store, rank, world, gloo);
  EXPECT_TRUE(inner.ok()) << inner.status();
  if (!inner.ok()) return nullptr;
  LocalShmOptions options;
  options.prefix = prefix + "/shm";
  options.lookup_timeout = timeout;
  options.host_id = host;
  options.make_group = [store, gloo](const std::string& p, int r, int w) {
    GlooOptions g = gloo;
    g.prefix = p;
    return CreateGlooCollective(*store, r, w, g);
  };
  return CreateLocalShmCollective(std::move(*inner), store, std::move(options));
}

// One rank's trainer-visible buffers, as the shard server makes them.
struct Buffers {
  ShmRegion grads, params;
  float* g() { return static_cast<float*>(grads.data()); }
  float* p() { return static_cast<float*>(params.data()); }
};

Buffers MakeBuffers(int rank, size_t bytes) {
  static std::atomic<int> n{0};
  const std::string base = absl::StrCat("/sherd-test-", getpid(), "-", n++, "-r", rank);
  Buffers b;
  auto g = ShmRegion::Create(base + ".grads", bytes);
  auto p = ShmRegion::Create(base + ".params", bytes);
  EXPECT_TRUE(g.ok() && p.ok()) << g.status() << p.status();
  if (g.ok()) b.grads = std::move(*g);
  if (p.ok()) b.params = std::move(*p);
  return b;
}

float G(int round, int rank, int64_t i) { return static_cast<float>((i * 7 + rank * 3 + round) % 23); }
float P(int round, int64_t i) { return static_cast<float>((i * 5 + round * 11) % 101) - 50; }

struct Layout {
  int world;
  std::function<std::string(int rank)> host;  // "" = the real host
};

// Runs `rounds` reduce-scatters and all-gathers on every rank and checks
// both; returns what rank 0's backend says about its path.
std::string RunRounds(const Layout& layout, int64_t chunk, int rounds) {
  static std::atomic<int> groups{0};
  const std::string prefix = absl::StrCat("t", groups++);
  auto store = std::make_shared<InMemoryKvStore>();
  const int w = layout.world;
  const size_t bytes = static_cast<size_t>(chunk) * w * sizeof(float) + 64;  // slack: padded
  std::vector<std::string> described(w);
  std::vector<std::thread> threads;
  for (int r = 0; r < w; ++r) {
    threads.emplace_back([&, r] {
      Buffers b = MakeBuffers(r, bytes);
      std::unique_ptr<Collective> c = Make(store, prefix, r, w, layout.host(r), absl::Seconds(30));
      if (c == nullptr) return;
      for (int round = 0; round < rounds; ++round) {
        c->AdviseSharedBuffer("grads", b.g(), b.grads.name(), bytes);
        c->AdviseSharedBuffer("params", b.p(), b.params.name(), bytes);
        for (int64_t i = 0; i < chunk * w; ++i) b.g()[i] = G(round, r, i);
        absl::Status s = c->ReduceScatter(b.g(), chunk);
        ASSERT_TRUE(s.ok()) << "rank " << r << ": " << s;
        for (int64_t i = r * chunk; i < (r + 1) * chunk; ++i) {
          float want = 0;
          for (int k = 0; k < w; ++k) want += G(round, k, i);
          ASSERT_EQ(b.g()[i], want) << "rank " << r << " round " << round << " element " << i;
        }
        for (int64_t i = r * chunk; i < (r + 1) * chunk; ++i) b.p()[i] = P(round, i);
        s = c->AllGather(b.p(), chunk);
        ASSERT_TRUE(s.ok()) << "rank " << r << ": " << s;
        for (int64_t i = 0; i < chunk * w; ++i) {
          ASSERT_EQ(b.p()[i], P(round, i)) << "rank " << r << " round " << round << " element " << i;
        }
      }
      described[r] = c->Describe();
      // Nobody unmaps (or unlinks) its buffers while a peer still reads them.
      EXPECT_TRUE(c->Barrier().ok());
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 1; r < w; ++r) EXPECT_EQ(described[r], described[0]) << "rank " << r;
  return described[0];
}

// 4099 elements per chunk: more than one summing block, and not a multiple.
constexpr int64_t kChunk = 4099;

TEST(LocalShmCollective, OneHostReadsEveryPeerDirectly) {
  EXPECT_EQ(RunRounds({4, [](int) { return "one"; }}, kChunk, 3),
            "shared memory (one host of 4 ranks)");
}

TEST(LocalShmCollective, TheRealHostIdIsShared) {
  // No override: every rank reads this host's id.
  EXPECT_EQ(RunRounds({2, [](int) { return ""; }}, 100, 2),
            "shared memory (one host of 2 ranks)");
}

TEST(LocalShmCollective, TwoHostsOfTwoAreHierarchical) {
  EXPECT_EQ(RunRounds({4, [](int r) { return r < 2 ? "A" : "B"; }}, kChunk, 3),
            "shared memory within 2 hosts of 2 ranks, gloo over TCP across");
}

TEST(LocalShmCollective, InterleavedHostsAreHierarchical) {
  // Host A holds ranks 0 and 2: local index and rank order differ.
  EXPECT_EQ(RunRounds({4, [](int r) { return r % 2 ? "B" : "A"; }}, kChunk, 3),
            "shared memory within 2 hosts of 2 ranks, gloo over TCP across");
}

TEST(LocalShmCollective, ThreeHostsOfTwoAndTwoHostsOfThree) {
  EXPECT_EQ(RunRounds({6, [](int r) { return absl::StrCat("h", r / 2); }}, 1001, 2),
            "shared memory within 3 hosts of 2 ranks, gloo over TCP across");
  EXPECT_EQ(RunRounds({6, [](int r) { return absl::StrCat("h", r / 3); }}, 1001, 2),
            "shared memory within 2 hosts of 3 ranks, gloo over TCP across");
}

TEST(LocalShmCollective, UnequalHostsAndOneRankPerHostUseGlooOnly) {
  EXPECT_EQ(RunRounds({4, [](int r) { return r < 3 ? "A" : "B"; }}, 1001, 2), "gloo over TCP");
  EXPECT_EQ(RunRounds({3, [](int r) { return absl::StrCat("h", r); }}, 1001, 2),
            "gloo over TCP");
}

TEST(LocalShmCollective, HostShmIdIsStable) {
  auto a = HostShmId();
  auto b = HostShmId();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->size(), 32u);
}

TEST(LocalShmCollective, ALostPeerFailsEveryRankInTimeThenFast) {
  // Two hosts of two; rank 3 stops after the first round. The others'
  // second reduce-scatter fails within the timeout, and every later call
  // fails at once.
  auto store = std::make_shared<InMemoryKvStore>();
  constexpr int64_t chunk = 512;
  const size_t bytes = chunk * 4 * sizeof(float);
  std::vector<absl::Status> second(4), after(4);
  std::vector<double> seconds(4);
  std::vector<std::thread> threads;
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      Buffers b = MakeBuffers(r, bytes);
      auto c = Make(store, "lost", r, 4, r < 2 ? "A" : "B", absl::Seconds(2));
      if (c == nullptr) return;
      c->AdviseSharedBuffer("grads", b.g(), b.grads.name(), bytes);
      ASSERT_TRUE(c->ReduceScatter(b.g(), chunk).ok());
      if (r == 3) {
        absl::SleepFor(absl::Seconds(5));  // keeps its buffers mapped
        return;
      }
      const absl::Time t0 = absl::Now();
      second[r] = c->ReduceScatter(b.g(), chunk);
      seconds[r] = absl::ToDoubleSeconds(absl::Now() - t0);
      const absl::Time t1 = absl::Now();
      after[r] = c->ReduceScatter(b.g(), chunk);
      EXPECT_LT(absl::Now() - t1, absl::Milliseconds(500)) << "rank " << r;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(second[r].code(), absl::StatusCode::kUnavailable) << "rank " << r << ": " << second[r];
    EXPECT_LT(seconds[r], 4.5) << "rank " << r;
    EXPECT_EQ(after[r].code(), absl::StatusCode::kUnavailable) << "rank " << r << ": " << after[r];
  }
}

// What it passes through (unadvised buffers, barriers, all-reduces) obeys
// the contract like Gloo itself.
class LocalShmHelper : public CollectiveTestHelper {
 public:
  std::string name() const override { return "LocalShm"; }
  std::vector<int> world_sizes() const override { return {2, 4}; }
  absl::StatusOr<std::unique_ptr<Collective>> Create(KvStore& store, const std::string& prefix,
                                                     int rank, int world_size,
                                                     absl::Duration timeout) override {
    std::shared_ptr<KvStore> shared(&store, [](KvStore*) {});
    std::unique_ptr<Collective> c = Make(shared, prefix, rank, world_size, "", timeout);
    if (c == nullptr) return absl::UnavailableError("cannot make the inner backend");
    return c;
  }
};

LocalShmHelper helper;

INSTANTIATE_TEST_SUITE_P(LocalShm, CollectiveConformance,
                         ::testing::ValuesIn(ConformanceCases(&helper)), ConformanceCaseName);
INSTANTIATE_TEST_SUITE_P(LocalShm, CollectiveFailureConformance, ::testing::Values(&helper),
                         FailureCaseName);

}  // namespace
}  // namespace sherd::collective_test
