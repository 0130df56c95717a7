// A StateMemory for CPU tests of the device path (server/state/
// state_memory.h): host pages that are PROT_NONE except while this object
// itself copies, so server code that dereferences "device" state directly,
// instead of going through ModelState::Copy, crashes the test instead of
// passing by accident. Unguard() opens the pages for a scope (the test's
// step runner, which stands in for the GPU kernels).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/state/state_memory.h"

namespace sherd::testing {

class GuardedMemory final : public StateMemory {
 public:
  ~GuardedMemory() override {
    for (auto& [p, len] : regions_) munmap(p, len);
  }

  std::string name() const override { return "guarded:0"; }
  int device() const override { return 0; }

  absl::StatusOr<void*> Allocate(size_t bytes) override {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t len = (bytes + page - 1) / page * page;
    void* p = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return absl::ResourceExhaustedError("mmap failed");
    absl::MutexLock l(&mu_);
    regions_[p] = len;
    if (open_ > 0) mprotect(p, len, PROT_READ | PROT_WRITE);
    return p;
  }

  void Release(void* ptr) override {
    absl::MutexLock l(&mu_);
    auto it = regions_.find(ptr);
    if (it == regions_.end()) return;
    munmap(it->first, it->second);
    regions_.erase(it);
  }

  absl::Status Copy(void* dst, const void* src, size_t bytes) override {
    Open();
    std::memmove(dst, src, bytes);
    Close();
    absl::MutexLock l(&mu_);
    ++copies_;
    return absl::OkStatus();
  }

  absl::Status Zero(void* dst, size_t bytes) override {
    Open();
    std::memset(dst, 0, bytes);
    Close();
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ExportHandle(void* base) override {
    return absl::StrCat("guarded@", reinterpret_cast<uintptr_t>(base));
  }

  // Pages stay readable and writable while the returned object lives.
  class Scope {
   public:
    explicit Scope(GuardedMemory& m) : m_(m) { m_.Open(); }
    ~Scope() { m_.Close(); }
   private:
    GuardedMemory& m_;
  };
  Scope Unguard() { return Scope(*this); }

  int64_t copies() const {
    absl::MutexLock l(&mu_);
    return copies_;
  }

 private:
  void Open() {
    absl::MutexLock l(&mu_);
    if (open_++ == 0) Protect(PROT_READ | PROT_WRITE);
  }
  void Close() {
    absl::MutexLock l(&mu_);
    if (--open_ == 0) Protect(PROT_NONE);
  }
  void Protect(int prot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [p, len] : regions_) mprotect(p, len, prot);
  }

  mutable absl::Mutex mu_;
  std::map<void*, size_t> regions_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t copies_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sherd::testing
