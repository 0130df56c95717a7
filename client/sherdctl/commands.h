// sherdctl's commands. Each talks to the Admin service of one shard server
// and prints a table (or JSON with --json). They return the process exit
// code: 0 success, 1 a failed call (message on stderr).
#pragma once

#include <cstdint>
#include <string>

namespace sherd::ctl {

struct GlobalOptions {
  std::string server = "127.0.0.1:7070";
  bool json = false;
  double timeout_s = 5;
};

struct InspectOptions {
  std::string name;
  std::string state = "param";
  bool values = false;
  int64_t max_values = 20;
  int64_t begin = 0;
  int64_t count = 0;
};

int RunStatus(const GlobalOptions& g);
int RunTensors(const GlobalOptions& g);
int RunWhere(const GlobalOptions& g, const std::string& name);
int RunInspect(const GlobalOptions& g, const InspectOptions& o);

}  // namespace sherd::ctl
