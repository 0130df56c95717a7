// A real sherd-server with --device cuda, driven by this process as its
// trainer: Register hands out CUDA IPC handles, the client maps them, the
// "backward" writes G on the device, Step runs the GPU pipeline, and P,
// the master and the moments must match a --device cpu server fed the same
// data (docs/gpu.md argues bit-for-bit; the requirement is 1e-6 relative).
// Also: the inline data plane against device state, and sherdctl's Inspect.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "client/client.h"
#include "cuda_kernels/device.h"
#include "sherd/v1/admin.grpc.pb.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::ServerProcess;

ModelDef Model() {
  return ModelDef{.name = "gpu-mlp",
                  .tensors = {{"fc1.weight", {257, 129}, ""},
                              {"fc1.bias", {257}, "no_decay"},
                              {"fc2.weight", {10, 257}, ""}},
                  .groups = {{.name = "no_decay", .lr_scale = 0.5f, .weight_decay = 0}}};
}

std::vector<float> Params(int64_t n) {
  std::vector<float> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = 0.05f * std::sin(0.013f * i) + 1e-3f;
  return p;
}

std::vector<float> Grads(int64_t n, int step) {
  std::vector<float> g(n);
  for (int64_t i = 0; i < n; ++i) {
    g[i] = 0.02f * std::cos(0.007f * i * step + step) + 2e-4f * step;
  }
  return g;
}

// Inspect values of one state of one tensor (what sherdctl inspect reads).
std::vector<float> Inspect(const std::string& address, const std::string& tensor,
                           v1::StateKind kind) {
  auto stub = v1::Admin::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::InspectRequest req;
  req.set_name(tensor);
  req.set_state(kind);
  req.set_values(true);
  req.set_max_values(1 << 20);
  v1::InspectResponse r;
  EXPECT_TRUE(stub->Inspect(&ctx, req, &r).ok());
  return {r.values().begin(), r.values().end()};
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0, exact = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = 1e-6 * std::max(std::fabs(static_cast<double>(want[i])), 1e-6);
    if (std::fabs(static_cast<double>(got[i]) - want[i]) > tol) {
      if (++bad <= 5) ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i];
    }
    exact += got[i] == want[i];
  }
  EXPECT_EQ(bad, 0) << what;
  std::printf("%s: %lld of %zu bit-identical to the CPU server\n", what.c_str(),
              static_cast<long long>(exact), got.size());
}

constexpr int kSteps = 4;

// The same training on a CPU server through shared memory: the reference.
std::vector<float> TrainOnCpu(std::string* address, ServerProcess* server) {
  auto s = ServerProcess::Start({"--device", "cpu"});
  EXPECT_TRUE(s.ok()) << s.status();
  *server = std::move(*s);
  *address = server->address();
  auto c = Client::Connect(*address);
  EXPECT_TRUE(c.ok());
  auto info = (*c)->Register(Model());
  EXPECT_TRUE(info.ok()) << info.status();
  const int64_t n = (*c)->layout().total();
  std::vector<float> p = Params(n);
  std::copy(p.begin(), p.end(), (*c)->params().begin());
  EXPECT_TRUE((*c)->InitParams().ok());
  for (int step = 1; step <= kSteps; ++step) {
    std::vector<float> g = Grads(n, step);
    std::copy(g.begin(), g.end(), (*c)->grads().begin());
    auto r = (*c)->Step({.lr = 1e-2f, .max_grad_norm = step == 3 ? 0.1f : 0.0f});
    EXPECT_TRUE(r.ok() && r->applied) << r.status();
  }
  return std::vector<float>((*c)->params().begin(), (*c)->params().end());
}

TEST(GpuServer, RegisterStepFetchThroughCudaIpcMatchesTheCpuServer) {
  SHERD_SKIP_WITHOUT_CUDA_DEVICE();
  std::string cpu_address;
  ServerProcess cpu_server;
  const std::vector<float> want = TrainOnCpu(&cpu_address, &cpu_server);

  auto gpu_server = ServerProcess::Start({"--device", "cuda", "--cuda-device", "0"});
  ASSERT_TRUE(gpu_server.ok()) << gpu_server.status();
  auto c = Client::Connect(gpu_server->address());
  ASSERT_TRUE(c.ok());
  auto info = (*c)->Register(Model());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device, "cuda:0");
  ASSERT_TRUE(info->device_buffers);
  ASSERT_TRUE(CudaSetDevice(0).ok());
  float* p_dev = (*c)->params().data();
  float* g_dev = (*c)->grads().data();
  ASSERT_TRUE(IsDevicePointer(p_dev));
  ASSERT_TRUE(IsDevicePointer(g_dev));
  const int64_t n = (*c)->layout().total();
  std::vector<float> p = Params(n);
  ASSERT_TRUE(Copy(p_dev, p.data(), n * sizeof(float)).ok());
  ASSERT_TRUE((*c)->InitParams().ok());
  for (int step = 1; step <= kSteps; ++step) {
    std::vector<float> g = Grads(n, step);
    // The "backward": an asynchronous write on a stream, which Step must
    // wait for (StepOptions::cuda_stream).
    auto stream = CudaStream::Create();
    ASSERT_TRUE(stream.ok());
    ASSERT_TRUE(CopyAsync(g_dev, g.data(), n * sizeof(float), stream->get()).ok());
    auto r = (*c)->Step({.lr = 1e-2f, .max_grad_norm = step == 3 ? 0.1f : 0.0f,
                         .cuda_stream = stream->get()});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->applied) << r->skip_reason;
    if (step == 3) EXPECT_LT(r->clip_coef, 1.0);
  }
  std::vector<float> got(n);
  ASSERT_TRUE(Copy(got.data(), p_dev, n * sizeof(float)).ok());
  ExpectClose(got, want, "P after 4 steps");
  for (const char* t : {"fc1.weight", "fc1.bias", "fc2.weight"}) {
    for (v1::StateKind k : {v1::STATE_PARAM, v1::STATE_EXP_AVG, v1::STATE_EXP_AVG_SQ}) {
      ExpectClose(Inspect(gpu_server->address(), t, k), Inspect(cpu_address, t, k),
                  std::string(t) + " state " + std::to_string(k));
    }
  }

  // A non-finite gradient: skipped, nothing changes.
  std::vector<float> g = Grads(n, 9);
  g[17] = INFINITY;
  ASSERT_TRUE(Copy(g_dev, g.data(), n * sizeof(float)).ok());
  auto skipped = (*c)->Step({.lr = 1e-2f});
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_FALSE(skipped->applied);
  std::vector<float> after(n);
  ASSERT_TRUE(Copy(after.data(), p_dev, n * sizeof(float)).ok());
  EXPECT_EQ(after, got);

  // The inline data plane against device state (a trainer on another host).
  auto remote = Client::Connect(gpu_server->address(), {.use_shared_memory = false});
  ASSERT_TRUE(remote.ok());
  auto rinfo = (*remote)->Register(Model());
  ASSERT_TRUE(rinfo.ok()) << rinfo.status();
  EXPECT_FALSE(rinfo->device_buffers);
  std::vector<float> fetched(n);
  ASSERT_TRUE((*remote)->FetchParams(fetched).ok());
  EXPECT_EQ(fetched, got);
  // A CPU trainer on this host (map_device_buffers = false) gets host views.
  auto cpu_trainer = Client::Connect(gpu_server->address(), {.map_device_buffers = false});
  ASSERT_TRUE(cpu_trainer.ok());
  auto cinfo = (*cpu_trainer)->Register(Model());
  ASSERT_TRUE(cinfo.ok()) << cinfo.status();
  EXPECT_FALSE(cinfo->device_buffers);
  EXPECT_FALSE(cinfo->shared_memory);
  EXPECT_EQ(std::vector<float>((*cpu_trainer)->params().begin(), (*cpu_trainer)->params().end()),
            got);
  EXPECT_TRUE(gpu_server->Stop().ok());
  EXPECT_TRUE(cpu_server.Stop().ok());
}

TEST(GpuServer, BadDeviceOrdinalIsRefusedAtStart) {
  SHERD_SKIP_WITHOUT_CUDA_DEVICE();
  auto s = ServerProcess::Start({"--device", "cuda", "--cuda-device", "99"});
  EXPECT_FALSE(s.ok());
}

}  // namespace
}  // namespace sherd
