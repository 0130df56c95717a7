// The step pipeline against a scripted collective: a multi-rank step whose
// all-gather fails must leave the state exactly as it was, and one that
// succeeds must equal the in-place single-rank update.
#include "server/step/step_pipeline.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "server/collective/single_rank.h"

namespace sherd {
namespace {

// Pretends to be rank 0 of 2 whose peer contributes zeros: reduce-scatter
// and all-gather leave the buffer as is; all-gather fails when told to.
class ScriptedCollective : public Collective {
 public:
  bool fail_all_gather = false;
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  absl::Status ReduceScatter(float*, int64_t) override { return absl::OkStatus(); }
  absl::Status AllGather(float*, int64_t) override {
    if (fail_all_gather) return absl::UnavailableError("peer lost");
    return absl::OkStatus();
  }
  absl::Status AllReduce(std::span<double>) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

std::unique_ptr<ModelState> MakeModel(int world, const std::string& tag) {
  ModelSpec spec{.name = "m", .tensors = {{"w", {1000}, DType::kFloat32, 0}},
                 .groups = {ParamGroupConfig{.name = "default"}}};
  auto layout = Layout::Build(spec.tensors, world);
  auto m = ModelState::Create(spec, *layout, 0,
                              "/sherd-steptest." + std::to_string(getpid()) + "." + tag);
  EXPECT_TRUE(m.ok()) << m.status();
  const int64_t slice = (*m)->layout().slice_size();
  for (int64_t i = 0; i < (*m)->layout().total(); ++i) {
    (*m)->grads()[i] = 0.01f * static_cast<float>(i % 37) - 0.2f;
  }
  for (int64_t i = 0; i < slice; ++i) {
    (*m)->master()[i] = std::sin(static_cast<float>(i));
    (*m)->exp_avg()[i] = 0.001f * i;
    (*m)->exp_avg_sq()[i] = 1e-6f * i;
  }
  return std::move(*m);
}

std::vector<float> State(const ModelState& m) {
  const int64_t n = m.layout().slice_size();
  std::vector<float> s(m.master(), m.master() + n);
  s.insert(s.end(), m.exp_avg(), m.exp_avg() + n);
  s.insert(s.end(), m.exp_avg_sq(), m.exp_avg_sq() + n);
  return s;
}

TEST(StepPipeline, FailedAllGatherLeavesTheStateUntouched) {
  auto model = MakeModel(2, "fail");
  std::vector<float> before = State(*model);
  ScriptedCollective coll;
  coll.fail_all_gather = true;
  AdamW opt(2);
  auto out = RunStep(*model, coll, opt, {.lr = 0.1f, .adam_step = 3});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(State(*model), before);
}

TEST(StepPipeline, StagedStepEqualsInPlaceStep) {
  auto staged = MakeModel(2, "staged");
  auto in_place = MakeModel(2, "inplace");
  ScriptedCollective coll;
  AdamW opt(2);
  auto a = RunStep(*staged, coll, opt, {.lr = 0.1f, .adam_step = 3});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->applied);
  // The same update in place: grads of the owned slice, mean over 2 ranks.
  const int64_t slice = in_place->layout().slice_size();
  AdamWBuffers buf{.grad = in_place->owned_grads(), .param = in_place->master(),
                   .exp_avg = in_place->exp_avg(), .exp_avg_sq = in_place->exp_avg_sq()};
  std::vector<AdamWSegment> segs = in_place->Segments(0.1f);
  opt.Apply(buf, segs, 3, 0.5f);
  EXPECT_EQ(State(*staged), State(*in_place));
  // The owned slice of P carries the new params for the all-gather.
  EXPECT_EQ(0, std::memcmp(staged->owned_params(), staged->master(), slice * sizeof(float)));
}

TEST(StepPipeline, RejectsBadArgumentsBeforeTouchingState) {
  auto model = MakeModel(1, "bad");
  std::vector<float> before = State(*model);
  auto coll = CreateSingleRankCollective();
  AdamW opt(1);
  EXPECT_EQ(RunStep(*model, *coll, opt, {.lr = -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunStep(*model, *coll, opt, {.lr = 0.1f, .grad_scale = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(State(*model), before);
}

}  // namespace
}  // namespace sherd
