// Test helper: runs a real program (sherd-server, sherdctl, train_mlp) as a
// child process, with its stdout on a pipe, so integration tests talk to the
// real binaries on loopback. No sleeps: readiness is a line on stdout.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sherd::testing {

class Process {
 public:
  // Starts `argv[0]` with arguments; stdout is captured, stderr inherited.
  // The child is SIGKILLed when the thread that started it exits
  // (PR_SET_PDEATHSIG), so start children from a thread that outlives
  // them (the test's main thread).
  static absl::StatusOr<Process> Start(std::vector<std::string> argv,
                                       std::vector<std::string> extra_env = {});
  Process() = default;
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;
  ~Process();  // SIGKILLs a child still running

  // Reads stdout until a line containing `needle` arrives (returns it).
  absl::StatusOr<std::string> WaitForLine(const std::string& needle,
                                          absl::Duration timeout);
  // Reads the rest of stdout and waits for exit; returns the exit code, or
  // 128 + signal.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  void Signal(int sig);
  const std::string& output() const { return output_; }
  pid_t pid() const { return pid_; }

 private:
  bool ReadSome(absl::Duration timeout);  // false at EOF or timeout
  pid_t pid_ = -1;
  int out_fd_ = -1;
  bool eof_ = false;
  std::string output_;
  size_t consumed_ = 0;
};

// Runs a program to completion; returns {exit code, stdout}.
struct RunResult {
  int code = -1;
  std::string out;
};
RunResult RunProgram(std::vector<std::string> argv, absl::Duration timeout = absl::Seconds(60));

// A sherd-server on a loopback port (or unix socket), ready to serve.
class ServerProcess {
 public:
  // `wrapper` (e.g. {"/usr/bin/prlimit", "--fsize=1000000"}) runs the
  // server under another program.
  static absl::StatusOr<ServerProcess> Start(std::vector<std::string> flags = {},
                                             std::string listen = "127.0.0.1:0",
                                             std::vector<std::string> wrapper = {});
  const std::string& address() const { return address_; }
  Process& process() { return process_; }
  // SIGTERM and wait; returns the exit code.
  absl::StatusOr<int> Stop();

 private:
  Process process_;
  std::string address_;
};

// W sherd-servers forming one cluster on loopback: rank 0 first (port 0),
// then the others pointed at it.
class ClusterProcess {
 public:
  static absl::StatusOr<ClusterProcess> Start(int world_size,
                                              std::vector<std::string> flags = {});
  std::vector<ServerProcess>& servers() { return servers_; }
  const std::string& address(int rank) const { return servers_[rank].address(); }
  // SIGTERM every server still running; returns false if one exited non-zero.
  bool Stop();

 private:
  std::vector<ServerProcess> servers_;
};

}  // namespace sherd::testing
