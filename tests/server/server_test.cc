// Integration tests: a real sherd-server process on loopback (TCP and a unix
// socket), driven through the real client library.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <random>

#include "client/client.h"
#include "tests/testing/adamw_reference.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::Close;
using testing::RefAdamW;
using testing::RefHyper;
using testing::ServerProcess;

ModelDef SmallModel() {
  return ModelDef{
      .name = "small",
      .tensors = {{"w", {37, 3}, ""}, {"b", {5}, "no_decay"}, {"v", {19}, ""}},
      .groups = {{.name = "default", .weight_decay = 0.1f},
                 {.name = "no_decay", .lr_scale = 0.5f, .beta1 = 0.8f,
                  .beta2 = 0.99f, .eps = 1e-6f, .weight_decay = 0.0f}}};
}

RefHyper HyperFor(const std::string& group, double lr) {
  if (group == "no_decay") return {lr * 0.5, 0.8, 0.99, 1e-6, 0.0};
  return {lr, 0.9, 0.999, 1e-8, 0.1};
}

std::unique_ptr<Client> Connect(const std::string& address, bool shm = true) {
  ClientOptions o;
  o.use_shared_memory = shm;
  o.deadline = absl::Seconds(20);
  auto c = Client::Connect(address, o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

// Deterministic data for step s.
float InitValue(size_t i) { return std::sin(0.37 * i + 0.1) * 0.5f; }
float GradValue(int64_t step, size_t i) {
  return std::cos(0.11 * i * step + step) * (1 + (i % 7)) * 0.3f;
}

// Registers, initializes and runs `steps` steps; returns the final params of
// each tensor (in model order, concatenated).
std::vector<float> Train(Client& c, int steps, float lr) {
  std::vector<float> out;
  auto info = c.Register(SmallModel());
  EXPECT_TRUE(info.ok()) << info.status();
  if (!info.ok()) return out;
  const ModelDef model = SmallModel();
  size_t k = 0;
  for (const auto& t : model.tensors)
    for (float& x : c.Param(t.name)) x = InitValue(k++);
  EXPECT_TRUE(c.InitParams().ok());
  for (int s = 1; s <= steps; ++s) {
    k = 0;
    for (const auto& t : model.tensors)
      for (float& g : c.Grad(t.name)) g = GradValue(s, k++);
    auto r = c.Step({.lr = lr});
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) EXPECT_TRUE(r->applied);
  }
  for (const auto& t : model.tensors) {
    auto p = c.Param(t.name);
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = ServerProcess::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::make_unique<ServerProcess>(std::move(*s));
  }
  void TearDown() override {
    if (server_) {
      auto code = server_->Stop();
      ASSERT_TRUE(code.ok()) << code.status();
      EXPECT_EQ(*code, 0);
    }
  }
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ServerTest, SharedMemoryStepsMatchFloat64AdamW) {
  auto c = Connect(server_->address());
  ASSERT_NE(c, nullptr);
  const int kSteps = 20;
  const float kLr = 0.01f;
  std::vector<float> got = Train(*c, kSteps, kLr);
  ASSERT_TRUE(c->shared_memory());
  const ModelDef model = SmallModel();
  std::vector<double> init;
  for (size_t i = 0; i < got.size(); ++i) init.push_back(InitValue(i));
  RefAdamW ref(init);
  for (int s = 1; s <= kSteps; ++s) {
    std::vector<double> g;
    for (size_t i = 0; i < got.size(); ++i) g.push_back(GradValue(s, i));
    ref.Tick();
    size_t b = 0;
    for (const auto& t : model.tensors) {
      size_t n = 1;
      for (int64_t d : t.shape) n *= d;
      ref.Update(g, b, b + n, HyperFor(t.group, kLr));
      b += n;
    }
  }
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(Close(got[i], ref.p[i])) << i << ": " << got[i] << " vs " << ref.p[i];
  }
}

// The admin view of the data plane: what crossed gRPC.
std::pair<int64_t, int64_t> InlineBytes(const std::string& address) {
  auto r = testing::RunProgram({SHERDCTL_BIN, "--server", address, "--json", "status"});
  auto field = [&](const std::string& name) -> int64_t {
    size_t p = r.out.find("\"" + name + "\":\"");
    return p == std::string::npos ? 0 : std::stoll(r.out.substr(p + name.size() + 4));
  };
  return {field("inline_bytes_received"), field("inline_bytes_sent")};
}

TEST_F(ServerTest, SharedMemoryStepsCopyNothingThroughTheServer) {
  auto c = Connect(server_->address());
  Train(*c, 5, 0.01f);
  ASSERT_TRUE(c->shared_memory());
  EXPECT_EQ(InlineBytes(server_->address()), std::make_pair(int64_t{0}, int64_t{0}));
}

TEST_F(ServerTest, InlinePathGivesIdenticalResults) {
  auto shm = Connect(server_->address(), true);
  std::vector<float> a = Train(*shm, 10, 0.01f);
  auto other = ServerProcess::Start();
  ASSERT_TRUE(other.ok());
  auto remote = Connect(other->address(), false);
  std::vector<float> b = Train(*remote, 10, 0.01f);
  EXPECT_FALSE(remote->shared_memory());
  auto [in, out] = InlineBytes(other->address());
  EXPECT_GE(in, 10 * 128 * 4);  // each step pushes G (128 padded floats)
  EXPECT_GE(out, 10 * 128 * 4);  // and fetches P
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  EXPECT_EQ(*other->Stop(), 0);
}

TEST_F(ServerTest, TrainerReconnectsAndContinues) {
  std::vector<float> continued;
  {
    auto c = Connect(server_->address());
    Train(*c, 5, 0.01f);
  }  // trainer "exits"
  auto c = Connect(server_->address());
  auto info = c->Register(SmallModel());
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->reattached);
  EXPECT_TRUE(info->initialized);
  EXPECT_EQ(info->next_step, 6);
  // Continue to step 10, and compare with an uninterrupted run elsewhere.
  const ModelDef model = SmallModel();
  for (int s = 6; s <= 10; ++s) {
    size_t k = 0;
    for (const auto& t : model.tensors)
      for (float& g : c->Grad(t.name)) g = GradValue(s, k++);
    ASSERT_TRUE(c->Step({.lr = 0.01f}).ok());
  }
  for (const auto& t : model.tensors) {
    auto p = c->Param(t.name);
    continued.insert(continued.end(), p.begin(), p.end());
  }
  auto other = ServerProcess::Start();
  auto u = Connect(other->address());
  std::vector<float> uninterrupted = Train(*u, 10, 0.01f);
  EXPECT_EQ(0, std::memcmp(continued.data(), uninterrupted.data(),
                           continued.size() * sizeof(float)));
  EXPECT_EQ(*other->Stop(), 0);
}

TEST_F(ServerTest, NonFiniteGradientsSkipTheStepAndLeaveStateUntouched) {
  auto c = Connect(server_->address());
  Train(*c, 2, 0.01f);
  std::vector<float> before(c->params().begin(), c->params().end());
  c->Grad("w")[5] = std::numeric_limits<float>::infinity();
  c->Grad("v")[1] = std::numeric_limits<float>::quiet_NaN();
  auto r = c->Step({.lr = 0.01f});
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->applied);
  EXPECT_NE(r->skip_reason.find("2 non-finite"), std::string::npos) << r->skip_reason;
  std::vector<float> after(c->params().begin(), c->params().end());
  EXPECT_EQ(0, std::memcmp(before.data(), after.data(), after.size() * sizeof(float)));
  // The next good step applies normally.
  for (float& g : c->grads()) g = 0.5f;
  auto r2 = c->Step({.lr = 0.01f});
  ASSERT_TRUE(r2.ok());
  EXPECT_TRUE(r2->applied);
  EXPECT_EQ(r2->step, 4);
}

TEST_F(ServerTest, ClippingScalesTheGradient) {
  auto c = Connect(server_->address());
  ASSERT_TRUE(c->Register(SmallModel()).ok());
  ASSERT_TRUE(c->InitParams().ok());
  for (float& g : c->grads()) g = 0;
  for (float& g : c->Grad("w")) g = 1.0f;  // norm sqrt(111)
  auto r = c->Step({.lr = 0.01f, .max_grad_norm = 1.0f});
  ASSERT_TRUE(r.ok());
  EXPECT_NEAR(r->grad_norm, std::sqrt(111.0), 1e-4);
  EXPECT_NEAR(r->clip_coef, 1.0 / (std::sqrt(111.0) + 1e-6), 1e-9);
}

}  // namespace
}  // namespace sherd
