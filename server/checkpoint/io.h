// POSIX file helpers for the checkpoint module: every failure becomes an
// absl::Status that names the path, and the durability steps (fsync of a
// file, fsync of the directory holding a new name) are explicit calls so the
// commit protocol in writer.cc reads as the sequence it is.
//
// Ownership: ScopedFd owns one descriptor and closes it. Threads: functions
// are reentrant; a ScopedFd is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sherd::internal {

// errno -> Status naming the operation and path. ENOSPC, EDQUOT and EFBIG
// (file-size limit) are RESOURCE_EXHAUSTED: a full disk is not a bug.
absl::Status ErrnoStatus(int err, absl::string_view op, absl::string_view path);

class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(ScopedFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  ScopedFd& operator=(ScopedFd&& o) noexcept;
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd();
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

absl::StatusOr<ScopedFd> OpenForWrite(const std::string& path);  // truncates
absl::StatusOr<ScopedFd> OpenForRead(const std::string& path);

// Writes all `n` bytes at the current offset, retrying short writes.
absl::Status WriteAll(int fd, const void* data, size_t n,
                      const std::string& path);
// Reads exactly `n` bytes at `offset`; a short read is DATA_LOSS (the file
// is shorter than the manifest says).
absl::Status PreadAll(int fd, void* data, size_t n, int64_t offset,
                      const std::string& path);
absl::StatusOr<int64_t> FileSize(int fd, const std::string& path);

absl::Status FsyncFd(int fd, const std::string& path);
absl::Status FsyncDir(const std::string& dir);
absl::Status MakeDirs(const std::string& dir);  // mkdir -p
// rename(2); a directory rename onto an existing name fails.
absl::Status Rename(const std::string& from, const std::string& to);

// Reads a whole small file, refusing anything larger than `max_bytes`.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          int64_t max_bytes);
// Writes `data` to `path` (truncating) and fsyncs it.
absl::Status WriteFileSynced(const std::string& path, absl::string_view data);

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Names in `dir` (no "." / ".."), unsorted.
absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir);
// rm -rf, without following symlinks. Missing `path` is OK.
absl::Status RemoveTree(const std::string& path);

std::string JoinPath(absl::string_view dir, absl::string_view name);

}  // namespace sherd::internal
