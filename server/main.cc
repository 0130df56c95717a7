// sherd-server: flags in, one server built, run until SIGTERM/SIGINT.
#include <cstdio>

#include "server/config.h"
#include "server/server_runner.h"

int main(int argc, char** argv) {
  absl::StatusOr<sherd::ServerConfig> config = sherd::ParseServerConfig(argc, argv);
  if (!config.ok()) {
    bool help = absl::IsCancelled(config.status());
    std::fprintf(help ? stdout : stderr, "%s\n",
                 std::string(config.status().message()).c_str());
    return help ? 0 : 2;
  }
  absl::Status s = sherd::RunServer(*config);
  if (!s.ok()) {
    std::fprintf(stderr, "sherd-server: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
