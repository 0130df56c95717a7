// CUDA IPC round trip between two processes, the way a trainer will map the
// server's device buffers: the parent allocates and fills a buffer and
// exports its handle; a child process opens the handle, checks what the
// parent wrote, writes its own pattern and exits; the parent sees it.
//
// The child is this binary again (fork + exec with --ipc_child=<hex>): a
// forked child must not touch the CUDA context it inherited, and a process
// cannot open its own IPC handles. Hence a main() of its own.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cuda_kernels/device.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace sherd {
namespace {

constexpr int64_t kCount = 1 << 20;
constexpr char kChildFlag[] = "--ipc_child=";

float ParentValue(int64_t i) { return static_cast<float>(i) * 0.5f + 1; }
float ChildValue(int64_t i) { return static_cast<float>(i) * -2.0f - 3; }

// Exit codes say which step failed, so the parent's message is specific.
int RunChild(const char* hex) {
  absl::StatusOr<CudaIpcHandle> h = IpcHandleFromHex(hex);
  if (!h.ok()) return 10;
  if (!CudaSetDevice(0).ok()) return 11;
  absl::StatusOr<void*> p = OpenIpcHandle(*h);
  if (!p.ok()) {
    std::fprintf(stderr, "child: %s\n", std::string(p.status().message()).c_str());
    return 12;
  }
  std::vector<float> v(kCount);
  if (!Copy(v.data(), *p, kCount * 4).ok()) return 13;
  for (int64_t i = 0; i < kCount; ++i) {
    if (v[i] != ParentValue(i)) return 14;
  }
  for (int64_t i = 0; i < kCount; ++i) v[i] = ChildValue(i);
  if (!Copy(*p, v.data(), kCount * 4).ok()) return 15;
  if (!CudaDeviceSynchronize().ok()) return 16;
  if (!CloseIpcHandle(*p).ok()) return 17;
  return 0;
}

class CudaIpcTest : public cuda_test::CudaTest {};

TEST_F(CudaIpcTest, ChildProcessSeesAndWritesTheParentsBuffer) {
  cuda_test::DeviceBuffer buf(kCount * 4);
  std::vector<float> v(kCount);
  for (int64_t i = 0; i < kCount; ++i) v[i] = ParentValue(i);
  buf.Upload(v);
  absl::StatusOr<CudaIpcHandle> handle = ExportIpcHandle(buf.as<float>());
  ASSERT_TRUE(handle.ok()) << handle.status();
  const std::string arg = kChildFlag + IpcHandleToHex(*handle);

  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    // Nothing CUDA between fork and exec.
    execl("/proc/self/exe", "cuda_ipc_test", arg.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  pid_t done = 0;
  while ((done = waitpid(pid, &status, WNOHANG)) == 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "child did not finish within 60 s";
  }
  ASSERT_TRUE(WIFEXITED(status)) << "child died by signal";
  ASSERT_EQ(WEXITSTATUS(status), 0)
      << "child failed at step " << WEXITSTATUS(status)
      << " (10 handle, 12 open, 14 parent data wrong, 15 write)";
  const std::vector<float> back = buf.Download<float>(kCount);
  for (int64_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(back[i], ChildValue(i)) << i;
  }
}

TEST_F(CudaIpcTest, ExportOfHostMemoryFails) {
  std::vector<float> host(16);
  EXPECT_FALSE(ExportIpcHandle(host.data()).ok());
}

TEST(CudaIpcHandle, HexRoundTripAndRejects) {
  CudaIpcHandle h;
  for (size_t i = 0; i < h.bytes.size(); ++i) h.bytes[i] = static_cast<char>(i * 37);
  const std::string hex = IpcHandleToHex(h);
  EXPECT_EQ(hex.size(), 128u);
  absl::StatusOr<CudaIpcHandle> back = IpcHandleFromHex(hex);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->bytes, h.bytes);
  EXPECT_FALSE(IpcHandleFromHex(hex.substr(1)).ok());
  EXPECT_FALSE(IpcHandleFromHex(std::string(128, 'g')).ok());
}

}  // namespace
}  // namespace sherd

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], sherd::kChildFlag,
                     sizeof sherd::kChildFlag - 1) == 0) {
      return sherd::RunChild(argv[i] + sizeof sherd::kChildFlag - 1);
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
