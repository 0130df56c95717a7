// The Gloo backend through the conformance suite (1 to 4 ranks as threads),
// plus what only Gloo has: a rendezvous that can time out, and factory
// argument checks.
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/collective/gloo/factory.h"
#include "tests/collective/collective_conformance.h"

namespace sherd::collective_test {
namespace {

class GlooHelper : public CollectiveTestHelper {
 public:
  std::string name() const override { return "Gloo"; }
  std::vector<int> world_sizes() const override { return {1, 2, 3, 4}; }
  absl::StatusOr<std::unique_ptr<Collective>> Create(
      KvStore& store, const std::string& prefix, int rank, int world_size,
      absl::Duration timeout) override {
    GlooOptions options;
    options.timeout = timeout;
    options.prefix = prefix;
    return CreateGlooCollective(store, rank, world_size, options);
  }
};

GlooHelper helper;

INSTANTIATE_TEST_SUITE_P(Gloo, CollectiveConformance,
                         ::testing::ValuesIn(ConformanceCases(&helper)),
                         ConformanceCaseName);
INSTANTIATE_TEST_SUITE_P(Gloo, CollectiveFailureConformance,
                         ::testing::Values(&helper), FailureCaseName);

TEST(GlooFactory, RendezvousTimesOutWhenPeerNeverJoins) {
  InMemoryKvStore store;
  GlooOptions options;
  options.timeout = absl::Seconds(1);
  auto made = CreateGlooCollective(store, /*rank=*/0, /*world_size=*/2,
                                   options);
  EXPECT_EQ(made.status().code(), absl::StatusCode::kUnavailable)
      << made.status();
}

TEST(GlooFactory, RejectsBadArguments) {
  InMemoryKvStore store;
  GlooOptions options;
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(CreateGlooCollective(store, 0, 0, options).status().code(),
            kInvalid);
  EXPECT_EQ(CreateGlooCollective(store, 2, 2, options).status().code(),
            kInvalid);
  EXPECT_EQ(CreateGlooCollective(store, -1, 2, options).status().code(),
            kInvalid);
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(CreateGlooCollective(store, 0, 1, options).status().code(),
            kInvalid);
  options.timeout = absl::Seconds(1);
  options.reduce_scatter_cache_size = 0;
  EXPECT_EQ(CreateGlooCollective(store, 0, 1, options).status().code(),
            kInvalid);
}

TEST(GlooFactory, GroupsWithDifferentPrefixesShareOneStore) {
  // Two independent 2-rank groups rendezvous through the same store at the
  // same time; the prefix keeps their keys apart.
  InMemoryKvStore store;
  std::vector<std::unique_ptr<Collective>> made(4);
  std::vector<std::thread> threads;
  for (int g = 0; g < 2; ++g) {
    for (int r = 0; r < 2; ++r) {
      threads.emplace_back([&, g, r] {
        GlooOptions options;
        options.timeout = absl::Seconds(30);
        options.prefix = absl::StrCat("shared", g);
        auto c = CreateGlooCollective(store, r, 2, options);
        ASSERT_TRUE(c.ok()) << c.status();
        std::vector<double> v = {static_cast<double>(g * 10 + r)};
        ASSERT_TRUE((*c)->AllReduce(v).ok());
        EXPECT_EQ(v[0], g * 20 + 1);
        made[g * 2 + r] = *std::move(c);
      });
    }
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace
}  // namespace sherd::collective_test
