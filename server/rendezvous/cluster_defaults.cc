#include "server/rendezvous/cluster_defaults.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sherd {
namespace {

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// "sherd-12" -> {"sherd", 12}; anything else -> false. Only the first DNS
// label counts, in case HOSTNAME carries a domain.
bool SplitOrdinal(absl::string_view hostname, absl::string_view* name,
                  int* ordinal) {
  hostname = hostname.substr(0, hostname.find('.'));
  const size_t dash = hostname.rfind('-');
  if (dash == absl::string_view::npos || dash == 0) return false;
  const absl::string_view digits = hostname.substr(dash + 1);
  if (!AllDigits(digits) || !absl::SimpleAtoi(digits, ordinal)) return false;
  *name = hostname.substr(0, dash);
  return true;
}

}  // namespace

absl::StatusOr<ClusterDefaults> DeriveClusterDefaults(const ClusterEnv& env) {
  ClusterDefaults d;
  absl::string_view name;
  int ordinal = 0;
  const bool has_ordinal = SplitOrdinal(env.hostname, &name, &ordinal);
  if (has_ordinal) d.coordinator_host = absl::StrCat(name, "-0");

  const absl::string_view index =
      absl::StripAsciiWhitespace(env.job_completion_index);
  if (!index.empty()) {
    int rank = 0;
    if (!AllDigits(index) || !absl::SimpleAtoi(index, &rank)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "JOB_COMPLETION_INDEX='", env.job_completion_index,
          "' is not a non-negative integer"));
    }
    d.rank = rank;
    d.rank_source = "JOB_COMPLETION_INDEX";
  } else if (has_ordinal) {
    d.rank = ordinal;
    d.rank_source = "HOSTNAME";
  }
  return d;
}

absl::StatusOr<ClusterDefaults> ClusterDefaultsFromEnvironment() {
  auto get = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v == nullptr ? "" : v);
  };
  return DeriveClusterDefaults(
      ClusterEnv{get("HOSTNAME"), get("JOB_COMPLETION_INDEX")});
}

}  // namespace sherd
