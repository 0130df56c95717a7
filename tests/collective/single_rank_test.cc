// The single-rank backend through the conformance suite, at world size 1.
#include "server/collective/single_rank.h"

#include "tests/collective/collective_conformance.h"

namespace sherd::collective_test {
namespace {

class SingleRankHelper : public CollectiveTestHelper {
 public:
  std::string name() const override { return "SingleRank"; }
  std::vector<int> world_sizes() const override { return {1}; }
  absl::StatusOr<std::unique_ptr<Collective>> Create(
      KvStore&, const std::string&, int, int, absl::Duration) override {
    return CreateSingleRankCollective();
  }
};

SingleRankHelper helper;

INSTANTIATE_TEST_SUITE_P(SingleRank, CollectiveConformance,
                         ::testing::ValuesIn(ConformanceCases(&helper)),
                         ConformanceCaseName);

}  // namespace
}  // namespace sherd::collective_test
