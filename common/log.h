// Minimal leveled logging to stderr: one line per event, timestamped, with
// the process's role and rank so interleaved cluster output stays readable.
// (Debian's Abseil 20220623 has no absl/log.)
#pragma once

#include <string>
#include "absl/strings/string_view.h"

#include "absl/strings/str_format.h"

namespace sherd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogPrefix(std::string prefix);
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void Log(LogLevel level, const absl::FormatSpec<Args...>& fmt,
         const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(fmt, args...));
}

}  // namespace sherd

#define SHERD_LOG(level, ...) ::sherd::Log(::sherd::LogLevel::k##level, __VA_ARGS__)
