// The NCCL backend. One GPU holds one rank (NCCL refuses two ranks of one
// communicator on one device), so the group tests run at world size 1 and
// the multi-rank failure suite is Gloo's; what one GPU can show is here:
//  - the backend-neutral conformance suite at W=1, through an adapter that
//    stages the suite's host buffers in device memory (same misalignment),
//    since this backend takes device pointers;
//  - device buffers directly, AllReduceDevice, host pointers rejected;
//  - rendezvous and creation timeouts with a peer that never comes.
// Factory argument checks and the rendezvous timeout of a non-zero rank run
// without a GPU.
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "cuda_kernels/device.h"
#include "gtest/gtest.h"
#include "server/collective/nccl/factory.h"
#include "server/collective/nccl/nccl_collective.h"
#include "tests/collective/collective_conformance.h"
#include "tests/cuda/cuda_test_util.h"

namespace sherd::collective_test {
namespace {

// Host buffers in, device buffers to NCCL: copy in, run, copy out. Null or
// empty arguments go straight through so the backend's own checks answer.
class StagedCollective final : public Collective {
 public:
  explicit StagedCollective(std::unique_ptr<Collective> inner)
      : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::string Describe() const override { return "staged " + inner_->Describe(); }
  absl::Status ReduceScatter(float* buf, int64_t chunk) override {
    return Staged(buf, chunk, &Collective::ReduceScatter);
  }
  absl::Status AllGather(float* buf, int64_t chunk) override {
    return Staged(buf, chunk, &Collective::AllGather);
  }
  absl::Status AllReduce(std::span<double> values) override {
    return inner_->AllReduce(values);
  }
  absl::Status Barrier() override { return inner_->Barrier(); }

 private:
  absl::Status Staged(float* buf, int64_t chunk,
                      absl::Status (Collective::*op)(float*, int64_t)) {
    if (buf == nullptr || chunk <= 0) return (inner_.get()->*op)(buf, chunk);
    const int64_t n = world_size() * chunk;
    const int misalign = (reinterpret_cast<uintptr_t>(buf) / 4) % 4;
    cuda_test::DeviceBuffer d((n + 4) * sizeof(float));
    float* dev = d.as<float>(misalign);
    absl::Status s = Copy(dev, buf, n * sizeof(float));
    if (s.ok()) s = (inner_.get()->*op)(dev, chunk);
    if (s.ok()) s = Copy(buf, dev, n * sizeof(float));
    return s;
  }

  std::unique_ptr<Collective> inner_;
};

class NcclHelper : public CollectiveTestHelper {
 public:
  std::string name() const override { return "Nccl"; }
  // No device, no cases (the skipped test below says why).
  std::vector<int> world_sizes() const override {
    return NoCudaDeviceReason().empty() ? std::vector<int>{1}
                                        : std::vector<int>{};
  }
  absl::StatusOr<std::unique_ptr<Collective>> Create(
      KvStore& store, const std::string& prefix, int rank, int world_size,
      absl::Duration timeout) override {
    NcclOptions options;
    options.timeout = timeout;
    options.prefix = prefix;
    absl::StatusOr<std::unique_ptr<Collective>> c =
        CreateNcclCollective(store, rank, world_size, options);
    if (!c.ok()) return c.status();
    return std::unique_ptr<Collective>(
        std::make_unique<StagedCollective>(*std::move(c)));
  }
};

NcclHelper helper;

INSTANTIATE_TEST_SUITE_P(Nccl, CollectiveConformance,
                         ::testing::ValuesIn(ConformanceCases(&helper)),
                         ConformanceCaseName);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CollectiveConformance);
// Needs two ranks, i.e. two GPUs; the multi-rank failure logic is Gloo's.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CollectiveFailureConformance);

TEST(NcclConformance, RunsWhenADeviceIsVisible) {
  SHERD_SKIP_WITHOUT_CUDA_DEVICE();
  EXPECT_EQ(ConformanceCases(&helper).size(), 1u);
}

class NcclDeviceTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    NcclOptions options;
    options.timeout = absl::Seconds(30);
    options.prefix = "nccl_device_test";
    absl::StatusOr<std::unique_ptr<Collective>> c =
        CreateNcclCollective(store_, 0, 1, options);
    ASSERT_TRUE(c.ok()) << c.status();
    c_ = *std::move(c);
  }
  internal::NcclCollective& nccl() {
    return static_cast<internal::NcclCollective&>(*c_);
  }

  InMemoryKvStore store_;
  std::unique_ptr<Collective> c_;
};

TEST_F(NcclDeviceTest, InPlaceOnDeviceBuffersAtAnyAlignment) {
  for (int64_t chunk : {1, 7, 100003}) {
    for (int misalign : {0, 1, 3}) {
      std::vector<float> h(chunk);
      for (int64_t i = 0; i < chunk; ++i) h[i] = static_cast<float>(i % 977);
      cuda_test::DeviceBuffer d((chunk + 4) * 4);
      d.Upload(h, misalign);
      ASSERT_TRUE(c_->ReduceScatter(d.as<float>(misalign), chunk).ok());
      ASSERT_EQ(d.Download<float>(chunk, misalign), h);
      ASSERT_TRUE(c_->AllGather(d.as<float>(misalign), chunk).ok());
      ASSERT_EQ(d.Download<float>(chunk, misalign), h);
    }
  }
  ASSERT_TRUE(c_->Barrier().ok());
}

TEST_F(NcclDeviceTest, AllReduceDeviceAndHostDoubles) {
  std::vector<double> h = {1.5, -2.25, 1e300};
  cuda_test::DeviceBuffer d(h.size() * 8);
  d.Upload(h);
  ASSERT_TRUE(nccl().AllReduceDevice(d.as<double>(), 3).ok());
  EXPECT_EQ(d.Download<double>(3), h);
  std::vector<double> big(1000, 0.5);  // larger than the initial scratch
  ASSERT_TRUE(c_->AllReduce(big).ok());
  EXPECT_EQ(big, std::vector<double>(1000, 0.5));
}

TEST_F(NcclDeviceTest, RejectsHostPointersAndStaysUsable) {
  std::vector<float> host(64, 1.0f);
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(c_->ReduceScatter(host.data(), 64).code(), kInvalid);
  EXPECT_EQ(c_->AllGather(host.data(), 64).code(), kInvalid);
  std::vector<double> hd(4, 1.0);
  EXPECT_EQ(nccl().AllReduceDevice(hd.data(), 4).code(), kInvalid);
  cuda_test::DeviceBuffer d(64 * 4);
  d.Upload(host);
  EXPECT_TRUE(c_->ReduceScatter(d.as<float>(), 64).ok());
}

TEST(NcclRendezvous, RankZeroGivesUpWhenAPeerNeverJoins) {
  SHERD_SKIP_WITHOUT_CUDA_DEVICE();
  InMemoryKvStore store;
  NcclOptions options;
  options.timeout = absl::Seconds(2);
  options.prefix = "lonely";
  const absl::Time start = absl::Now();
  auto made = CreateNcclCollective(store, /*rank=*/0, /*world_size=*/2,
                                   options);
  EXPECT_EQ(made.status().code(), absl::StatusCode::kUnavailable)
      << made.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
}

TEST(NcclRendezvous, OtherRanksGiveUpWithoutRankZero) {
  InMemoryKvStore store;
  NcclOptions options;
  options.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  auto made = CreateNcclCollective(store, /*rank=*/1, /*world_size=*/2,
                                   options);
  EXPECT_EQ(made.status().code(), absl::StatusCode::kUnavailable)
      << made.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(NcclRendezvous, MalformedUniqueIdIsUnavailable) {
  InMemoryKvStore store;
  ASSERT_TRUE(store.Set("bad/unique_id", "not base64 of 128 bytes!").ok());
  NcclOptions options;
  options.prefix = "bad";
  options.timeout = absl::Seconds(1);
  EXPECT_EQ(CreateNcclCollective(store, 1, 2, options).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(NcclFactory, RejectsBadArguments) {
  InMemoryKvStore store;
  NcclOptions options;
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(CreateNcclCollective(store, 0, 0, options).status().code(),
            kInvalid);
  EXPECT_EQ(CreateNcclCollective(store, 2, 2, options).status().code(),
            kInvalid);
  EXPECT_EQ(CreateNcclCollective(store, -1, 2, options).status().code(),
            kInvalid);
  options.device = -1;
  EXPECT_EQ(CreateNcclCollective(store, 0, 1, options).status().code(),
            kInvalid);
  options.device = 0;
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(CreateNcclCollective(store, 0, 1, options).status().code(),
            kInvalid);
}

}  // namespace
}  // namespace sherd::collective_test
