// The server's protocol at the gRPC level, with raw stubs: idempotent steps,
// and every bad input answered with the right code while the state stays
// intact.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "sherd/v1/admin.grpc.pb.h"
#include "sherd/v1/trainer.grpc.pb.h"
#include "tests/testing/inspect.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::ServerProcess;

v1::RegisterRequest Model(const std::string& name = "m") {
  v1::RegisterRequest r;
  r.set_model_name(name);
  auto* t = r.add_tensors();
  t->set_name("w");
  t->add_shape(10);
  t->add_shape(10);
  t->set_dtype(v1::DTYPE_FLOAT32);
  t = r.add_tensors();
  t->set_name("b");
  t->add_shape(10);
  t->set_dtype(v1::DTYPE_FLOAT32);
  return r;
}

class ProtocolTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> flags = {}) {
    auto s = ServerProcess::Start(std::move(flags));
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::make_unique<ServerProcess>(std::move(*s));
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(server_->address(),
                                         grpc::InsecureChannelCredentials(), args);
    trainer_ = v1::Trainer::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
  }
  void SetUp() override { Start(); }
  void TearDown() override {
    // Whatever a test sent, the server is still up and stops cleanly.
    v1::StatusResponse st;
    grpc::ClientContext ctx;
    EXPECT_TRUE(admin_->Status(&ctx, {}, &st).ok());
    EXPECT_EQ(*server_->Stop(), 0);
  }

  grpc::Status Register(const v1::RegisterRequest& req,
                        v1::RegisterResponse* resp = nullptr) {
    v1::RegisterResponse r;
    grpc::ClientContext ctx;
    return trainer_->Register(&ctx, req, resp ? resp : &r);
  }
  grpc::Status Init() {
    grpc::ClientContext ctx;
    v1::InitParamsResponse r;
    return trainer_->InitParams(&ctx, {}, &r);
  }
  grpc::Status Step(int64_t step, v1::StepResponse* resp, float lr = 0.01f) {
    v1::StepRequest req;
    req.set_step(step);
    req.set_lr(lr);
    grpc::ClientContext ctx;
    return trainer_->Step(&ctx, req, resp);
  }
  grpc::Status Push(v1::BufferKind kind, int64_t offset, std::vector<float> data) {
    grpc::ClientContext ctx;
    v1::PushResponse resp;
    auto w = trainer_->Push(&ctx, &resp);
    v1::DataChunk c;
    c.set_buffer(kind);
    c.set_offset(offset);
    c.set_data(data.data(), data.size() * sizeof(float));
    w->Write(c);
    w->WritesDone();
    return w->Finish();
  }
  std::vector<float> FetchAll(v1::BufferKind kind) {
    grpc::ClientContext ctx;
    v1::FetchRequest req;
    req.set_buffer(kind);
    auto r = trainer_->Fetch(&ctx, req);
    std::vector<float> out;
    v1::DataChunk c;
    while (r->Read(&c)) {
      size_t n = c.data().size() / 4;
      out.resize(c.offset() + n);
      std::memcpy(out.data() + c.offset(), c.data().data(), c.data().size());
    }
    EXPECT_TRUE(r->Finish().ok());
    return out;
  }
  std::vector<float> Params() { return testing::MasterValues(*admin_, "w"); }
  void RegisterAndInit() {
    ASSERT_TRUE(Register(Model()).ok());
    ASSERT_TRUE(Push(v1::BUFFER_PARAMS, 0, std::vector<float>(100, 0.5f)).ok());
    ASSERT_TRUE(Init().ok());
    ASSERT_TRUE(Push(v1::BUFFER_GRADS, 0, std::vector<float>(112, 0.25f)).ok());
  }

  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Trainer::Stub> trainer_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

TEST_F(ProtocolTest, RetriedStepReturnsTheRecordedResponse) {
  RegisterAndInit();
  v1::StepResponse first, retry;
  ASSERT_TRUE(Step(1, &first).ok());
  std::vector<float> after = Params();
  ASSERT_TRUE(Step(1, &retry).ok());
  EXPECT_TRUE(retry.replayed());
  EXPECT_EQ(retry.step(), 1);
  EXPECT_EQ(retry.grad_norm(), first.grad_norm());
  EXPECT_EQ(Params(), after);  // not applied twice
}

TEST_F(ProtocolTest, StaleOrSkippedStepIdIsFailedPreconditionNamingExpected) {
  RegisterAndInit();
  v1::StepResponse r;
  grpc::Status s = Step(3, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("expected step 1"), std::string::npos) << s.error_message();
  for (int i = 1; i <= 20; ++i) ASSERT_TRUE(Step(i, &r).ok());
  s = Step(2, &r);  // older than the replay window
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("expected step 21"), std::string::npos);
  s = Step(0, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ProtocolTest, StepBeforeRegisterOrInit) {
  v1::StepResponse r;
  EXPECT_EQ(Step(1, &r).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(Register(Model()).ok());
  grpc::Status s = Step(1, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("InitParams"), std::string::npos);
}

TEST_F(ProtocolTest, BadStepArguments) {
  RegisterAndInit();
  std::vector<float> before = Params();
  v1::StepResponse r;
  EXPECT_EQ(Step(1, &r, -1.0f).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Step(1, &r, std::numeric_limits<float>::infinity()).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Params(), before);
  EXPECT_TRUE(Step(1, &r).ok());  // the step id was not consumed
}

TEST_F(ProtocolTest, BadModelsAreRejected) {
  auto dup = Model();
  dup.mutable_tensors(1)->set_name("w");
  grpc::Status s = Register(dup);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("duplicate tensor name 'w'"), std::string::npos);

  auto empty = Model();
  empty.mutable_tensors(0)->clear_shape();
  EXPECT_EQ(Register(empty).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto negative = Model();
  negative.mutable_tensors(0)->set_shape(0, -4);
  EXPECT_EQ(Register(negative).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto zero = Model();
  zero.mutable_tensors(0)->set_shape(1, 0);
  EXPECT_EQ(Register(zero).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto dtype = Model();
  dtype.mutable_tensors(0)->set_dtype(static_cast<v1::DType>(42));
  s = Register(dtype);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("unknown dtype"), std::string::npos);

  auto unspecified = Model();
  unspecified.mutable_tensors(0)->set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_EQ(Register(unspecified).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto group = Model();
  group.mutable_tensors(0)->set_param_group("nope");
  EXPECT_EQ(Register(group).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto beta = Model();
  auto* g = beta.add_groups();
  g->set_name("default");
  g->set_beta1(1.5f);
  EXPECT_EQ(Register(beta).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Two "default" groups: refused, not "the last one wins" (issue 13, 9).
  auto two_defaults = Model();
  two_defaults.add_groups()->set_name("default");
  two_defaults.add_groups()->set_name("default");
  s = Register(two_defaults);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("duplicate param group 'default'"), std::string::npos);

  v1::RegisterRequest none;
  none.set_model_name("none");
  EXPECT_EQ(Register(none).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // None of that registered anything.
  v1::StatusResponse st;
  grpc::ClientContext ctx;
  ASSERT_TRUE(admin_->Status(&ctx, {}, &st).ok());
  EXPECT_FALSE(st.has_model());
  EXPECT_TRUE(Register(Model()).ok());
}

// Inspect with a count past the end reads to the end, however large the
// count (begin + count overflowed, giving an empty range).
TEST_F(ProtocolTest, InspectWithAHugeCountReadsToTheEnd) {
  RegisterAndInit();
  for (int64_t count : {int64_t{1000}, std::numeric_limits<int64_t>::max()}) {
    grpc::ClientContext ctx;
    v1::InspectRequest req;
    req.set_name("w");
    req.set_begin(3);
    req.set_count(count);
    req.set_state(v1::STATE_PARAM);
    req.set_values(true);
    req.set_max_values(1000);
    v1::InspectResponse r;
    ASSERT_TRUE(admin_->Inspect(&ctx, req, &r).ok());
    EXPECT_EQ(r.begin(), 3);
    EXPECT_EQ(r.end(), 100) << count;
    EXPECT_EQ(r.values_size(), 97) << count;
  }
}

// A fetch asking for chunks of 2^20 elements is answered in messages a
// client with gRPC's default 4 MiB receive limit can read.
TEST_F(ProtocolTest, LargeFetchChunksFitTheDefaultReceiveLimit) {
  v1::RegisterRequest big;
  big.set_model_name("big");
  auto* t = big.add_tensors();
  t->set_name("w");
  t->add_shape(1 << 20);
  t->set_dtype(v1::DTYPE_FLOAT32);
  ASSERT_TRUE(Register(big).ok());
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  auto trainer = v1::Trainer::NewStub(channel);
  grpc::ClientContext ctx;
  v1::FetchRequest req;
  req.set_buffer(v1::BUFFER_PARAMS);
  req.set_chunk_elements(1 << 20);
  auto r = trainer->Fetch(&ctx, req);
  v1::DataChunk c;
  int64_t got = 0;
  while (r->Read(&c)) got += static_cast<int64_t>(c.data().size() / sizeof(float));
  grpc::Status s = r->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(got, 1 << 20);
}

TEST_F(ProtocolTest, SecondRegisterWithADifferentModelIsRefused) {
  ASSERT_TRUE(Register(Model()).ok());
  auto other = Model();
  other.mutable_tensors(1)->set_shape(0, 11);
  grpc::Status s = Register(other);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Register(Model("other-name")).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::RegisterResponse same;
  ASSERT_TRUE(Register(Model(), &same).ok());
  EXPECT_TRUE(same.reattached());
}

// A push is all or nothing (issue 13, defect 9): a stream whose later
// chunk is invalid writes none of its earlier chunks. Before, the first
// chunk had already landed in P when the second was refused.
TEST_F(ProtocolTest, APushWithABadLaterChunkWritesNothing) {
  RegisterAndInit();
  const std::vector<float> before = FetchAll(v1::BUFFER_PARAMS);
  grpc::ClientContext ctx;
  v1::PushResponse resp;
  auto w = trainer_->Push(&ctx, &resp);
  std::vector<float> ones(64, 1.0f);
  v1::DataChunk good;
  good.set_buffer(v1::BUFFER_PARAMS);
  good.set_offset(0);
  good.set_data(ones.data(), ones.size() * sizeof(float));
  ASSERT_TRUE(w->Write(good));
  v1::DataChunk bad = good;
  bad.set_offset(1 << 30);  // outside P
  w->Write(bad);
  w->WritesDone();
  grpc::Status s = w->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("chunk 1 of this push"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("nothing of this push was written"), std::string::npos);
  EXPECT_EQ(FetchAll(v1::BUFFER_PARAMS), before);
}

TEST_F(ProtocolTest, PushesOutsideTheBufferAreRejected) {
  RegisterAndInit();  // 128 padded elements
  std::vector<float> grads_before = FetchAll(v1::BUFFER_GRADS);
  EXPECT_EQ(Push(v1::BUFFER_GRADS, 120, std::vector<float>(9, 1)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Push(v1::BUFFER_GRADS, -1, std::vector<float>(1, 1)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Push(v1::BUFFER_GRADS, 1 << 30, std::vector<float>(1, 1)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Push(v1::BUFFER_UNSPECIFIED, 0, std::vector<float>(1, 1)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    v1::PushResponse resp;
    auto w = trainer_->Push(&ctx, &resp);
    v1::DataChunk c;
    c.set_buffer(v1::BUFFER_GRADS);
    c.set_data("abc");  // not whole floats
    w->Write(c);
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(FetchAll(v1::BUFFER_GRADS), grads_before);
  v1::FetchRequest bad;
  bad.set_buffer(v1::BUFFER_PARAMS);
  bad.set_offset(50);
  bad.set_count(100);
  grpc::ClientContext ctx;
  auto r = trainer_->Fetch(&ctx, bad);
  v1::DataChunk c;
  while (r->Read(&c)) {}
  EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// The optimizer state can be read and written for the owned slice only
// (here one rank owns all 128 elements of the padded layout), and InitParams takes the step
// count a loaded state continues from.
TEST_F(ProtocolTest, OptimizerStateOfTheOwnedSliceRoundTrips) {
  RegisterAndInit();
  std::vector<float> m(128), v(128);  // the padded layout
  for (int i = 0; i < 128; ++i) {
    m[i] = 0.01f * i;
    v[i] = 1e-4f * i;
  }
  ASSERT_TRUE(Push(v1::BUFFER_EXP_AVG, 0, m).ok());
  ASSERT_TRUE(Push(v1::BUFFER_EXP_AVG_SQ, 0, v).ok());
  EXPECT_EQ(FetchAll(v1::BUFFER_EXP_AVG), m);
  EXPECT_EQ(FetchAll(v1::BUFFER_EXP_AVG_SQ), v);
  std::vector<float> master = FetchAll(v1::BUFFER_MASTER);
  ASSERT_EQ(master.size(), 128u);
  EXPECT_EQ(master[0], 0.5f);
  // Outside the slice: refused, nothing written.
  EXPECT_EQ(Push(v1::BUFFER_EXP_AVG, 120, std::vector<float>(9, 9.0f)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(FetchAll(v1::BUFFER_EXP_AVG), m);
  // InitParams with a step count: reported back, moments zeroed.
  grpc::ClientContext ctx;
  v1::InitParamsRequest req;
  req.set_force(true);
  req.set_adam_step(7);
  v1::InitParamsResponse resp;
  ASSERT_TRUE(trainer_->InitParams(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.adam_step(), 7);
  EXPECT_EQ(FetchAll(v1::BUFFER_EXP_AVG), std::vector<float>(128, 0.0f));
  v1::RegisterResponse again;
  ASSERT_TRUE(Register(Model(), &again).ok());
  EXPECT_EQ(again.adam_step(), 7);
  grpc::ClientContext ctx2;
  req.set_adam_step(-1);
  EXPECT_EQ(trainer_->InitParams(&ctx2, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

// Per-step group hyperparameters must name the model's groups, once each.
TEST_F(ProtocolTest, StepGroupsMustNameTheModelsGroups) {
  RegisterAndInit();
  std::vector<float> before = Params();
  auto step = [&](std::vector<std::string> names, float lr = 0.01f) {
    v1::StepRequest req;
    req.set_step(1);
    req.set_lr(0.01f);
    for (const std::string& n : names) {
      v1::GroupStepParams* g = req.add_groups();
      g->set_name(n);
      g->set_lr(lr);
      g->set_beta1(0.9f);
      g->set_beta2(0.999f);
      g->set_eps(1e-8f);
    }
    grpc::ClientContext ctx;
    v1::StepResponse r;
    return trainer_->Step(&ctx, req, &r);
  };
  EXPECT_EQ(step({"nope"}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(step({"default", "default"}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(step({"default"}, -1.0f).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Params(), before);
  EXPECT_TRUE(step({"default"}).ok());
  EXPECT_NE(Params(), before);
}

TEST_F(ProtocolTest, PushBeforeRegister) {
  EXPECT_EQ(Push(v1::BUFFER_GRADS, 0, {1.0f}).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

class LimitedServerTest : public ProtocolTest {
  void SetUp() override {
    Start({"--memory-limit", "64KiB", "--max-message-bytes", "4096"});
  }
};

TEST_F(LimitedServerTest, ModelOverTheMemoryLimit) {
  auto big = Model();
  big.mutable_tensors(0)->set_shape(0, 1000);  // 10000 params: > 64 KiB of state
  grpc::Status s = Register(big);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("memory limit"), std::string::npos);
  EXPECT_TRUE(Register(Model()).ok());  // a small one still fits
}

TEST_F(LimitedServerTest, MessageOverTheSizeLimit) {
  ASSERT_TRUE(Register(Model()).ok());
  grpc::Status s = Push(v1::BUFFER_GRADS, 0, std::vector<float>(2000, 1));  // 8000 B
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Push(v1::BUFFER_GRADS, 0, std::vector<float>(100, 1)).ok());
}

}  // namespace
}  // namespace sherd
