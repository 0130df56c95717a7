// A POSIX shared-memory region mapped into this process.
//
// The shard server Create()s the trainer-visible buffers and owns them: its
// region unlinks the name when destroyed. The client Open()s them by name and
// only unmaps. Memory is zero-filled on creation.
//
// Thread-safety: the object is not synchronized; the mapped bytes are shared
// with other processes and it is the protocol (Step) that orders access.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace sherd {

class ShmRegion {
 public:
  ShmRegion() = default;
  ~ShmRegion();
  ShmRegion(ShmRegion&& other) noexcept;
  ShmRegion& operator=(ShmRegion&& other) noexcept;
  ShmRegion(const ShmRegion&) = delete;
  ShmRegion& operator=(const ShmRegion&) = delete;

  // Creates a new object (fails with ALREADY_EXISTS if the name is taken)
  // of `bytes` bytes; this region owns the name.
  static absl::StatusOr<ShmRegion> Create(const std::string& name, size_t bytes);
  // Maps an existing object; fails unless its size is exactly `bytes`.
  static absl::StatusOr<ShmRegion> Open(const std::string& name, size_t bytes);

  void* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }
  bool owner() const { return owner_; }

  // Unmaps and, for the owner, unlinks the name now.
  void Reset();

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
  std::string name_;
  bool owner_ = false;
};

}  // namespace sherd
