#include "common/shm_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sherd {
namespace {

absl::Status ErrnoStatus(absl::string_view what, const std::string& name) {
  int e = errno;
  std::string msg = absl::StrCat(what, " ", name, ": ", std::strerror(e));
  if (e == EEXIST) return absl::AlreadyExistsError(msg);
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == ENOMEM || e == ENOSPC) return absl::ResourceExhaustedError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

ShmRegion::~ShmRegion() { Reset(); }

ShmRegion::ShmRegion(ShmRegion&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      name_(std::move(o.name_)),
      owner_(std::exchange(o.owner_, false)) {}

ShmRegion& ShmRegion::operator=(ShmRegion&& o) noexcept {
  if (this != &o) {
    Reset();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    name_ = std::move(o.name_);
    owner_ = std::exchange(o.owner_, false);
  }
  return *this;
}

void ShmRegion::Reset() {
  if (data_ != nullptr) munmap(data_, size_);
  if (owner_ && !name_.empty()) shm_unlink(name_.c_str());
  data_ = nullptr;
  size_ = 0;
  owner_ = false;
  name_.clear();
}

absl::StatusOr<ShmRegion> ShmRegion::Create(const std::string& name,
                                            size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("empty shared region");
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return ErrnoStatus("shm_open", name);
  // posix_fallocate reserves the pages now, so a full /dev/shm fails here
  // with a status instead of a SIGBUS on first touch later.
  int rc = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (rc != 0) {
    errno = rc;
    absl::Status s = ErrnoStatus("allocating shared memory", name);
    close(fd);
    shm_unlink(name.c_str());
    return s;
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    absl::Status s = ErrnoStatus("mmap", name);
    shm_unlink(name.c_str());
    return s;
  }
  ShmRegion r;
  r.data_ = p;
  r.size_ = bytes;
  r.name_ = name;
  r.owner_ = true;
  return r;
}

absl::StatusOr<ShmRegion> ShmRegion::Open(const std::string& name,
                                          size_t bytes) {
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) return ErrnoStatus("shm_open", name);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    absl::Status s = ErrnoStatus("fstat", name);
    close(fd);
    return s;
  }
  if (static_cast<size_t>(st.st_size) != bytes) {
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("shared region ", name, " has ", st.st_size,
                     " bytes, expected ", bytes));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return ErrnoStatus("mmap", name);
  ShmRegion r;
  r.data_ = p;
  r.size_ = bytes;
  r.name_ = name;
  r.owner_ = false;
  return r;
}

}  // namespace sherd
