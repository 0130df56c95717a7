// Defaults for a shard server's place in the cluster, derived from what
// Kubernetes puts in a pod's environment, so that one manifest serves every
// replica:
//
//   indexed Job   JOB_COMPLETION_INDEX=3          -> rank 3 (wins when set)
//                 HOSTNAME=<job>-3 (with a subdomain)
//   StatefulSet   HOSTNAME=<set>-3 (pod ordinal)  -> rank 3
//
// In both, rank 0's pod is "<name>-0"; behind a headless Service S it is
// reachable as "<name>-0.S", which is what coordinator_host helps build.
//
// Kubernetes gives a pod no world size (replicas or completions), so that
// stays a flag / SHERD_WORLD_SIZE set in the manifest. Flags and SHERD_RANK
// override these defaults; server/config.cc is where they are combined.
//
// Pure functions, thread-safe; the Environment variant reads getenv.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace sherd {

struct ClusterEnv {
  std::string hostname;              // $HOSTNAME
  std::string job_completion_index;  // $JOB_COMPLETION_INDEX
};

struct ClusterDefaults {
  std::optional<int> rank;  // none: not a StatefulSet / indexed Job pod
  std::string rank_source;  // "JOB_COMPLETION_INDEX", "HOSTNAME" or empty
  // "<name>-0" when the hostname is "<name>-<ordinal>", else empty.
  std::string coordinator_host;
};

// INVALID_ARGUMENT only if JOB_COMPLETION_INDEX is set but not a
// non-negative integer (a broken manifest); a hostname without an ordinal
// simply yields no default.
absl::StatusOr<ClusterDefaults> DeriveClusterDefaults(const ClusterEnv& env);

// DeriveClusterDefaults over the process environment.
absl::StatusOr<ClusterDefaults> ClusterDefaultsFromEnvironment();

}  // namespace sherd
