#include "server/state/shm_names.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace sherd {
namespace {

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// The pid in "sherd.<pid>.r<rank>.<n>.params|grads"; -1 for any other name.
pid_t CreatorOf(absl::string_view name) {
  std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
  if (parts.size() != 5 || parts[0] != "sherd") return -1;
  if (parts[4] != "params" && parts[4] != "grads") return -1;
  if (parts[2].size() < 2 || parts[2][0] != 'r' || !AllDigits(parts[2].substr(1))) return -1;
  if (!AllDigits(parts[3]) || !AllDigits(parts[1])) return -1;
  int64_t pid = 0;
  if (!absl::SimpleAtoi(parts[1], &pid) || pid <= 0 || pid > (int64_t{1} << 31) - 1) return -1;
  return static_cast<pid_t>(pid);
}

bool Running(pid_t pid) {
  // EPERM: a process we may not signal, still a process.
  return kill(pid, 0) == 0 || errno != ESRCH;
}

}  // namespace

std::string DefaultShmPrefix(int rank) {
  static std::atomic<int> counter{0};
  return absl::StrCat("/sherd.", getpid(), ".r", rank, ".", counter++);
}

StaleSegments RemoveStaleSegments(const std::string& dir, pid_t self) {
  namespace fs = std::filesystem;
  StaleSegments out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return out;  // no /dev/shm: nothing can have been left there
  for (const fs::directory_entry& e : it) {
    const pid_t pid = CreatorOf(e.path().filename().string());
    if (pid < 0 || (pid != self && Running(pid))) continue;
    std::error_code size_ec;
    const uintmax_t bytes = fs::file_size(e.path(), size_ec);
    std::error_code rm_ec;
    if (fs::remove(e.path(), rm_ec)) {
      ++out.removed;
      if (!size_ec) out.bytes += static_cast<int64_t>(bytes);
    }
  }
  return out;
}

}  // namespace sherd
