#include "server/rendezvous/cluster_defaults.h"

#include "gtest/gtest.h"

namespace sherd {
namespace {

ClusterDefaults Derive(const std::string& hostname,
                       const std::string& index = "") {
  absl::StatusOr<ClusterDefaults> d =
      DeriveClusterDefaults(ClusterEnv{hostname, index});
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : ClusterDefaults{};
}

TEST(ClusterDefaults, StatefulSetOrdinalFromHostname) {
  ClusterDefaults d = Derive("sherd-0");
  EXPECT_EQ(d.rank, 0);
  EXPECT_EQ(d.rank_source, "HOSTNAME");
  EXPECT_EQ(d.coordinator_host, "sherd-0");

  d = Derive("sherd-12");
  EXPECT_EQ(d.rank, 12);
  EXPECT_EQ(d.coordinator_host, "sherd-0");

  d = Derive("my-sts-name-3");
  EXPECT_EQ(d.rank, 3);
  EXPECT_EQ(d.coordinator_host, "my-sts-name-0");
}

TEST(ClusterDefaults, OnlyTheFirstDnsLabelCounts) {
  ClusterDefaults d = Derive("sherd-5.sherd.default.svc.cluster.local");
  EXPECT_EQ(d.rank, 5);
  EXPECT_EQ(d.coordinator_host, "sherd-0");
}

TEST(ClusterDefaults, NoOrdinalMeansNoDefault) {
  for (const char* host : {"", "laptop", "sherd-", "-3", "sherd-3a",
                           "sherd-99999999999999999999"}) {
    ClusterDefaults d = Derive(host);
    EXPECT_FALSE(d.rank.has_value()) << host;
    EXPECT_TRUE(d.rank_source.empty()) << host;
    EXPECT_TRUE(d.coordinator_host.empty()) << host;
  }
}

TEST(ClusterDefaults, JobCompletionIndexWins) {
  ClusterDefaults d = Derive("train-7", "2");
  EXPECT_EQ(d.rank, 2);
  EXPECT_EQ(d.rank_source, "JOB_COMPLETION_INDEX");
  EXPECT_EQ(d.coordinator_host, "train-0");

  d = Derive("laptop", "4");
  EXPECT_EQ(d.rank, 4);
  EXPECT_TRUE(d.coordinator_host.empty());
}

TEST(ClusterDefaults, MalformedJobCompletionIndexIsAnError) {
  for (const char* index : {"abc", "-1", "1.5", "99999999999999999999"}) {
    EXPECT_EQ(DeriveClusterDefaults(ClusterEnv{"sherd-1", index})
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument)
        << index;
  }
}

}  // namespace
}  // namespace sherd
