// Step agreement with real servers (issue 13, defects 1, 3 and 6): ranks
// that disagree on the model, the step or its hyperparameters refuse the
// step on every rank, naming the first difference; their state is untouched
// and the cluster keeps serving. A step sent to one rank only times out on
// that rank without breaking the cluster.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <thread>

#include "client/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sherd/v1/admin.grpc.pb.h"
#include "sherd/v1/trainer.grpc.pb.h"
#include "tests/testing/inspect.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::ClusterProcess;

ModelDef Model(std::vector<int64_t> shape, float weight_decay = 0.01f) {
  return ModelDef{.name = "a",
                  .tensors = {{"w", std::move(shape), ""}},
                  .groups = {{.name = "default", .weight_decay = weight_decay}}};
}

std::string Health(const std::string& address) {
  auto stub = v1::Admin::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::StatusRequest req;
  v1::StatusResponse resp;
  if (!stub->Status(&ctx, req, &resp).ok()) return "UNREACHABLE";
  return resp.health();
}

class Agreement : public ::testing::Test {
 protected:
  static constexpr int kWorld = 2;

  void SetUp() override {
    auto c = ClusterProcess::Start(kWorld, {"--collective-timeout", "2"});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::make_unique<ClusterProcess>(std::move(*c));
    for (int r = 0; r < kWorld; ++r) {
      ClientOptions o;
      o.max_retries = 50;  // the cluster may still be forming
      o.retry_backoff = absl::Milliseconds(20);
      auto client = Client::Connect(cluster_->address(r), o);
      ASSERT_TRUE(client.ok()) << client.status();
      clients_.push_back(std::move(*client));
    }
  }
  void TearDown() override {
    if (cluster_) EXPECT_TRUE(cluster_->Stop());
  }

  void RegisterAndInit(const std::vector<ModelDef>& models) {
    for (int r = 0; r < kWorld; ++r) {
      ASSERT_TRUE(clients_[r]->Register(models[r]).ok());
      for (float& x : clients_[r]->params()) x = 1.0f;
      ASSERT_TRUE(clients_[r]->InitParams().ok());
      for (float& g : clients_[r]->grads()) g = 0.5f;
    }
  }

  // Steps every rank concurrently with its own options.
  std::vector<absl::StatusOr<StepResult>> StepAll(const std::vector<StepOptions>& opts) {
    std::vector<absl::StatusOr<StepResult>> out(kWorld, absl::UnknownError("not run"));
    std::vector<std::thread> ts;
    for (int r = 0; r < kWorld; ++r) {
      ts.emplace_back([&, r] { out[r] = clients_[r]->Step(opts[r]); });
    }
    for (auto& t : ts) t.join();
    return out;
  }

  std::vector<float> Master(int r) { return testing::MasterValues(cluster_->address(r), "w"); }

  // Both ranks refused with `code`, the same message, containing `expect`;
  // nothing changed; both still serving; and a step they agree on works.
  void ExpectRefusedThenRecovers(const std::vector<absl::StatusOr<StepResult>>& out,
                                 absl::StatusCode code, const std::string& expect,
                                 const std::vector<std::vector<float>>& before) {
    for (int r = 0; r < kWorld; ++r) {
      ASSERT_FALSE(out[r].ok()) << "rank " << r << " applied the step";
      EXPECT_EQ(out[r].status().code(), code) << out[r].status();
      EXPECT_NE(out[r].status().message().find(expect), std::string::npos) << out[r].status();
      EXPECT_EQ(Master(r), before[r]) << "rank " << r << " touched its state";
      EXPECT_EQ(Health(cluster_->address(r)), "SERVING");
    }
    EXPECT_EQ(out[0].status().message(), out[1].status().message());
  }

  std::unique_ptr<ClusterProcess> cluster_;
  std::vector<std::unique_ptr<Client>> clients_;
};

TEST_F(Agreement, ModelsOfDifferentSizesAreRefusedOnEveryRank) {
  RegisterAndInit({Model({1000}), Model({999})});
  const std::vector<std::vector<float>> before = {Master(0), Master(1)};
  auto out = StepAll({{.lr = 0.1f}, {.lr = 0.1f}});
  ExpectRefusedThenRecovers(out, absl::StatusCode::kFailedPrecondition,
                            "the ranks registered different models: rank 0 has tensor 'w' "
                            "shape [1000] float32 in group 'default', rank 1 has tensor 'w' "
                            "shape [999]",
                            before);
  // Both servers are alive (no abort on Gloo's thread) and step on.
  auto again = StepAll({{.lr = 0.1f}, {.lr = 0.1f}});
  EXPECT_FALSE(again[0].ok());
  EXPECT_EQ(Health(cluster_->address(0)), "SERVING");
}

TEST_F(Agreement, SameSizeWithOtherShapesOrGroupSettingsIsRefused) {
  RegisterAndInit({Model({10, 100}), Model({100, 10})});
  const std::vector<std::vector<float>> before = {Master(0), Master(1)};
  ExpectRefusedThenRecovers(StepAll({{.lr = 0.1f}, {.lr = 0.1f}}),
                            absl::StatusCode::kFailedPrecondition,
                            "shape [10, 100] float32 in group 'default', rank 1 has tensor "
                            "'w' shape [100, 10]",
                            before);
}

TEST_F(Agreement, OtherWeightDecayOnOneRankIsRefused) {
  RegisterAndInit({Model({64}, 0.01f), Model({64}, 0.1f)});
  const std::vector<std::vector<float>> before = {Master(0), Master(1)};
  ExpectRefusedThenRecovers(StepAll({{.lr = 0.1f}, {.lr = 0.1f}}),
                            absl::StatusCode::kFailedPrecondition,
                            "weight_decay 0.00999999978, rank 1 has param group 'default' "
                            "lr_scale 1 betas (0.899999976, 0.999000013) eps 9.99999994e-09 "
                            "weight_decay 0.100000001",
                            before);
}

TEST_F(Agreement, DifferentLrIsRefusedAndTheClusterStepsOnAfterwards) {
  RegisterAndInit({Model({64}), Model({64})});
  const std::vector<std::vector<float>> before = {Master(0), Master(1)};
  ExpectRefusedThenRecovers(StepAll({{.lr = 0.1f}, {.lr = 0.2f}}),
                            absl::StatusCode::kFailedPrecondition,
                            "lr is 0.100000001 on rank 0 and 0.200000003 on rank 1", before);
  // Other disagreements: grad_scale, clipping, per-group overrides.
  ExpectRefusedThenRecovers(StepAll({{.lr = 0.1f, .grad_scale = 2}, {.lr = 0.1f}}),
                            absl::StatusCode::kFailedPrecondition,
                            "grad_scale is 2 on rank 0 and 1 on rank 1", before);
  ExpectRefusedThenRecovers(
      StepAll({{.lr = 0.1f, .groups = {{.name = "default", .lr = 0.3f}}}, {.lr = 0.1f}}),
      absl::StatusCode::kFailedPrecondition, "the param group settings differ", before);
  // The same step, agreed, is applied on both ranks identically.
  auto out = StepAll({{.lr = 0.1f}, {.lr = 0.1f}});
  for (int r = 0; r < kWorld; ++r) {
    ASSERT_TRUE(out[r].ok()) << out[r].status();
    EXPECT_TRUE(out[r]->applied);
    EXPECT_EQ(out[r]->step, 1);
  }
  EXPECT_NE(Master(0), before[0]);
}

TEST_F(Agreement, AStepSentToOneRankOnlyTimesOutAndTheClusterKeepsServing) {
  RegisterAndInit({Model({64}), Model({64})});
  const std::vector<float> before = Master(0);
  const absl::Time t0 = absl::Now();
  auto lone = clients_[0]->Step({.lr = 0.1f});
  const absl::Duration took = absl::Now() - t0;
  ASSERT_FALSE(lone.ok());
  EXPECT_EQ(lone.status().code(), absl::StatusCode::kDeadlineExceeded) << lone.status();
  EXPECT_NE(lone.status().message().find("rank 1 did not take part in step 1"),
            std::string::npos) << lone.status();
  EXPECT_LT(took, absl::Seconds(30)) << "bounded by the collective timeout (2 s)";
  EXPECT_EQ(Master(0), before);
  EXPECT_EQ(Health(cluster_->address(0)), "SERVING");
  EXPECT_EQ(Health(cluster_->address(1)), "SERVING");
  // Both trainers now send step 1: applied (the first attempt's round is
  // passed over by rank 1, which never saw it).
  auto out = StepAll({{.lr = 0.1f}, {.lr = 0.1f}});
  for (int r = 0; r < kWorld; ++r) {
    ASSERT_TRUE(out[r].ok()) << out[r].status();
    EXPECT_TRUE(out[r]->applied);
  }
  EXPECT_EQ(Master(0), Master(1));
}

TEST_F(Agreement, RanksAtDifferentStepsAreNeverCombined) {
  RegisterAndInit({Model({64}), Model({64})});
  // Rank 1's optimizer state comes from another point (as after restoring
  // a checkpoint on one rank only).
  ASSERT_TRUE(clients_[1]->InitParams(/*force=*/true, /*adam_step=*/5).ok());
  const std::vector<std::vector<float>> before = {Master(0), Master(1)};
  ExpectRefusedThenRecovers(StepAll({{.lr = 0.1f}, {.lr = 0.1f}}),
                            absl::StatusCode::kFailedPrecondition,
                            "rank 0 has applied 0 steps, rank 1 has applied 5", before);
  // Trainers that send different step ids (raw protocol): refused, naming them.
  auto stub = [&](int r) {
    return v1::Trainer::NewStub(
        grpc::CreateChannel(cluster_->address(r), grpc::InsecureChannelCredentials()));
  };
  std::vector<grpc::Status> st(kWorld);
  std::vector<v1::StepResponse> resp(kWorld);
  std::vector<std::thread> ts;
  for (int r = 0; r < kWorld; ++r) {
    ts.emplace_back([&, r] {
      grpc::ClientContext ctx;
      v1::StepRequest req;
      req.set_step(r == 0 ? 1 : 2);
      req.set_lr(0.1f);
      st[r] = stub(r)->Step(&ctx, req, &resp[r]);
    });
  }
  for (auto& t : ts) t.join();
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_EQ(st[r].error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st[r].error_message();
    EXPECT_NE(st[r].error_message().find(
                  "the trainers sent different steps: rank 0 got step 1, rank 1 got step 2"),
              std::string::npos) << st[r].error_message();
  }
  EXPECT_EQ(Master(0), before[0]);
}

TEST_F(Agreement, ARankThatRefusesTellsTheOthersWhyAtOnce) {
  RegisterAndInit({Model({64}), Model({64})});
  auto first = StepAll({{.lr = 0.1f}, {.lr = 0.1f}});  // the cluster has formed
  ASSERT_TRUE(first[0].ok() && first[1].ok()) << first[0].status() << first[1].status();
  // Rank 1's trainer sends an lr its server refuses; rank 0 does not wait
  // for the timeout to learn it.
  const absl::Time t0 = absl::Now();
  auto out = StepAll({{.lr = 0.1f}, {.lr = -1.0f}});
  for (int r = 0; r < kWorld; ++r) {
    ASSERT_FALSE(out[r].ok());
    EXPECT_EQ(out[r].status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(out[r].status().message().find("rank 1 refused step 2: learning rate must be finite"),
              std::string::npos) << out[r].status();
  }
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2)) << "no wait for a timeout";
}

// A server that goes out of service says so on the standard health service
// too, and a Step there is a permanent error, not UNAVAILABLE (which clients
// retry as if the cluster were forming).
TEST(OutOfService, HealthAndStepAgreeThatTheServerIsOut) {
  auto rank0 = testing::ServerProcess::Start({"--rank", "0", "--world-size", "2",
                                              "--cluster-id", "one"});
  ASSERT_TRUE(rank0.ok()) << rank0.status();
  auto rank1 = testing::ServerProcess::Start({"--rank", "1", "--world-size", "2",
                                              "--cluster-id", "other", "--coordinator",
                                              rank0->address()});
  ASSERT_TRUE(rank1.ok()) << rank1.status();
  // Its join is refused (another cluster id): it goes out of service.
  for (absl::Time end = absl::Now() + absl::Seconds(30);
       Health(rank1->address()) != "NOT_SERVING" && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  auto channel = grpc::CreateChannel(rank1->address(), grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health(rank1->address()), "NOT_SERVING");

  auto c = Client::Connect(rank1->address());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Register(Model({8})).ok());
  ASSERT_TRUE((*c)->InitParams().ok());
  auto step = (*c)->Step({.lr = 0.1f});
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition) << step.status();
  EXPECT_NE(step.status().message().find("out of service"), std::string::npos);
  EXPECT_EQ(*rank1->Stop(), 0);
  EXPECT_EQ(*rank0->Stop(), 0);
}

}  // namespace
}  // namespace sherd
