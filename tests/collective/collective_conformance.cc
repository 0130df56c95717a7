// The conformance tests themselves; see collective_conformance.h. Values are
// small integers stored as floats so that every sum is exact and results can
// be compared with ==, whatever order a backend adds them in.
#include "tests/collective/collective_conformance.h"

#include <atomic>
#include <cmath>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"

namespace sherd::collective_test {
namespace {

using ::testing::TestParamInfo;

constexpr absl::Duration kHealthyTimeout = absl::Seconds(30);
constexpr int64_t kChunks[] = {1, 7, 1000, 100003};

// Runs fn(collective, rank) on one thread per rank and joins them all.
void RunOnRanks(Group& group,
                const std::function<void(Collective&, int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < static_cast<int>(group.size()); ++r) {
    threads.emplace_back([&, r] { fn(*group[r], r); });
  }
  for (std::thread& t : threads) t.join();
}

float GradValue(int rank, int64_t i, int iteration = 0) {
  return static_cast<float>((i * 131 + rank * 17 + iteration * 29) % 4096);
}

float ParamValue(int rank, int64_t j, int iteration = 0) {
  return static_cast<float>(rank * 4096 + (j + iteration) % 4093);
}

// A buffer whose data starts `misalign` floats past an aligned allocation,
// so backends see pointers of different alignment.
struct Buffer {
  Buffer(int64_t n, int misalign) : storage(n + misalign), misalign(misalign) {}
  float* data() { return storage.data() + misalign; }
  std::vector<float> storage;
  int misalign;
};

// One reduce-scatter then one all-gather on `buf`, checked on this rank.
void CheckStep(Collective& c, int rank, float* buf, int64_t chunk,
               int iteration) {
  const int world = c.world_size();
  for (int64_t i = 0; i < world * chunk; ++i) {
    buf[i] = GradValue(rank, i, iteration);
  }
  ASSERT_TRUE(c.ReduceScatter(buf, chunk).ok());
  for (int64_t j = 0; j < chunk; ++j) {
    const int64_t i = rank * chunk + j;
    float want = 0;
    for (int q = 0; q < world; ++q) want += GradValue(q, i, iteration);
    ASSERT_EQ(buf[i], want) << "rank " << rank << " element " << i;
  }
  for (int64_t i = 0; i < world * chunk; ++i) buf[i] = NAN;
  for (int64_t j = 0; j < chunk; ++j) {
    buf[rank * chunk + j] = ParamValue(rank, j, iteration);
  }
  ASSERT_TRUE(c.AllGather(buf, chunk).ok());
  for (int q = 0; q < world; ++q) {
    for (int64_t j = 0; j < chunk; ++j) {
      ASSERT_EQ(buf[q * chunk + j], ParamValue(q, j, iteration))
          << "rank " << rank << " chunk of " << q << " element " << j;
    }
  }
}

}  // namespace

std::vector<ConformanceCase> ConformanceCases(CollectiveTestHelper* helper) {
  std::vector<ConformanceCase> cases;
  for (int w : helper->world_sizes()) cases.push_back({helper, w});
  return cases;
}

std::string ConformanceCaseName(const TestParamInfo<ConformanceCase>& info) {
  return absl::StrCat(info.param.helper->name(), "_W", info.param.world_size);
}

std::string FailureCaseName(const TestParamInfo<CollectiveTestHelper*>& info) {
  return info.param->name();
}

void PrintTo(const ConformanceCase& c, std::ostream* os) {
  *os << c.helper->name() << " W" << c.world_size;
}

void PrintTo(CollectiveTestHelper* helper, std::ostream* os) {
  *os << helper->name();
}

Group MakeGroup(CollectiveTestHelper& helper, KvStore& store, int world_size,
                absl::Duration timeout) {
  static std::atomic<int> next_group{0};
  const std::string prefix = absl::StrCat("group", next_group++);
  std::vector<absl::StatusOr<std::unique_ptr<Collective>>> made(world_size);
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      made[r] = helper.Create(store, prefix, r, world_size, timeout);
    });
  }
  for (std::thread& t : threads) t.join();
  Group group;
  for (int r = 0; r < world_size; ++r) {
    if (!made[r].ok()) {
      ADD_FAILURE() << "rank " << r << ": " << made[r].status();
      return {};
    }
    group.push_back(*std::move(made[r]));
  }
  return group;
}

void CollectiveConformance::SetUp() {
  group_ = MakeGroup(*GetParam().helper, store_, GetParam().world_size,
                     kHealthyTimeout);
  ASSERT_EQ(static_cast<int>(group_.size()), GetParam().world_size);
}

TEST_P(CollectiveConformance, ReportsRankAndWorldSize) {
  for (int r = 0; r < static_cast<int>(group_.size()); ++r) {
    EXPECT_EQ(group_[r]->rank(), r);
    EXPECT_EQ(group_[r]->world_size(), GetParam().world_size);
  }
}

TEST_P(CollectiveConformance, ReduceScatterAndAllGatherAtEverySize) {
  const int world = GetParam().world_size;
  RunOnRanks(group_, [&](Collective& c, int rank) {
    for (int64_t chunk : kChunks) {
      for (int misalign : {0, 1, 3}) {
        SCOPED_TRACE(absl::StrCat("chunk ", chunk, " misalign ", misalign));
        Buffer buf(world * chunk, misalign);
        CheckStep(c, rank, buf.data(), chunk, /*iteration=*/0);
      }
    }
  });
}

TEST_P(CollectiveConformance, AllReduceSumsDoubles) {
  const int world = GetParam().world_size;
  RunOnRanks(group_, [&](Collective& c, int rank) {
    for (size_t n : {1, 3, 17}) {
      std::vector<double> values(n);
      for (size_t i = 0; i < n; ++i) values[i] = rank + 0.5 * i;
      ASSERT_TRUE(c.AllReduce(values).ok());
      for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(values[i], world * (world - 1) / 2.0 + world * 0.5 * i);
      }
    }
    EXPECT_TRUE(c.AllReduce({}).ok());
  });
}

TEST_P(CollectiveConformance, BarrierWaitsForEveryRank) {
  const int world = GetParam().world_size;
  std::atomic<int> arrived{0};
  RunOnRanks(group_, [&](Collective& c, int rank) {
    for (int round = 1; round <= 3; ++round) {
      arrived++;
      ASSERT_TRUE(c.Barrier().ok());
      // Fast ranks may already have arrived at the next round.
      EXPECT_GE(arrived.load(), round * world);
    }
  });
}

TEST_P(CollectiveConformance, RepeatedCallsOnTheSameBuffer) {
  const int world = GetParam().world_size;
  RunOnRanks(group_, [&](Collective& c, int rank) {
    Buffer buf(world * 1000, 0);
    for (int it = 0; it < 20; ++it) {
      SCOPED_TRACE(absl::StrCat("iteration ", it));
      CheckStep(c, rank, buf.data(), 1000, it);
    }
  });
}

TEST_P(CollectiveConformance, AlternatingBuffersKeepResultsApart) {
  const int world = GetParam().world_size;
  RunOnRanks(group_, [&](Collective& c, int rank) {
    // a and b share a size but not an address; c differs in size too.
    Buffer a(world * 1000, 0), b(world * 1000, 1), small(world * 7, 0);
    Buffer* order[] = {&a, &b, &small};
    const int64_t chunk_of[] = {1000, 1000, 7};
    for (int it = 0; it < 20; ++it) {
      SCOPED_TRACE(absl::StrCat("iteration ", it));
      CheckStep(c, rank, order[it % 3]->data(), chunk_of[it % 3], it);
    }
  });
}

TEST_P(CollectiveConformance, MoreBuffersThanAnyCacheHolds) {
  const int world = GetParam().world_size;
  RunOnRanks(group_, [&](Collective& c, int rank) {
    std::vector<Buffer> bufs;
    for (int i = 0; i < 12; ++i) bufs.emplace_back(world * 7, i % 2);
    for (int pass = 0; pass < 2; ++pass) {
      for (int i = 0; i < 12; ++i) {
        CheckStep(c, rank, bufs[i].data(), 7, pass * 12 + i);
      }
    }
  });
}

TEST_P(CollectiveConformance, RejectsBadArgumentsAndStaysUsable) {
  const int world = GetParam().world_size;
  RunOnRanks(group_, [&](Collective& c, int rank) {
    const auto kInvalid = absl::StatusCode::kInvalidArgument;
    float x[4 * 4] = {};
    EXPECT_EQ(c.ReduceScatter(nullptr, 5).code(), kInvalid);
    EXPECT_EQ(c.ReduceScatter(x, -1).code(), kInvalid);
    EXPECT_EQ(c.AllGather(nullptr, 5).code(), kInvalid);
    EXPECT_EQ(c.AllGather(x, -1).code(), kInvalid);
    EXPECT_EQ(c.AllReduce(std::span<double>(static_cast<double*>(nullptr), 3)).code(), kInvalid);
    // Empty operations are fine, even without a buffer.
    EXPECT_TRUE(c.ReduceScatter(nullptr, 0).ok());
    EXPECT_TRUE(c.AllGather(nullptr, 0).ok());
    Buffer buf(world * 7, 0);
    CheckStep(c, rank, buf.data(), 7, 0);
  });
}

namespace {

using Op = std::function<absl::Status(Collective&)>;

// Rank 0 runs `op` alone: it must give up with UNAVAILABLE (never hang: the
// test's timeout bounds it), and keep failing with UNAVAILABLE once broken;
// rank 1, whose peer gave up, must not hang either. No timing assertions:
// these machines are shared and noisy.
void ExpectTimeoutThenFailFast(CollectiveTestHelper& helper,
                               absl::Duration timeout, const Op& op) {
  InMemoryKvStore store;
  Group group = MakeGroup(helper, store, 2, timeout);
  ASSERT_EQ(group.size(), 2u);
  absl::Status status = op(*group[0]);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  status = op(*group[0]);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  status = op(*group[1]);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
}

}  // namespace

TEST_P(CollectiveFailureConformance, ReduceScatterTimesOut) {
  std::vector<float> buf(2 * 1000, 1.0f);
  ExpectTimeoutThenFailFast(*GetParam(), kTimeout, [&](Collective& c) {
    return c.ReduceScatter(buf.data(), 1000);
  });
}

TEST_P(CollectiveFailureConformance, AllGatherTimesOut) {
  std::vector<float> buf(2 * 1000, 1.0f);
  ExpectTimeoutThenFailFast(*GetParam(), kTimeout, [&](Collective& c) {
    return c.AllGather(buf.data(), 1000);
  });
}

TEST_P(CollectiveFailureConformance, AllReduceTimesOut) {
  std::vector<double> values(3, 1.0);
  ExpectTimeoutThenFailFast(*GetParam(), kTimeout,
                            [&](Collective& c) { return c.AllReduce(values); });
}

TEST_P(CollectiveFailureConformance, BarrierTimesOut) {
  ExpectTimeoutThenFailFast(*GetParam(), kTimeout,
                            [](Collective& c) { return c.Barrier(); });
}

}  // namespace sherd::collective_test
