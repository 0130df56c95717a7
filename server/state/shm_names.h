// Names of the shared-memory segments a shard server makes for P and G, and
// the sweep that removes those a dead server left behind.
//
// A server that exits cleanly unlinks its segments; one that is SIGKILLed or
// OOM-killed cannot, and its P and G (8 bytes per parameter) would stay in
// /dev/shm until reboot. Worse, a restarted server container usually gets
// the same pid (1) and so the same name, and Register would fail with
// "File exists" forever. So every server, before it serves, removes the
// segments of the default naming scheme whose creator is gone.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace sherd {

// "/sherd.<pid>.r<rank>.<n>": the n-th model this process registers; the
// segments are <prefix>.params and <prefix>.grads.
std::string DefaultShmPrefix(int rank);

struct StaleSegments {
  int removed = 0;
  int64_t bytes = 0;
};

// Removes the files in `dir` (where shm_open keeps segments) named
// sherd.<pid>.r<rank>.<n>.params|grads whose <pid> is not a running process
// or is `self` (call it before this process makes any segment). A custom
// --shm-prefix is never touched. Assumes the servers sharing `dir` share a
// pid namespace, or that one server owns `dir` (one per pod).
StaleSegments RemoveStaleSegments(const std::string& dir = "/dev/shm",
                                  pid_t self = -1);

}  // namespace sherd
