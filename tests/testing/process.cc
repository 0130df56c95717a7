#include "tests/testing/process.h"

#include <algorithm>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace sherd::testing {

absl::StatusOr<Process> Process::Start(std::vector<std::string> argv,
                                       std::vector<std::string> extra_env) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) env_strings.push_back(*e);
  for (auto& e : extra_env) env_strings.push_back(e);
  std::vector<char*> env;
  for (auto& e : env_strings) env.push_back(e.data());
  env.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // The child dies with the test: a test that crashes must not leave
    // servers behind holding ctest's output pipe (ctest would then wait for
    // its timeout instead of reporting the crash).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], 1);
    // Unblock the signals a test runner may have blocked.
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    execve(args[0], args.data(), env.data());
    _exit(127);
  }
  close(fds[1]);
  Process p;
  p.pid_ = pid;
  p.out_fd_ = fds[0];
  return p;
}

Process::Process(Process&& o) noexcept { *this = std::move(o); }

Process& Process::operator=(Process&& o) noexcept {
  if (this != &o) {
    pid_ = std::exchange(o.pid_, -1);
    out_fd_ = std::exchange(o.out_fd_, -1);
    eof_ = o.eof_;
    output_ = std::move(o.output_);
    consumed_ = o.consumed_;
  }
  return *this;
}

Process::~Process() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
}

bool Process::ReadSome(absl::Duration timeout) {
  if (eof_) return false;
  pollfd pfd{out_fd_, POLLIN, 0};
  int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  if (poll(&pfd, 1, std::max(ms, 0)) <= 0) return false;
  char buf[4096];
  ssize_t n = read(out_fd_, buf, sizeof buf);
  if (n <= 0) {
    eof_ = true;
    return false;
  }
  output_.append(buf, n);
  return true;
}

absl::StatusOr<std::string> Process::WaitForLine(const std::string& needle,
                                                 absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    size_t nl;
    while ((nl = output_.find('\n', consumed_)) != std::string::npos) {
      std::string line = output_.substr(consumed_, nl - consumed_);
      consumed_ = nl + 1;
      if (line.find(needle) != std::string::npos) return line;
    }
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    if (!ReadSome(left) && eof_) break;
  }
  return absl::DeadlineExceededError(
      absl::StrCat("no line with '", needle, "'; output so far:\n", output_));
}

absl::StatusOr<int> Process::Wait(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!eof_ && absl::Now() < deadline) ReadSome(deadline - absl::Now());
  // stdout closed: the child is exiting; a bounded wait for its status.
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + WTERMSIG(status);
    }
    if (absl::Now() >= deadline) break;
    pollfd none{-1, 0, 0};
    poll(&none, 0, 5);  // the child has closed stdout; reaping is imminent
  }
  return absl::DeadlineExceededError(absl::StrCat("process ", pid_, " did not exit"));
}

void Process::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

RunResult RunProgram(std::vector<std::string> argv, absl::Duration timeout) {
  RunResult r;
  auto p = Process::Start(std::move(argv));
  if (!p.ok()) return r;
  auto code = p->Wait(timeout);
  r.code = code.ok() ? *code : -1;
  r.out = p->output();
  return r;
}

absl::StatusOr<ServerProcess> ServerProcess::Start(std::vector<std::string> flags,
                                                   std::string listen,
                                                   std::vector<std::string> wrapper) {
  std::vector<std::string> argv = wrapper;
  // $SHERD_SERVER_BIN overrides the build tree's binary (the device check
  // runs a packed copy on another machine).
  const char* bin = std::getenv("SHERD_SERVER_BIN");
  argv.insert(argv.end(), {bin != nullptr && *bin != '\0' ? bin : SHERD_SERVER_BIN,
                           "--listen", listen, "--address-file", "-",
                           "--log-level", "warning"});
  // These tests drive host state (a GPU machine would otherwise pick cuda).
  if (std::find(flags.begin(), flags.end(), "--device") == flags.end()) {
    argv.insert(argv.end(), {"--device", "cpu"});
  }
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto p = Process::Start(argv);
  if (!p.ok()) return p.status();
  ServerProcess s;
  s.process_ = std::move(*p);
  auto line = s.process_.WaitForLine("listening on ", absl::Seconds(30));
  if (!line.ok()) return line.status();
  s.address_ = line->substr(line->find("listening on ") + 13);
  return s;
}

absl::StatusOr<int> ServerProcess::Stop() {
  process_.Signal(SIGTERM);
  return process_.Wait(absl::Seconds(30));
}

absl::StatusOr<ClusterProcess> ClusterProcess::Start(int world_size,
                                                     std::vector<std::string> flags) {
  ClusterProcess c;
  for (int r = 0; r < world_size; ++r) {
    std::vector<std::string> f = flags;
    f.insert(f.end(), {"--rank", std::to_string(r), "--world-size",
                       std::to_string(world_size)});
    if (r > 0) f.insert(f.end(), {"--coordinator", c.servers_[0].address()});
    auto s = ServerProcess::Start(f);
    if (!s.ok()) return s.status();
    c.servers_.push_back(std::move(*s));
  }
  return c;
}

bool ClusterProcess::Stop() {
  bool ok = true;
  for (auto& s : servers_) s.process().Signal(SIGTERM);
  for (auto& s : servers_) {
    if (s.process().pid() <= 0) continue;
    auto code = s.process().Wait(absl::Seconds(30));
    ok = ok && code.ok() && *code == 0;
  }
  return ok;
}

}  // namespace sherd::testing
