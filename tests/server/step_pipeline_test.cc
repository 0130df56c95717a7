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
  std::string Describe() const override { return "scripted"; }
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
    (*m)->owned_params()[i] = (*m)->master()[i];  // as InitParams leaves them
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
  const int64_t slice = model->layout().slice_size();
  const std::vector<float> owned_p(model->owned_params(), model->owned_params() + slice);
  auto out = RunStep(*model, coll, opt, {.lr = 0.1f, .adam_step = 3});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(State(*model), before);
  // This rank's slice of P holds the old params again, not the new ones the
  // optimizer staged there for the all-gather (issue 13, defect 9).
  EXPECT_EQ(std::vector<float>(model->owned_params(), model->owned_params() + slice), owned_p);
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

// Finite gradients whose unscaled mean overflows float: torch's GradScaler
// unscales first and skips such a step; so must we (the master used to
// become NaN).
TEST(StepPipeline, GradientsThatOverflowAfterUnscalingSkipTheStep) {
  auto model = MakeModel(1, "overflow");
  const float g[4] = {3e38f, 1.0f, -1.0f, 0.5f};
  std::memcpy(model->grads(), g, sizeof(g));
  std::vector<float> before = State(*model);
  auto coll = CreateSingleRankCollective();
  AdamW opt(1);
  auto out = RunStep(*model, *coll, opt, {.lr = 0.1f, .grad_scale = 0.25f});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->applied);
  EXPECT_NE(out->skip_reason.find("overflow"), std::string::npos) << out->skip_reason;
  EXPECT_EQ(State(*model), before);
}

// A grad_scale whose reciprocal is inf would turn every value into NaN,
// even zero gradients: refused before touching state.
TEST(StepPipeline, RefusesAGradScaleWhoseReciprocalOverflows) {
  auto model = MakeModel(1, "tinyscale");
  std::vector<float> before = State(*model);
  auto coll = CreateSingleRankCollective();
  AdamW opt(1);
  auto out = RunStep(*model, *coll, opt, {.lr = 0.1f, .grad_scale = 1e-40f});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("reciprocal"), std::string::npos);
  EXPECT_EQ(State(*model), before);
}

// Per-step group hyperparameters (a torch LR scheduler's lr, a group's
// weight decay) replace the registered ones for that step: the result
// equals a step over a model registered with those values.
TEST(StepPipeline, GroupOverridesEqualRegisteredHyperparameters) {
  auto overridden = MakeModel(1, "ovr");
  auto reference = MakeModel(1, "ref");
  auto coll = CreateSingleRankCollective();
  AdamW opt(1);
  const AdamWHyper h{.lr = 0.03f, .beta1 = 0.8f, .beta2 = 0.95f, .eps = 1e-6f,
                     .weight_decay = 0.2f};
  StepArgs args{.lr = 0.1f, .adam_step = 2};
  args.group_overrides = {h};
  ASSERT_TRUE(RunStep(*overridden, *coll, opt, args).ok());
  AdamWBuffers buf{.grad = reference->owned_grads(), .param = reference->master(),
                   .exp_avg = reference->exp_avg(), .exp_avg_sq = reference->exp_avg_sq()};
  std::vector<AdamWSegment> segs = reference->Segments(0.1f);
  for (AdamWSegment& s : segs) s.hyper = h;
  opt.Apply(buf, segs, 2, 1.0f);
  EXPECT_EQ(State(*overridden), State(*reference));
  // And they differ from the registered values' step.
  auto plain = MakeModel(1, "plain");
  ASSERT_TRUE(RunStep(*plain, *coll, opt, {.lr = 0.1f, .adam_step = 2}).ok());
  EXPECT_NE(State(*plain), State(*overridden));
}

TEST(StepPipeline, RejectsOutOfRangeGroupOverrides) {
  auto model = MakeModel(1, "badovr");
  std::vector<float> before = State(*model);
  auto coll = CreateSingleRankCollective();
  AdamW opt(1);
  for (AdamWHyper h : {AdamWHyper{.lr = -1}, AdamWHyper{.beta1 = 1.0f},
                       AdamWHyper{.beta2 = -0.1f}, AdamWHyper{.eps = 0},
                       AdamWHyper{.weight_decay = -1}}) {
    StepArgs args{.lr = 0.1f};
    args.group_overrides = {h};
    EXPECT_EQ(RunStep(*model, *coll, opt, args).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(State(*model), before);
}

}  // namespace
}  // namespace sherd
