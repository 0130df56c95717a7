// A real 2-rank Gloo rendezvous through the peer service: the cluster forms,
// then the ranks exchange Gloo's connection details via rank 0's store and
// run one all-reduce.
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/collective/gloo/factory.h"
#include "server/rendezvous/peer_client.h"
#include "tests/rendezvous/rank_server.h"

namespace sherd::rendezvous_test {
namespace {

// Rank 0 may use its table directly or go through gRPC like everyone else;
// both must work.
class GlooOverPeer : public ::testing::TestWithParam<bool> {};

TEST_P(GlooOverPeer, TwoRanksRendezvousAndAllReduce) {
  const bool rank0_remote = GetParam();
  constexpr int kWorld = 2;
  std::vector<std::unique_ptr<RankServer>> servers;
  for (int r = 0; r < kWorld; ++r) {
    servers.push_back(std::make_unique<RankServer>(r, kWorld));
    ASSERT_TRUE(servers.back()->ok());
  }
  const std::string coordinator = servers[0]->address();
  std::vector<double> sums(kWorld, -1);
  std::vector<std::thread> ranks;
  for (int r = 0; r < kWorld; ++r) {
    ranks.emplace_back([&, r] {
      absl::StatusOr<PeerList> peers =
          FormCluster(servers[r]->table(), coordinator,
                      servers[r]->address(), absl::Seconds(20));
      ASSERT_TRUE(peers.ok()) << peers.status();
      RemoteKvStore remote(coordinator);
      KvStore& store =
          (r == 0 && !rank0_remote) ? static_cast<KvStore&>(servers[0]->table())
                                    : remote;
      GlooOptions options;
      options.timeout = absl::Seconds(20);
      options.prefix = "peer-test";
      absl::StatusOr<std::unique_ptr<Collective>> gloo =
          CreateGlooCollective(store, r, kWorld, options);
      ASSERT_TRUE(gloo.ok()) << gloo.status();
      std::vector<double> v = {static_cast<double>(r + 1)};
      ASSERT_TRUE((*gloo)->AllReduce(v).ok());
      sums[r] = v[0];
    });
  }
  for (std::thread& t : ranks) t.join();
  EXPECT_EQ(sums, std::vector<double>(kWorld, 3.0));
}

INSTANTIATE_TEST_SUITE_P(Rank0, GlooOverPeer, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "Remote" : "Local";
                         });

}  // namespace
}  // namespace sherd::rendezvous_test
