// With one rank every collective is the identity: the sum over one rank is
// the rank's own data, and gathering one chunk leaves it where it is. The
// arguments are still checked so that code tested on one rank does not start
// failing only when it meets a real backend.
#include "server/collective/single_rank.h"

#include "server/collective/argument_checks.h"

namespace sherd {
namespace {

class SingleRankCollective final : public Collective {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string Describe() const override { return "single rank (no collectives)"; }

  absl::Status ReduceScatter(float* buf, int64_t chunk) override {
    return internal::CheckChunkArgs("ReduceScatter", buf, chunk, 1);
  }
  absl::Status AllGather(float* buf, int64_t chunk) override {
    return internal::CheckChunkArgs("AllGather", buf, chunk, 1);
  }
  absl::Status AllReduce(std::span<double> values) override {
    return internal::CheckValues("AllReduce", values);
  }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace

std::unique_ptr<Collective> CreateSingleRankCollective() {
  return std::make_unique<SingleRankCollective>();
}

}  // namespace sherd
