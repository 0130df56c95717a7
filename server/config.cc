#include "server/config.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdlib>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/rendezvous/cluster_defaults.h"

namespace sherd {

absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.')) ++i;
  double value;
  if (i == 0 || !absl::SimpleAtod(t.substr(0, i), &value)) {
    return absl::InvalidArgumentError(absl::StrCat("not a size: '", text, "'"));
  }
  std::string unit = t.substr(i);
  double mult = 1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kb" || unit == "kib") mult = 1024.0;
  else if (unit == "m" || unit == "mb" || unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gb" || unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tb" || unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  else return absl::InvalidArgumentError(absl::StrCat("unknown size unit in '", text, "'"));
  return static_cast<int64_t>(value * mult);
}

absl::StatusOr<ServerConfig> ParseServerConfig(int argc, char** argv) {
  ServerConfig c;
  CLI::App app{
      "sherd-server: a shard server. Owns a slice of a model's fp32 master "
      "params, gradients and Adam moments and applies AdamW to it each step."};
  app.set_config("--config", "", "Read options from a TOML/INI file");
  std::string memory_limit;
  app.add_option("--listen", c.listen,
                 "Address to serve on: host:port (port 0 picks one) or unix:/path")
      ->envname("SHERD_LISTEN")->capture_default_str();
  app.add_option("--rank", c.rank, "This server's rank")
      ->envname("SHERD_RANK")->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--world-size", c.world_size, "Number of shard servers")
      ->envname("SHERD_WORLD_SIZE")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--memory-limit", memory_limit,
                 "Most bytes of state this server may hold, e.g. 16GiB "
                 "(default: 90% of physical memory)")
      ->envname("SHERD_MEMORY_LIMIT");
  app.add_option("--optimizer-threads", c.optimizer_threads,
                 "Threads for the optimizer (0: all cores available)")
      ->envname("SHERD_OPTIMIZER_THREADS")->check(CLI::NonNegativeNumber);
  app.add_option("--max-message-bytes", c.max_message_bytes,
                 "Largest gRPC message accepted")
      ->envname("SHERD_MAX_MESSAGE_BYTES")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--shm-prefix", c.shm_prefix,
                 "Name prefix of the shared-memory buffers (must start with /); the default, /sherd.<pid>.r<rank>.<n>, is the one whose leftovers from killed servers are removed at start")
      ->envname("SHERD_SHM_PREFIX");
  app.add_option("--address-file", c.address_file,
                 "Write the bound address to this file once serving (- prints \"listening on ADDR\" to stdout)")
      ->envname("SHERD_ADDRESS_FILE");
  app.add_option("--log-level", c.log_level, "debug, info, warning or error")
      ->envname("SHERD_LOG_LEVEL")
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}))
      ->capture_default_str();
  app.add_option("--device", c.device,
                 "Where the model's state lives: cpu (POSIX shared memory), "
                 "cuda (GPU memory shared through CUDA IPC, NCCL collectives, "
                 "CUDA optimizer) or auto (cuda when a GPU is visible)")
      ->envname("SHERD_DEVICE")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--cuda-device", c.cuda_device,
                 "GPU ordinal for --device cuda (default: rank % visible GPUs)")
      ->envname("SHERD_CUDA_DEVICE")->check(CLI::NonNegativeNumber);
  app.add_option("--coordinator", c.coordinator,
                 "Rank 0's address (host:port); default in a StatefulSet or "
                 "indexed Job: <name>-0.$SHERD_SERVICE:<port of --listen>")
      ->envname("SHERD_COORDINATOR");
  app.add_option("--advertise-address", c.advertise_address,
                 "Address others dial for this rank (default: the bound address)")
      ->envname("SHERD_ADVERTISE_ADDRESS");
  app.add_option("--cluster-id", c.cluster_id,
                 "Cluster name; servers with different ids never join each other")
      ->envname("SHERD_CLUSTER_ID");
  app.add_option("--collective-timeout", c.collective_timeout_s,
                 "Seconds a collective may take, and a step waits for every rank to send it, before the step fails")
      ->envname("SHERD_COLLECTIVE_TIMEOUT")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--join-timeout", c.join_timeout_s,
                 "Seconds to wait for every rank to join the cluster")
      ->envname("SHERD_JOIN_TIMEOUT")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--shm-collectives", c.shm_collectives,
                 "Ranks on one host reduce-scatter and all-gather through shared "
                 "memory instead of loopback TCP (true/false)")
      ->envname("SHERD_SHM_COLLECTIVES")->capture_default_str();
  app.add_option("--checkpoint-dir", c.checkpoint_dir,
                 "Directory for checkpoints (shared by every rank)")
      ->envname("SHERD_CHECKPOINT_DIR");
  app.add_option("--checkpoint-every", c.checkpoint_every,
                 "Save after every K-th step (0: only when asked); a step due while the previous save is still writing waits for it")
      ->envname("SHERD_CHECKPOINT_EVERY")->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--checkpoint-keep", c.checkpoint_keep, "Committed checkpoints to keep")
      ->envname("SHERD_CHECKPOINT_KEEP")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--restore", c.restore,
                 "At Register: newest (falls back past corrupt ones), none, or a "
                 "checkpoint name such as ckpt-000000000100")
      ->envname("SHERD_RESTORE")->capture_default_str();
  auto* rank_opt = app.get_option("--rank");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    return absl::CancelledError(app.help());
  } catch (const CLI::CallForAllHelp&) {
    return absl::CancelledError(app.help("", CLI::AppFormatMode::All));
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(e.what(), "\nRun with --help for usage."));
  }
  if (rank_opt->count() == 0 && std::getenv("SHERD_RANK") == nullptr) {
    // Kubernetes: the pod's ordinal or job index.
    auto d = ClusterDefaultsFromEnvironment();
    if (!d.ok()) return d.status();
    if (d->rank) c.rank = *d->rank;
    if (c.coordinator.empty() && !d->coordinator_host.empty() && c.world_size > 1) {
      const char* svc = std::getenv("SHERD_SERVICE");
      size_t colon = c.listen.rfind(':');
      if (svc != nullptr && colon != std::string::npos) {
        c.coordinator = absl::StrCat(d->coordinator_host, ".", svc, c.listen.substr(colon));
      }
    }
  }
  if (c.rank >= c.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--rank ", c.rank, " is not below --world-size ", c.world_size));
  }
  if (!c.shm_prefix.empty() && c.shm_prefix[0] != '/') {
    return absl::InvalidArgumentError("--shm-prefix must start with '/'");
  }
  if (c.world_size > 1 && c.rank > 0 && c.coordinator.empty()) {
    return absl::InvalidArgumentError(
        "--coordinator (rank 0's address) is required for ranks > 0");
  }
  // Options that only mean something together: refuse at start what would
  // otherwise be ignored (training silently starting fresh) or fail only at
  // the first Register.
  if (c.restore != "newest" && c.restore != "none" &&
      (c.restore.rfind("ckpt-", 0) != 0 || c.restore.find('/') != std::string::npos)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--restore '", c.restore,
        "' is not newest, none or a checkpoint name such as ckpt-000000000100"));
  }
  if (c.checkpoint_dir.empty()) {
    if (c.restore != "newest" && c.restore != "none") {
      return absl::InvalidArgumentError(absl::StrCat(
          "--restore ", c.restore, " needs --checkpoint-dir (where to find it)"));
    }
    if (c.checkpoint_every > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--checkpoint-every ", c.checkpoint_every,
          " needs --checkpoint-dir (where to save)"));
    }
  }
  if (!memory_limit.empty()) {
    auto b = ParseBytes(memory_limit);
    if (!b.ok()) return b.status();
    c.memory_limit_bytes = *b;
  } else {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) {
      c.memory_limit_bytes = static_cast<int64_t>(pages) * page / 10 * 9;
    }
  }
  if (c.optimizer_threads == 0) {
    c.optimizer_threads = std::max(1u, std::thread::hardware_concurrency());
  }
  return c;
}

}  // namespace sherd
