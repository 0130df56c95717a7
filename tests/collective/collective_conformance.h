// Backend-neutral conformance suite for sherd::Collective (the contract in
// server/collective/collective.h). Ranks run as threads of this process over
// one InMemoryKvStore, so no cluster is needed.
//
// A backend joins the suite by implementing CollectiveTestHelper and
// instantiating the fixtures, e.g.
//
//   MyHelper helper;
//   INSTANTIATE_TEST_SUITE_P(Mine, CollectiveConformance,
//                            ::testing::ValuesIn(ConformanceCases(&helper)),
//                            ConformanceCaseName);
//   INSTANTIATE_TEST_SUITE_P(Mine, CollectiveFailureConformance,
//                            ::testing::Values(&helper),
//                            FailureCaseName);   // multi-rank backends only
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/collective/collective.h"
#include "server/rendezvous/kv_store.h"

namespace sherd::collective_test {

class CollectiveTestHelper {
 public:
  virtual ~CollectiveTestHelper() = default;

  // Short name for test names, e.g. "Gloo".
  virtual std::string name() const = 0;
  // The group sizes the suite runs at.
  virtual std::vector<int> world_sizes() const = 0;
  // Creates rank `rank` of a `world_size` group. Called on one thread per
  // rank, all at once, with one store and one key prefix per group.
  virtual absl::StatusOr<std::unique_ptr<Collective>> Create(
      KvStore& store, const std::string& prefix, int rank, int world_size,
      absl::Duration timeout) = 0;
};

struct ConformanceCase {
  CollectiveTestHelper* helper;
  int world_size;
};

// One case per world size the helper supports.
std::vector<ConformanceCase> ConformanceCases(CollectiveTestHelper* helper);
std::string ConformanceCaseName(
    const ::testing::TestParamInfo<ConformanceCase>& info);
std::string FailureCaseName(
    const ::testing::TestParamInfo<CollectiveTestHelper*>& info);

// Short parameter descriptions for test listings (ctest shows them).
void PrintTo(const ConformanceCase& c, std::ostream* os);
void PrintTo(CollectiveTestHelper* helper, std::ostream* os);

using Group = std::vector<std::unique_ptr<Collective>>;

// Builds every rank concurrently; fails the test (and returns an empty
// group) if any rank cannot be created.
Group MakeGroup(CollectiveTestHelper& helper, KvStore& store, int world_size,
                absl::Duration timeout);

// Correctness of every operation on a healthy group of world_size ranks.
class CollectiveConformance
    : public ::testing::TestWithParam<ConformanceCase> {
 protected:
  void SetUp() override;

  InMemoryKvStore store_;
  Group group_;
};

// Timeouts and fail-fast behaviour: a two-rank group where one rank never
// joins the collective. Only meaningful for backends with real peers.
class CollectiveFailureConformance
    : public ::testing::TestWithParam<CollectiveTestHelper*> {
 protected:
  static constexpr absl::Duration kTimeout = absl::Seconds(1);
};

}  // namespace sherd::collective_test
