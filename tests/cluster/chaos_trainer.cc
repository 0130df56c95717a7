// A trainer process of the chaos run (tests/cluster/chaos_test.cc), which
// SIGKILLs and restarts it at random:
//
//   chaos_trainer CTL_DIR RANK
//
// It steps rank RANK's server until step kSteps, re-registering after any
// failure to learn the step the cluster continues from. Through CTL_DIR it
// talks to the test:
//   address.<rank>   the server's address (rewritten when it restarts)
//   committed        the newest committed checkpoint step when the test
//                    last killed a server
//   done.<rank>      8 bytes, mapped: the last step this rank completed
//   events.<rank>    appended "rewind <from> <to> <past-commit 0|1>" lines
// and exits 0 once step kSteps is done.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/cluster/chaos_model.h"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return std::string(absl::StripAsciiWhitespace(s.str()));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sherd;
  if (argc != 3) {
    std::fprintf(stderr, "usage: chaos_trainer CTL_DIR RANK\n");
    return 2;
  }
  const std::string ctl = argv[1];
  int rank = 0;
  if (!absl::SimpleAtoi(argv[2], &rank) || rank < 0 || rank >= chaos::kWorld) {
    std::fprintf(stderr, "chaos_trainer: bad rank '%s'\n", argv[2]);
    return 2;
  }
  const int fd = open(absl::StrCat(ctl, "/done.", rank).c_str(), O_RDWR);
  void* mapped = fd < 0 ? MAP_FAILED
                        : mmap(nullptr, sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mapped == MAP_FAILED) {
    std::perror("chaos_trainer: done file");
    return 2;
  }
  auto* done = static_cast<std::atomic<int64_t>*>(mapped);
  std::ofstream events(absl::StrCat(ctl, "/events.", rank), std::ios::app);

  std::unique_ptr<Client> c;
  int64_t next = done->load() + 1;  // a restarted trainer goes on from here
  while (next <= chaos::kSteps) {
    if (c == nullptr) {
      auto made = Client::Connect(ReadFile(absl::StrCat(ctl, "/address.", rank)));
      if (!made.ok()) {
        absl::SleepFor(absl::Milliseconds(100));
        continue;
      }
      auto info = (*made)->Register(chaos::Model());
      if (!info.ok()) {
        absl::SleepFor(absl::Milliseconds(100));
        continue;
      }
      c = std::move(*made);
      if (!info->initialized) {
        chaos::InitialParams(*c);
        if (!c->InitParams().ok()) {
          c.reset();
          continue;
        }
      }
      if (info->next_step < next) {
        int64_t committed = 0;
        (void)absl::SimpleAtoi(ReadFile(absl::StrCat(ctl, "/committed")), &committed);
        events << "rewind " << next << " " << info->next_step << " "
               << (info->next_step - 1 < committed ? 1 : 0) << std::endl;
      }
      next = info->next_step;
    }
    chaos::Grads(*c, next);
    auto r = c->Step({.lr = 0.01f});
    if (!r.ok()) {
      c.reset();  // re-register: the cluster may have rewound
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    done->store(next);
    ++next;
  }
  return 0;
}
