#include "server/optimizer/thread_pool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace sherd::internal {
namespace {

TEST(ThreadPool, SizeOneRunsInlineOnTheCaller) {
  ThreadPool pool(1);
  EXPECT_EQ(pool.size(), 1);
  std::thread::id ran_on;
  pool.Run([&](int w) {
    EXPECT_EQ(w, 0);
    ran_on = std::this_thread::get_id();
  });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_EQ(ThreadPool(0).size(), 1);
}

TEST(ThreadPool, EveryWorkerRunsEachJobOnceAndIsDoneOnReturn) {
  for (int n : {2, 3, 5}) {
    ThreadPool pool(n);
    std::vector<int> hits(n, 0);  // plain ints: Run() must publish them
    for (int round = 0; round < 2000; ++round) {
      pool.Run([&](int w) { ++hits[w]; });
      for (int w = 0; w < n; ++w) ASSERT_EQ(hits[w], round + 1) << w;
    }
  }
}

TEST(ThreadPool, CallerIsWorkerZeroAndOthersAreDistinctThreads) {
  ThreadPool pool(3);
  std::vector<std::thread::id> ids(3);
  pool.Run([&](int w) { ids[w] = std::this_thread::get_id(); });
  EXPECT_EQ(ids[0], std::this_thread::get_id());
  EXPECT_NE(ids[1], ids[0]);
  EXPECT_NE(ids[2], ids[0]);
  EXPECT_NE(ids[1], ids[2]);
}

TEST(ThreadPool, DestroyWithoutRunning) {
  ThreadPool pool(4);
  SUCCEED();
}

}  // namespace
}  // namespace sherd::internal
