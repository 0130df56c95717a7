// sherd-server's configuration: the one place that parses flags, the
// environment (SHERD_*) and a config file (--config, TOML or INI). Flags win
// over the environment, which wins over the file.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace sherd {

struct ServerConfig {
  std::string listen = "127.0.0.1:7070";  // host:port or unix:/path
  int rank = 0;
  int world_size = 1;
  int64_t memory_limit_bytes = 0;  // 0: 90% of physical memory
  int optimizer_threads = 0;       // 0: all cores the process may use
  int64_t max_message_bytes = 64 << 20;
  std::string shm_prefix;          // default /sherd.<pid>.r<rank>.<n>
  std::string address_file;        // write the bound address here when ready
  std::string log_level = "info";
  // Where the model's state lives: auto (cuda when this build has CUDA and
  // a GPU is visible, else cpu), cpu or cuda. See server/gpu/gpu_backend.h.
  std::string device = "auto";
  int cuda_device = -1;  // -1: rank % visible GPUs

  // Multi-rank (world_size > 1).
  std::string coordinator;       // rank 0's address; rank 0 may leave it empty
  std::string advertise_address; // what peers/trainers/sherdctl dial for this
                                 // rank (default: the bound address)
  std::string cluster_id;        // guards against two jobs sharing a coordinator
  double collective_timeout_s = 60;
  double join_timeout_s = 300;
  bool shm_collectives = true;     // same-host ranks: collectives via shm

  // Checkpoints.
  std::string checkpoint_dir;      // empty: off
  int checkpoint_every = 0;        // steps; 0: only on request
  int checkpoint_keep = 3;
  std::string restore = "newest";  // newest, none, or a checkpoint name
};

// Returns the config, or an error status whose message is ready to print.
// --help prints usage and returns a CANCELLED status with the help text.
absl::StatusOr<ServerConfig> ParseServerConfig(int argc, char** argv);

// "64MiB", "2G", "1048576" -> bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& text);

}  // namespace sherd
