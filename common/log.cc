#include "common/log.h"

#include <cstdio>
#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sherd {
namespace {

std::mutex& Mu() {
  static std::mutex mu;
  return mu;
}
std::string& Prefix() {
  static std::string p = "sherd";
  return p;
}
LogLevel g_level = LogLevel::kInfo;

}  // namespace

void SetLogPrefix(std::string prefix) {
  std::lock_guard<std::mutex> l(Mu());
  Prefix() = std::move(prefix);
}
void SetLogLevel(LogLevel level) { g_level = level; }
bool LogEnabled(LogLevel level) { return level >= g_level; }

void LogLine(LogLevel level, absl::string_view message) {
  static const char kLetters[] = "DIWE";
  std::string ts = absl::FormatTime("%H:%M:%E3S", absl::Now(),
                                    absl::LocalTimeZone());
  std::lock_guard<std::mutex> l(Mu());
  std::fprintf(stderr, "%c %s %s] %.*s\n", kLetters[static_cast<int>(level)],
               ts.c_str(), Prefix().c_str(), static_cast<int>(message.size()),
               message.data());
}

}  // namespace sherd
