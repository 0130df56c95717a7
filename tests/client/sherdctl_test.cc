// sherdctl against a real server: tables, JSON, errors, help.
#include <gtest/gtest.h>

#include "client/client.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::RunProgram;
using testing::ServerProcess;

class SherdctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = ServerProcess::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::make_unique<ServerProcess>(std::move(*s));
  }
  void TearDown() override { EXPECT_EQ(*server_->Stop(), 0); }
  testing::RunResult Ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {SHERDCTL_BIN, "--server", server_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(argv);
  }
  void RegisterAndStep() {
    auto c = Client::Connect(server_->address());
    ASSERT_TRUE(c.ok());
    ModelDef m{.name = "demo",
               .tensors = {{"layer.weight", {8, 4}, ""}, {"layer.bias", {8}, "nd"}},
               .groups = {{.name = "nd", .weight_decay = 0}}};
    ASSERT_TRUE((*c)->Register(m).ok());
    auto w = (*c)->Param("layer.weight");
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i);
    ASSERT_TRUE((*c)->InitParams().ok());
    for (float& g : (*c)->grads()) g = 1.0f;
    ASSERT_TRUE((*c)->Step({.lr = 0.1f}).ok());
  }
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(SherdctlTest, StatusWithoutAModel) {
  auto r = Ctl({"status"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("no model registered"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("NO_MODEL"), std::string::npos) << r.out;
}

TEST_F(SherdctlTest, StatusTensorsWhereInspect) {
  RegisterAndStep();
  auto r = Ctl({"status"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("model demo: 2 tensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("SERVING"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(server_->address()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("DEVICE"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" cpu "), std::string::npos) << r.out;

  r = Ctl({"tensors"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("layer.weight  [8, 4]  32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layer.bias"), std::string::npos);

  r = Ctl({"where", "layer.bias"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("[0, 8)"), std::string::npos) << r.out;

  r = Ctl({"inspect", "layer.weight", "--values", "3"});
  EXPECT_EQ(r.code, 0);
  // One AdamW step from w[i] = i with grad 1 (weight decay 0.01, lr 0.1):
  // w * (1 - 0.001) - 0.1, the bias-corrected first step moving by lr.
  EXPECT_NE(r.out.find("COUNT"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("values[0..]: -0.1 0.89899999 1.898"), std::string::npos) << r.out;

  r = Ctl({"inspect", "layer.weight", "--state", "exp_avg", "--stats"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("32     0.1  0.1"), std::string::npos) << r.out;
}

TEST_F(SherdctlTest, JsonOutput) {
  RegisterAndStep();
  auto r = Ctl({"--json", "status"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("\"last_step\":\"1\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"device\":\"cpu\""), std::string::npos) << r.out;
  r = Ctl({"--json", "inspect", "layer.bias", "--state", "exp_avg_sq"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("\"count\": \"8\""), std::string::npos) << r.out;
}

TEST_F(SherdctlTest, ClearErrors) {
  auto r = Ctl({"where", "nope"});
  EXPECT_EQ(r.code, 1);  // no model yet
  RegisterAndStep();
  r = Ctl({"inspect", "nope"});
  EXPECT_EQ(r.code, 1);
  r = Ctl({"inspect", "layer.bias", "--state", "bogus"});
  EXPECT_NE(r.code, 0);
  auto unreachable = RunProgram({SHERDCTL_BIN, "--server", "127.0.0.1:1", "--timeout", "1", "status"});
  EXPECT_EQ(unreachable.code, 1);
}

TEST(Sherdctl, HelpOnEveryCommand) {
  for (std::string cmd : {"", "status", "tensors", "where", "inspect"}) {
    std::vector<std::string> argv = {SHERDCTL_BIN};
    if (!cmd.empty()) argv.push_back(cmd);
    argv.push_back("--help");
    auto r = RunProgram(argv);
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << cmd << r.out;
  }
}

}  // namespace
}  // namespace sherd
