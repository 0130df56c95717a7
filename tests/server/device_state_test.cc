// The shard server with its state behind a StateMemory (the GPU path's
// seam), tested on the CPU: the memory is host pages that are PROT_NONE
// except inside the memory's own copies (tests/testing/guarded_memory.h),
// so any server path that touches device state directly instead of through
// ModelState::Copy crashes here. Every result must equal a host-state
// server's bit for bit. Also: --device resolution without a GPU.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "server/collective/single_rank.h"
#include "server/gpu/gpu_backend.h"
#include "server/server_runner.h"
#include "server/shard_server.h"
#include "tests/testing/guarded_memory.h"

namespace sherd {
namespace {

using testing::GuardedMemory;

// Stands in for the GPU kernels: the CPU pipeline with the pages open.
class GuardedRunner final : public StepRunner {
 public:
  explicit GuardedRunner(GuardedMemory& memory) : memory_(memory) {}
  absl::StatusOr<StepOutcome> Run(ModelState& model, Collective& collective,
                                  const StepArgs& args) override {
    auto open = memory_.Unguard();
    return RunStep(model, collective, optimizer_, args);
  }

 private:
  GuardedMemory& memory_;
  AdamW optimizer_{1};
};

constexpr int64_t kW = 3000, kB = 77;

v1::RegisterRequest Model() {
  v1::RegisterRequest r;
  r.set_model_name("m");
  v1::TensorSpec* w = r.add_tensors();
  w->set_name("w");
  w->add_shape(kW);
  w->set_dtype(v1::DTYPE_FLOAT32);
  v1::TensorSpec* b = r.add_tensors();
  b->set_name("b");
  b->add_shape(kB);
  b->set_dtype(v1::DTYPE_FLOAT32);
  b->set_param_group("no_decay");
  v1::ParamGroup* g = r.add_groups();
  g->set_name("no_decay");
  g->set_weight_decay(0);
  g->set_has_weight_decay(true);
  return r;
}

v1::DataChunk Chunk(v1::BufferKind kind, int64_t offset, const std::vector<float>& v) {
  v1::DataChunk c;
  c.set_buffer(kind);
  c.set_offset(offset);
  c.set_data(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  return c;
}

std::vector<float> Read(ShardServer& s, v1::BufferKind kind) {
  v1::FetchRequest req;
  req.set_buffer(kind);
  req.set_chunk_elements(1000);  // several chunks
  std::vector<float> out;
  absl::Status st = s.ReadRange(req, [&](const v1::DataChunk& c) {
    EXPECT_EQ(c.offset(), static_cast<int64_t>(out.size()));
    const float* f = reinterpret_cast<const float*>(c.data().data());
    out.insert(out.end(), f, f + c.data().size() / sizeof(float));
    return true;
  });
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

std::vector<float> InspectValues(ShardServer& s, const std::string& tensor, v1::StateKind k) {
  v1::InspectRequest req;
  req.set_name(tensor);
  req.set_state(k);
  req.set_values(true);
  req.set_max_values(1 << 20);
  auto r = s.Inspect(req);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::vector<float>(r->values().begin(), r->values().end())
                : std::vector<float>{};
}

// Register, init, three steps (one clipped, one with a NaN gradient that
// must be skipped); returns nothing, the server holds the result.
void Train(ShardServer& s, int64_t total) {
  auto reg = s.Register(Model());
  ASSERT_TRUE(reg.ok()) << reg.status();
  std::vector<float> p(total), g(total);
  for (int64_t i = 0; i < total; ++i) p[i] = std::sin(0.37f * i);
  ASSERT_TRUE(s.WriteChunk(Chunk(v1::BUFFER_PARAMS, 0, p)).ok());
  ASSERT_TRUE(s.InitParams({}).ok());
  for (int step = 1; step <= 3; ++step) {
    for (int64_t i = 0; i < total; ++i) g[i] = 0.01f * std::cos(0.11f * i * step) + 0.001f;
    if (step == 2) g[5] = std::nanf("");
    // Two chunks, the second at an odd offset.
    std::vector<float> a(g.begin(), g.begin() + 1001), b(g.begin() + 1001, g.end());
    ASSERT_TRUE(s.WriteChunk(Chunk(v1::BUFFER_GRADS, 0, a)).ok());
    ASSERT_TRUE(s.WriteChunk(Chunk(v1::BUFFER_GRADS, 1001, b)).ok());
    v1::StepRequest req;
    req.set_step(step);
    req.set_lr(0.01f);
    req.set_max_grad_norm(step == 3 ? 0.05f : 0);
    auto r = s.Step(req);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->applied(), step != 2) << "step " << step;
  }
}

struct Pair {
  std::shared_ptr<GuardedMemory> memory = std::make_shared<GuardedMemory>();
  std::unique_ptr<ShardServer> device, host;

  explicit Pair(const std::string& ckpt = "") {
    ServerOptions o;
    o.shm_prefix = "/sherd-devtest." + std::to_string(getpid());
    o.checkpoint.root = ckpt;
    host = std::make_unique<ShardServer>(o, CreateSingleRankCollective());
    o.shm_prefix.clear();
    o.state_memory = memory;
    o.step_runner = std::make_shared<GuardedRunner>(*memory);
    device = std::make_unique<ShardServer>(o, CreateSingleRankCollective());
  }
};

TEST(DeviceState, RegisterHandsOutHandlesNotSharedMemory) {
  Pair p;
  auto reg = p.device->Register(Model());
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_EQ(reg->device(), "guarded:0");
  EXPECT_TRUE(reg->params().shm_name().empty());
  EXPECT_FALSE(reg->params().cuda_ipc_handle().empty());
  EXPECT_NE(reg->params().cuda_ipc_handle(), reg->grads().cuda_ipc_handle());
  EXPECT_EQ(reg->params().bytes(), reg->params().elements() * 4);
  EXPECT_EQ(p.device->Status().device(), "guarded:0");
  EXPECT_EQ(p.host->Status().device(), "cpu");
  // Re-registering (a restarted trainer) hands out the same buffers.
  auto again = p.device->Register(Model());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->reattached());
  EXPECT_EQ(again->params().cuda_ipc_handle(), reg->params().cuda_ipc_handle());
}

TEST(DeviceState, EverythingEqualsHostStateBitForBit) {
  Pair p;
  auto reg = p.host->Register(Model());
  ASSERT_TRUE(reg.ok());
  const int64_t total = reg->params().elements();
  Train(*p.host, total);
  Train(*p.device, total);
  EXPECT_EQ(Read(*p.device, v1::BUFFER_PARAMS), Read(*p.host, v1::BUFFER_PARAMS));
  EXPECT_EQ(Read(*p.device, v1::BUFFER_GRADS), Read(*p.host, v1::BUFFER_GRADS));
  for (const char* t : {"w", "b"}) {
    for (v1::StateKind k : {v1::STATE_PARAM, v1::STATE_GRAD, v1::STATE_EXP_AVG,
                            v1::STATE_EXP_AVG_SQ}) {
      std::vector<float> d = InspectValues(*p.device, t, k);
      EXPECT_FALSE(d.empty());
      EXPECT_EQ(d, InspectValues(*p.host, t, k)) << t << " state " << k;
    }
  }
  EXPECT_EQ(p.device->Status().steps_skipped(), 1);
  EXPECT_GT(p.memory->copies(), 0);
}

TEST(DeviceState, CheckpointSavesAndRestoresThroughTheMemory) {
  std::string root = ::testing::TempDir() + "sherd-devckpt-" + std::to_string(getpid());
  std::filesystem::remove_all(root);
  std::vector<float> master, avg_sq, params;
  {
    Pair p(root);
    ASSERT_TRUE(p.device->PrepareCheckpoints().ok());
    auto reg = p.host->Register(Model());
    ASSERT_TRUE(reg.ok());
    Train(*p.device, reg->params().elements());
    ASSERT_TRUE(p.device->Checkpoint().ok());
    ASSERT_TRUE(p.device->WaitForCheckpoint(absl::Seconds(60)));
    EXPECT_EQ(p.device->CheckpointStatus().last_committed_step(), 3);
    master = InspectValues(*p.device, "w", v1::STATE_PARAM);
    avg_sq = InspectValues(*p.device, "w", v1::STATE_EXP_AVG_SQ);
    params = Read(*p.device, v1::BUFFER_PARAMS);
  }
  Pair q(root);
  auto reg = q.device->Register(Model());
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE(reg->initialized());
  EXPECT_EQ(reg->next_step(), 4);
  EXPECT_EQ(InspectValues(*q.device, "w", v1::STATE_PARAM), master);
  EXPECT_EQ(InspectValues(*q.device, "w", v1::STATE_EXP_AVG_SQ), avg_sq);
  EXPECT_EQ(Read(*q.device, v1::BUFFER_PARAMS), params);
  std::filesystem::remove_all(root);
}

TEST(DeviceState, TheCpuRunnerRefusesDeviceState) {
  ServerOptions o;
  o.state_memory = std::make_shared<GuardedMemory>();
  ShardServer s(o, CreateSingleRankCollective());
  ASSERT_TRUE(s.Register(Model()).ok());
  ASSERT_TRUE(s.InitParams({}).ok());
  v1::StepRequest req;
  req.set_step(1);
  req.set_lr(0.1f);
  auto r = s.Step(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("guarded:0"), std::string::npos) << r.status();
}

TEST(DeviceFlag, AutoPicksCpuWithoutAGpuAndCudaSaysWhy) {
  ServerConfig c;
  c.device = "auto";
  auto b = ResolveDevice(c);
  ASSERT_TRUE(b.ok()) << b.status();
  const std::string why = GpuUnavailableReason();
  if (!why.empty()) {
    EXPECT_EQ(c.device, "cpu");
    EXPECT_EQ(b->memory, nullptr);
    ServerConfig cuda;
    cuda.device = "cuda";
    auto r = ResolveDevice(cuda);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(r.status().code() == absl::StatusCode::kFailedPrecondition ||
                r.status().code() == absl::StatusCode::kUnimplemented)
        << r.status();
    EXPECT_EQ(r.status().message().rfind("--device cuda: ", 0), 0u) << r.status();
  } else {
    EXPECT_EQ(c.device, "cuda");
    ASSERT_NE(b->memory, nullptr);
    EXPECT_EQ(b->memory->name(), "cuda:0");
  }
  ServerConfig cpu;
  cpu.device = "cpu";
  auto h = ResolveDevice(cpu);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->memory, nullptr);
  EXPECT_EQ(h->runner, nullptr);
}

}  // namespace
}  // namespace sherd
