// Cluster formation over real gRPC servers on loopback, ranks as threads.
#include <unistd.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rendezvous/peer_client.h"
#include "tests/rendezvous/rank_server.h"

namespace sherd::rendezvous_test {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kLong = absl::Seconds(20);  // never reached when OK

class JoinAllRanks : public ::testing::TestWithParam<int> {};

TEST_P(JoinAllRanks, EveryRankGetsTheSameTable) {
  const int world = GetParam();
  std::vector<std::unique_ptr<RankServer>> servers;
  PeerList expected;
  for (int r = 0; r < world; ++r) {
    servers.push_back(std::make_unique<RankServer>(r, world));
    ASSERT_TRUE(servers.back()->ok());
    expected.push_back({r, servers.back()->address()});
  }
  std::vector<absl::StatusOr<PeerList>> got(world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      got[r] = FormCluster(servers[r]->table(), servers[0]->address(),
                           servers[r]->address(), kLong);
    });
  }
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < world; ++r) {
    ASSERT_TRUE(got[r].ok()) << "rank " << r << ": " << got[r].status();
    EXPECT_EQ(*got[r], expected) << "rank " << r;
  }
  // sherdctl's view: any rank answers GetPeers with the whole table.
  for (int r = 0; r < world; ++r) {
    grpc::ClientContext context;
    v1::GetPeersResponse resp;
    ASSERT_TRUE(servers[r]->Stub()->GetPeers(&context, {}, &resp).ok());
    EXPECT_TRUE(resp.complete());
    EXPECT_EQ(resp.world_size(), world);
    EXPECT_EQ(resp.rank(), r);
    ASSERT_EQ(resp.peers_size(), world);
    for (int p = 0; p < world; ++p) {
      EXPECT_EQ(resp.peers(p).rank(), p);
      EXPECT_EQ(resp.peers(p).address(), expected[p].address);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, JoinAllRanks, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) {
                           return absl::StrCat("W", info.param);
                         });

TEST(Join, WaitsForACoordinatorThatStartsLater) {
  // A unix socket nobody listens on yet: unlike a TCP port, no one else can
  // take it between now and the coordinator's start.
  const std::string coordinator =
      absl::StrCat("unix:/tmp/sherd_peer_test_", getpid(), "_late.sock");
  absl::Notification retrying;
  JoinOptions options;
  options.on_retry = [&](int attempt, const absl::Status& error) {
    EXPECT_EQ(error.code(), absl::StatusCode::kUnavailable) << error;
    if (!retrying.HasBeenNotified()) retrying.Notify();
  };
  absl::StatusOr<PeerList> joined;
  std::thread rank1([&] {
    joined = JoinCluster(coordinator, 1, 2, "rank1:7070", kLong, options);
  });
  ASSERT_TRUE(retrying.WaitForNotificationWithTimeout(kLong));

  std::unique_ptr<RankServer> rank0;
  absl::StatusOr<PeerList> formed;
  std::thread starter([&] {
    rank0 = std::make_unique<RankServer>(0, 2, coordinator);
    formed = FormCluster(rank0->table(), coordinator, coordinator, kLong);
  });
  starter.join();
  rank1.join();
  ASSERT_TRUE(joined.ok()) << joined.status();
  ASSERT_TRUE(formed.ok()) << formed.status();
  const PeerList expected = {{0, coordinator}, {1, "rank1:7070"}};
  EXPECT_EQ(*joined, expected);
  EXPECT_EQ(*formed, expected);
  rank0.reset();
  unlink(coordinator.substr(5).c_str());
}

TEST(Join, MismatchedWorldSizeIsRefusedAtOnce) {
  RankServer rank0(0, 2);
  const absl::Time start = absl::Now();
  absl::StatusOr<PeerList> r =
      JoinCluster(rank0.address(), 1, 3, "rank1:7070", kLong);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("world size 3"));
  EXPECT_THAT(r.status().message(), HasSubstr("world size 2"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(Join, MismatchedClusterIdIsRefused) {
  RankServer rank0(0, 2, "127.0.0.1:0", "job-a");
  JoinOptions options;
  options.cluster_id = "job-b";
  absl::StatusOr<PeerList> r =
      JoinCluster(rank0.address(), 1, 2, "rank1:7070", kLong, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("job-a"));
  EXPECT_THAT(r.status().message(), HasSubstr("job-b"));
}

TEST(Join, RankOutOfRangeIsInvalid) {
  RankServer rank0(0, 2);
  EXPECT_EQ(JoinCluster(rank0.address(), 2, 2, "x:1", kLong).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The server checks too, for clients that do not.
  grpc::ClientContext context;
  v1::JoinRequest req;
  req.set_rank(-1);
  req.set_world_size(2);
  req.set_address("x:1");
  v1::JoinResponse resp;
  EXPECT_EQ(rank0.Stub()->Join(&context, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

// A restarted rank 0 (empty table): the survivors join it again, saying
// which epoch they were at, and the new table starts past all of them and
// announces it, so every rank rewinds. A fresh formation stays at epoch 0.
TEST(Join, RanksRejoiningARestartedRankZeroPutTheTablePastTheirEpochs) {
  RankServer rank0(0, 3);
  std::vector<int64_t> epochs(3, -1);
  std::vector<std::thread> joiners;
  for (int r : {1, 2}) {
    joiners.emplace_back([&, r] {
      JoinOptions o{.rejoining = true, .epoch = r == 1 ? 4 : 2};
      auto p = JoinCluster(rank0.address(), r, 3, absl::StrCat("s:", r), kLong, o, &epochs[r]);
      EXPECT_TRUE(p.ok()) << p.status();
    });
  }
  ASSERT_TRUE(FormCluster(rank0.table(), "", "z:0", kLong).ok());
  for (std::thread& t : joiners) t.join();
  EXPECT_EQ(epochs[1], 5);
  EXPECT_EQ(epochs[2], 5);
  EXPECT_EQ(rank0.table().GetSnapshot().epoch, 5);
  auto announced = rank0.table().Get(EpochKey(5), absl::ZeroDuration());
  ASSERT_TRUE(announced.ok()) << announced.status();
  EXPECT_EQ(*announced, "0 z:0");

  RankServer fresh(0, 2);
  int64_t epoch = -1;
  std::thread joiner([&] {
    EXPECT_TRUE(JoinCluster(fresh.address(), 1, 2, "s:1", kLong, {}, &epoch).ok());
  });
  ASSERT_TRUE(FormCluster(fresh.table(), "", "z:0", kLong).ok());
  joiner.join();
  EXPECT_EQ(epoch, 0);
}

TEST(Join, RankHeldByAnotherAddressIsRefusedAndSameAddressMayRejoin) {
  RankServer rank0(0, 3);
  // Two joins for rank 1 from the same address (a retry whose first call is
  // still waiting on the server) are both answered.
  std::vector<absl::StatusOr<PeerList>> first(2);
  std::vector<std::thread> joiners;
  for (int i = 0; i < 2; ++i) {
    joiners.emplace_back([&, i] {
      first[i] = JoinCluster(rank0.address(), 1, 3, "a:1", kLong);
    });
  }
  ASSERT_TRUE(rank0.table().AwaitJoined(1, kLong));
  absl::StatusOr<PeerList> taken =
      JoinCluster(rank0.address(), 1, 3, "b:2", kLong);
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(taken.status().message(), HasSubstr("rank 1"));
  EXPECT_THAT(taken.status().message(), HasSubstr("a:1"));

  std::thread rank2([&] {
    EXPECT_TRUE(JoinCluster(rank0.address(), 2, 3, "c:3", kLong).ok());
  });
  ASSERT_TRUE(FormCluster(rank0.table(), "", "z:0", kLong).ok());
  rank2.join();
  for (std::thread& t : joiners) t.join();
  const PeerList expected = {{0, "z:0"}, {1, "a:1"}, {2, "c:3"}};
  for (const auto& r : first) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, expected);
  }
  // After completion: the same address gets the table at once; another
  // address may not take the rank while the old one still answers as it.
  absl::StatusOr<PeerList> again = JoinCluster(rank0.address(), 1, 3, "a:1",
                                               absl::Seconds(5));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, expected);
  std::vector<std::string> probed;
  rank0.table().SetLivenessProbe([&](const std::string& address, int rank) {
    probed.push_back(absl::StrCat(address, "#", rank));
    return true;
  });
  EXPECT_EQ(JoinCluster(rank0.address(), 1, 3, "b:2", kLong).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(probed, std::vector<std::string>{"a:1#1"});
  EXPECT_EQ(rank0.table().GetSnapshot().epoch, 0);
}

// Issue 13, defect 8: once the cluster is complete, a restarted server
// (another incarnation, at a new address or the same one) replaces its
// rank when the old one no longer answers. Each replacement raises the
// membership epoch and announces it in the store; a repeated join of the
// same incarnation changes nothing.
TEST(Join, ARestartedRankReplacesTheLostOneAndRaisesTheEpoch) {
  RankServer rank0(0, 2);
  std::thread rank1([&] {
    EXPECT_TRUE(JoinCluster(rank0.address(), 1, 2, "a:1", kLong, {.incarnation = "one"}).ok());
  });
  ASSERT_TRUE(FormCluster(rank0.table(), "", "z:0", kLong).ok());
  rank1.join();
  rank0.table().SetLivenessProbe([](const std::string&, int) { return false; });
  int64_t epoch = -1;
  // The same incarnation again (a retried join): nothing changes.
  ASSERT_TRUE(JoinCluster(rank0.address(), 1, 2, "a:1", kLong, {.incarnation = "one"}, &epoch).ok());
  EXPECT_EQ(epoch, 0);
  // A new process at a new address: it takes the rank.
  auto moved = JoinCluster(rank0.address(), 1, 2, "b:2", kLong, {.incarnation = "two"}, &epoch);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, (PeerList{{0, "z:0"}, {1, "b:2"}}));
  EXPECT_EQ(epoch, 1);
  EXPECT_EQ(*rank0.table().Get(EpochKey(1), absl::ZeroDuration()), "1 b:2");
  // A new process at the same address: it takes the rank too.
  ASSERT_TRUE(JoinCluster(rank0.address(), 1, 2, "b:2", kLong, {.incarnation = "three"}, &epoch).ok());
  EXPECT_EQ(epoch, 2);
  EXPECT_EQ(rank0.table().GetSnapshot().epoch, 2);
}

TEST(Join, MissingRankTimesOutNamingIt) {
  RankServer rank0(0, 3);
  absl::StatusOr<PeerList> local;
  std::thread coordinator([&] {
    local = FormCluster(rank0.table(), "", rank0.address(), absl::Seconds(2));
  });
  ASSERT_TRUE(rank0.table().AwaitJoined(1, kLong));
  const absl::Time start = absl::Now();
  absl::StatusOr<PeerList> remote =
      JoinCluster(rank0.address(), 1, 3, "rank1:7070", absl::Seconds(1));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  coordinator.join();
  EXPECT_EQ(remote.status().code(), absl::StatusCode::kUnavailable)
      << remote.status();
  EXPECT_THAT(remote.status().message(), HasSubstr("missing ranks 2"));
  // Rank 1 gave up first, so by rank 0's deadline it is missing too.
  EXPECT_EQ(local.status().code(), absl::StatusCode::kUnavailable)
      << local.status();
  EXPECT_THAT(local.status().message(), HasSubstr("missing ranks 1, 2"));
  // Ranks that gave up are forgotten: a restart may use a new address.
  EXPECT_TRUE(rank0.table().GetSnapshot().peers.empty());
}

TEST(Join, NonCoordinatorRanksRefuseJoinsAndServeTheirTable) {
  RankServer rank1(1, 2);
  absl::StatusOr<PeerList> r =
      JoinCluster(rank1.address(), 1, 2, "x:1", kLong);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("ask rank 0"));

  PeerTable::Snapshot before = rank1.table().GetSnapshot();
  EXPECT_FALSE(before.complete);
  EXPECT_TRUE(before.peers.empty());
  const PeerList table = {{0, "a:1"}, {1, "b:2"}};
  ASSERT_TRUE(rank1.table().Adopt(table).ok());
  EXPECT_TRUE(rank1.table().GetSnapshot().complete);
  EXPECT_EQ(rank1.table().GetSnapshot().peers, table);
  EXPECT_EQ(rank1.table().Adopt({{1, "b:2"}, {0, "a:1"}}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Join, CloseWakesABlockedJoin) {
  RankServer rank0(0, 2);
  absl::StatusOr<PeerList> r;
  std::thread rank1(
      [&] { r = JoinCluster(rank0.address(), 1, 2, "x:1", absl::Seconds(2)); });
  ASSERT_TRUE(rank0.table().AwaitJoined(1, kLong));
  rank0.table().Close();
  rank1.join();
  // The joiner retries a closing coordinator (it may restart) until its
  // deadline, then reports it unavailable.
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("shutting down"));
}

}  // namespace
}  // namespace sherd::rendezvous_test
