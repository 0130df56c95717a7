// Internal: a fixed set of worker threads that all run one job at a time,
// for the optimizer's data-parallel loops.
//
// ThreadPool(n) starts n - 1 threads once; Run(fn) calls fn(w) for every
// w in [0, n) — w = 0 on the calling thread — and returns when all calls
// have returned. Nothing is allocated and no thread is created per Run; with
// n == 1 Run() is a plain call with no synchronization. Run() must not be
// called concurrently or re-entrantly on one pool; fn must not block on
// another participant (they may not all be running at once).
//
// Idle workers sleep on a futex (std::atomic::wait), so an idle pool costs
// no CPU on a shared machine.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace sherd::internal {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  void Run(absl::FunctionRef<void(int)> fn);

 private:
  void WorkerLoop(int index);

  const int size_;
  std::vector<std::thread> workers_;
  // The job of the current Run(); written before generation_ is bumped.
  const absl::FunctionRef<void(int)>* job_ = nullptr;
  bool stop_ = false;
  // Separate cache lines: workers poll generation_ while the caller counts
  // completions on pending_.
  alignas(64) std::atomic<uint32_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};
};

}  // namespace sherd::internal
