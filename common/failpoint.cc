#include "common/failpoint.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace sherd {

absl::Status Failpoint(absl::string_view name, int rank) {
  static const std::vector<std::string>* const armed = [] {
    auto* v = new std::vector<std::string>;
    if (const char* env = std::getenv("SHERD_FAILPOINTS")) {
      for (absl::string_view p : absl::StrSplit(env, ',', absl::SkipWhitespace())) {
        v->emplace_back(p);
      }
    }
    return v;
  }();
  if (armed->empty()) return absl::OkStatus();
  const std::string mine = absl::StrCat(name, "@", rank);
  const std::string any = absl::StrCat(name, "@*");
  for (const std::string& p : *armed) {
    if (p == mine || p == any) {
      SHERD_LOG(Warning, "failpoint %s fired (SHERD_FAILPOINTS)", mine);
      return absl::InternalError(absl::StrCat("failpoint ", mine, " (SHERD_FAILPOINTS)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace sherd
