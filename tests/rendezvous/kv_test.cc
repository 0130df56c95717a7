// The rendezvous store of rank 0 through RemoteKvStore, over real gRPC
// servers on loopback.
#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rendezvous/peer_client.h"
#include "tests/rendezvous/rank_server.h"

namespace sherd::rendezvous_test {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kLong = absl::Seconds(20);  // never reached when OK

TEST(RemoteKv, SetOnOneRankGetOnAnother) {
  RankServer rank0(0, 2);
  RemoteKvStore from_rank0(rank0.address());
  RemoteKvStore from_rank1(rank0.address());
  const std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(from_rank0.Set("k", binary).ok());
  absl::StatusOr<std::string> got = from_rank1.Get("k", absl::Seconds(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, binary);
  // Set overwrites; rank 0 reads the same store locally.
  ASSERT_TRUE(from_rank1.Set("k", "second").ok());
  EXPECT_EQ(*rank0.table().Get("k", absl::ZeroDuration()), "second");
}

TEST(RemoteKv, GetBlocksUntilSet) {
  RankServer rank0(0, 2);
  RemoteKvStore getter(rank0.address());
  RemoteKvStore setter(rank0.address());
  absl::StatusOr<std::string> got;
  std::thread waiting([&] { got = getter.Get("late", kLong); });
  ASSERT_TRUE(rank0.table().AwaitBlockedGets(1, kLong));
  ASSERT_TRUE(setter.Set("late", "value").ok());
  waiting.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "value");
}

TEST(RemoteKv, GetTimesOutNamingTheKey) {
  RankServer rank0(0, 2);
  RemoteKvStore store(rank0.address());
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> got =
      store.Get("never", absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(got.status().message(), HasSubstr("never"));
  EXPECT_GE(took, absl::Milliseconds(290));
  // A zero timeout answers at once.
  EXPECT_EQ(store.Get("never", absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(RemoteKv, OtherRanksDoNotHostTheStore) {
  RankServer rank1(1, 2);
  RemoteKvStore store(rank1.address());
  absl::Status set = store.Set("k", "v");
  EXPECT_EQ(set.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(set.message(), HasSubstr("ask rank 0"));
  EXPECT_EQ(store.Get("k", absl::Seconds(1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(RemoteKv, UnreachableStoreIsUnavailableAfterBriefRetries) {
  const std::string nowhere =
      absl::StrCat("unix:/tmp/sherd_peer_test_", getpid(), "_nowhere.sock");
  RemoteKvOptions options;
  options.unavailable_retry = absl::Milliseconds(300);
  RemoteKvStore store(nowhere, options);
  const absl::Time start = absl::Now();
  absl::Status set = store.Set("k", "v");
  EXPECT_EQ(set.code(), absl::StatusCode::kUnavailable) << set;
  EXPECT_THAT(set.message(), HasSubstr(nowhere));
  EXPECT_EQ(store.Get("k", absl::Seconds(1)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(RemoteKv, CloseWakesABlockedGet) {
  RankServer rank0(0, 2);
  RemoteKvOptions options;
  options.unavailable_retry = absl::Milliseconds(100);
  RemoteKvStore store(rank0.address(), options);
  absl::StatusOr<std::string> got;
  std::thread waiting([&] { got = store.Get("k", kLong); });
  ASSERT_TRUE(rank0.table().AwaitBlockedGets(1, kLong));
  rank0.table().Close();
  waiting.join();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable)
      << got.status();
}

TEST(RemoteKv, DrainingServerRefusesCalls) {
  RankServer rank0(0, 2);
  rank0.inflight().Drain(absl::Now());
  RemoteKvOptions options;
  options.unavailable_retry = absl::Milliseconds(100);
  RemoteKvStore store(rank0.address(), options);
  absl::Status set = store.Set("k", "v");
  EXPECT_EQ(set.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(set.message(), HasSubstr("shutting down"));
}

TEST(RemoteKv, BadRequestsAreInvalid) {
  RankServer rank0(0, 2);
  RemoteKvStore store(rank0.address());
  EXPECT_EQ(store.Set("", "v").code(), absl::StatusCode::kInvalidArgument);
  grpc::ClientContext context;
  v1::KvGetRequest req;
  req.set_key("k");
  req.set_timeout_ms(-1);
  v1::KvGetResponse resp;
  EXPECT_EQ(rank0.Stub()->KvGet(&context, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(RemoteKv, CallWithoutDeadlineWaitsForTheRequestedTimeout) {
  RankServer rank0(0, 2);
  grpc::ClientContext context;  // no deadline: the server's wait is bounded
  v1::KvGetRequest req;         // by timeout_ms alone
  req.set_key("k");
  req.set_timeout_ms(50);
  v1::KvGetResponse resp;
  EXPECT_EQ(rank0.Stub()->KvGet(&context, req, &resp).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

}  // namespace
}  // namespace sherd::rendezvous_test
