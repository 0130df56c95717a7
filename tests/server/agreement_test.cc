// The step agreement (server/step/agreement.h) with threads as ranks over an
// in-memory store: what rank 0 decides, that every rank gets the same
// answer, and the round rules for a rank that arrives after its round was
// given up.
#include "server/step/agreement.h"

#include <gtest/gtest.h>

#include <thread>

namespace sherd {
namespace {

ModelSpec Spec(std::vector<int64_t> shape, float weight_decay = 0.01f) {
  ModelSpec s;
  s.name = "m";
  s.groups.push_back(ParamGroupConfig{.name = "default", .weight_decay = weight_decay});
  s.tensors.push_back(TensorDesc{.name = "w", .shape = std::move(shape)});
  return s;
}

v1::StepHeader Header(int64_t step, float lr = 0.01f) {
  v1::StepHeader h;
  h.set_step(step);
  h.set_next_step(step);
  h.set_adam_step(step - 1);
  h.set_lr(lr);
  h.set_grad_scale(1);
  return h;
}

struct Cluster {
  explicit Cluster(int world, absl::Duration timeout = absl::Seconds(5))
      : store(std::make_shared<InMemoryKvStore>()) {
    for (int r = 0; r < world; ++r) {
      ranks.push_back(std::make_unique<StepAgreement>(store, r, world, timeout));
    }
  }
  // Runs Agree on the ranks in `who` concurrently; headers[r] per rank.
  std::vector<absl::Status> Run(const std::vector<int>& who,
                                const std::vector<v1::StepHeader>& headers,
                                const std::vector<std::string>& models) {
    std::vector<absl::Status> out(ranks.size());
    std::vector<std::thread> ts;
    for (int r : who) {
      ts.emplace_back([&, r] { out[r] = ranks[r]->Agree(headers[r], models[r]); });
    }
    for (auto& t : ts) t.join();
    return out;
  }
  std::shared_ptr<InMemoryKvStore> store;
  std::vector<std::unique_ptr<StepAgreement>> ranks;
};

TEST(StepAgreement, RanksThatAgreeGoAhead) {
  Cluster c(3);
  const std::string m = DescribeModel(Spec({4, 8}));
  for (int64_t step = 1; step <= 3; ++step) {
    auto out = c.Run({0, 1, 2}, {Header(step), Header(step), Header(step)}, {m, m, m});
    for (const absl::Status& s : out) EXPECT_TRUE(s.ok()) << s;
  }
  for (auto& r : c.ranks) EXPECT_EQ(r->round(), 3);
  // Rounds before the last GO are erased; the last decision stays for
  // ranks that have not read it yet.
  EXPECT_FALSE(c.store->Get("step/0/d", absl::ZeroDuration()).ok());
  EXPECT_FALSE(c.store->Get("step/1/d", absl::ZeroDuration()).ok());
  EXPECT_TRUE(c.store->Get("step/2/d", absl::ZeroDuration()).ok());
  EXPECT_FALSE(c.store->Get("step/2/h/1", absl::ZeroDuration()).ok());
}

TEST(StepAgreement, DifferentLrIsRefusedOnEveryRankNamingIt) {
  Cluster c(2);
  const std::string m = DescribeModel(Spec({4}));
  auto out = c.Run({0, 1}, {Header(1, 0.01f), Header(1, 0.02f)}, {m, m});
  for (const absl::Status& s : out) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("lr is 0.00999999978 on rank 0 and 0.0199999996 on rank 1"),
              std::string::npos) << s;
  }
  EXPECT_EQ(out[0], out[1]);
  // The next attempt, agreed, goes ahead.
  out = c.Run({0, 1}, {Header(1), Header(1)}, {m, m});
  EXPECT_TRUE(out[0].ok() && out[1].ok()) << out[0] << out[1];
}

TEST(StepAgreement, DifferentModelsNameTheFirstDifference) {
  Cluster c(2);
  auto out = c.Run({0, 1}, {Header(1), Header(1)},
                   {DescribeModel(Spec({10, 100})), DescribeModel(Spec({100, 10}))});
  for (const absl::Status& s : out) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("rank 0 has tensor 'w' shape [10, 100] float32"),
              std::string::npos) << s;
    EXPECT_NE(s.message().find("rank 1 has tensor 'w' shape [100, 10] float32"),
              std::string::npos) << s;
  }
  out = c.Run({0, 1}, {Header(2), Header(2)},
              {DescribeModel(Spec({4}, 0.01f)), DescribeModel(Spec({4}, 0.0f))});
  EXPECT_NE(out[1].message().find("weight_decay 0.00999999978"), std::string::npos) << out[1];
}

TEST(StepAgreement, EveryFieldOfTheHeaderIsCompared) {
  const std::string m = DescribeModel(Spec({4}));
  auto refused = [&](v1::StepHeader other, const std::string& expect) {
    Cluster c(2);
    auto out = c.Run({0, 1}, {Header(1), std::move(other)}, {m, m});
    EXPECT_FALSE(out[0].ok());
    EXPECT_EQ(out[0], out[1]);
    EXPECT_NE(out[0].message().find(expect), std::string::npos) << out[0];
  };
  v1::StepHeader h = Header(2);
  refused(h, "the trainers sent different steps: rank 0 got step 1, rank 1 got step 2");
  h = Header(1);
  h.set_next_step(3);
  refused(h, "rank 0 expects step 1, rank 1 expects step 3");
  h = Header(1);
  h.set_adam_step(7);
  refused(h, "rank 0 has applied 0 steps, rank 1 has applied 7");
  h = Header(1);
  h.set_grad_scale(0.5f);
  refused(h, "grad_scale is 1 on rank 0 and 0.5 on rank 1");
  h = Header(1);
  h.set_max_grad_norm(1);
  refused(h, "max_grad_norm is 0 on rank 0 and 1 on rank 1");
  h = Header(1);
  v1::GroupStepParams* g = h.add_groups();
  g->set_name("default");
  g->set_lr(0.5f);
  refused(h, "the param group settings differ: rank 0 has none; rank 1 has 'default' lr 0.5");
  h = Header(1);
  h.set_refusal("params are not initialized");
  h.set_refusal_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
  refused(h, "rank 1 refused step 1: params are not initialized");
}

TEST(StepAgreement, ARefusalKeepsItsCode) {
  Cluster c(2);
  v1::StepHeader bad = Header(1, -1);
  bad.set_refusal("lr must be finite and >= 0");
  bad.set_refusal_code(static_cast<int>(absl::StatusCode::kInvalidArgument));
  auto out = c.Run({0, 1}, {bad, Header(1)}, {"", ""});
  EXPECT_EQ(out[0].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out[1].message().find("rank 0 refused step 1: lr must be"), std::string::npos);
}

TEST(StepAgreement, AMissingRankTimesOutTheOthersThenJoinsTheNextRound) {
  Cluster c(3, absl::Milliseconds(300));
  const std::string m = DescribeModel(Spec({4}));
  std::vector<v1::StepHeader> h = {Header(1), Header(1), Header(1)};
  // Rank 2's trainer does not send step 1.
  auto out = c.Run({0, 1}, h, {m, m, m});
  for (int r : {0, 1}) {
    EXPECT_EQ(out[r].code(), absl::StatusCode::kDeadlineExceeded) << out[r];
    EXPECT_NE(out[r].message().find("rank 2 did not take part in step 1"), std::string::npos)
        << out[r];
  }
  // All three send it now; rank 2 passes over the round it missed.
  out = c.Run({0, 1, 2}, h, {m, m, m});
  for (const absl::Status& s : out) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(c.ranks[0]->round(), 2);
  EXPECT_EQ(c.ranks[2]->round(), 2);
}

TEST(StepAgreement, MissingRankZeroIsDecidedByTheOthers) {
  Cluster c(2, absl::Milliseconds(300));
  const std::string m = DescribeModel(Spec({4}));
  std::vector<v1::StepHeader> h = {Header(1), Header(1)};
  auto out = c.Run({1}, h, {m, m});
  EXPECT_EQ(out[1].code(), absl::StatusCode::kDeadlineExceeded) << out[1];
  EXPECT_NE(out[1].message().find("rank 0 did not take part in step 1"), std::string::npos);
  // Rank 0 arrives late: the round is not its own; it waits in the next
  // one, which rank 1's retry joins.
  out = c.Run({0, 1}, h, {m, m});
  EXPECT_TRUE(out[0].ok() && out[1].ok()) << out[0] << out[1];
}

TEST(StepAgreement, ALoneRefusalReturnsWithinASecondAndCostsTheOthersNothing) {
  Cluster c(3, absl::Seconds(30));
  const std::string m = DescribeModel(Spec({4}));
  v1::StepHeader refusing = Header(1);
  refusing.set_refusal("step 1 is out of order: expected step 5");
  refusing.set_refusal_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
  std::vector<v1::StepHeader> h = {Header(1), Header(1), Header(1)};
  for (int lone : {0, 2}) {
    std::vector<v1::StepHeader> mine = h;
    mine[lone] = refusing;
    const absl::Time t0 = absl::Now();
    auto out = c.Run({lone}, mine, {m, m, m});
    EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
    EXPECT_EQ(out[lone].code(), absl::StatusCode::kFailedPrecondition) << out[lone];
    EXPECT_NE(out[lone].message().find(absl::StrCat("rank ", lone, " refused step 1: step 1 is "
                                                    "out of order")),
              std::string::npos) << out[lone];
    // Then every rank sends a good step: the others pass over the round the
    // lone call decided, and all go ahead together.
    out = c.Run({0, 1, 2}, h, {m, m, m});
    for (const absl::Status& s : out) EXPECT_TRUE(s.ok()) << s;
  }
}

TEST(StepAgreement, UnreadableDecisionIsAnError) {
  Cluster c(2);
  ASSERT_TRUE(c.store->Set("step/0/d", "\xff\xff garbage").ok());
  absl::Status s = c.ranks[1]->Agree(Header(1), "");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
}

}  // namespace
}  // namespace sherd
