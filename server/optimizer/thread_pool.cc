#include "server/optimizer/thread_pool.h"

#include <algorithm>

namespace sherd::internal {

ThreadPool::ThreadPool(int threads) : size_(std::max(threads, 1)) {
  workers_.reserve(size_ - 1);
  for (int w = 1; w < size_; ++w) {
    workers_.emplace_back([this, w] { WorkerLoop(w); });
  }
}

ThreadPool::~ThreadPool() {
  if (workers_.empty()) return;
  stop_ = true;
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Run(absl::FunctionRef<void(int)> fn) {
  if (workers_.empty()) {
    fn(0);
    return;
  }
  job_ = &fn;
  pending_.store(size_ - 1, std::memory_order_relaxed);
  // Release: job_ and pending_ are visible to a worker that sees the bump.
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  fn(0);
  // Acquire: the workers' writes are visible once pending_ reaches zero.
  for (int left = pending_.load(std::memory_order_acquire); left != 0;
       left = pending_.load(std::memory_order_acquire)) {
    pending_.wait(left, std::memory_order_acquire);
  }
  job_ = nullptr;
}

void ThreadPool::WorkerLoop(int index) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t now = generation_.load(std::memory_order_acquire);
    while (now == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      now = generation_.load(std::memory_order_acquire);
    }
    seen = now;
    if (stop_) return;
    (*job_)(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      pending_.notify_one();
    }
  }
}

}  // namespace sherd::internal
