// Reduce-scatter + all-gather of one shared-memory buffer per rank, ranks as
// threads of this process, three ways:
//   gloo          flat Gloo ring over loopback TCP (--shm-collectives false)
//   one-host      shared memory between all ranks
//   hierarchical  --hosts simulated hosts (LocalShmOptions::host_id): shared
//                 memory within a host, a Gloo group per local index across
// On one machine "across hosts" is loopback TCP, so the times measure the
// CPU cost of each path, not a network (docs/design.md says what each path
// sends between hosts).
//
//   collective_bench --elements 8388608 --world 4 --hosts 2 [--iters 10]
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/shm_region.h"
#include "server/collective/gloo/factory.h"
#include "server/collective/local/factory.h"

namespace sherd {
namespace {

struct Timing {
  double reduce_scatter_ms = 0, all_gather_ms = 0;
  std::string path;
};

Timing Run(const std::string& mode, int64_t elements, int world, int hosts, int iters) {
  static std::atomic<int> run{0};
  const std::string prefix = absl::StrCat("bench", run++);
  auto store = std::make_shared<InMemoryKvStore>();
  const int64_t chunk = elements / world;
  const size_t bytes = static_cast<size_t>(chunk) * world * sizeof(float);
  const int per_host = world / hosts;
  std::vector<double> rs(world), ag(world);
  std::vector<std::string> path(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      GlooOptions gloo;
      gloo.timeout = absl::Seconds(300);
      gloo.prefix = prefix + "/gloo";
      auto inner = CreateGlooCollective(*store, r, world, gloo);
      if (!inner.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", r, std::string(inner.status().message()).c_str());
        std::exit(1);
      }
      std::unique_ptr<Collective> c = std::move(*inner);
      if (mode != "gloo") {
        LocalShmOptions o;
        o.prefix = prefix + "/shm";
        o.host_id = mode == "one-host" ? "h" : absl::StrCat("h", r / per_host);
        o.make_group = [store, gloo](const std::string& p, int rank, int w) {
          GlooOptions g = gloo;
          g.prefix = p;
          return CreateGlooCollective(*store, rank, w, g);
        };
        c = CreateLocalShmCollective(std::move(c), store, std::move(o));
      }
      const std::string base = absl::StrCat("/sherd-bench-", getpid(), "-", prefix, "-r", r);
      auto g = ShmRegion::Create(base + ".grads", bytes);
      auto p = ShmRegion::Create(base + ".params", bytes);
      if (!g.ok() || !p.ok()) std::exit(1);
      float* gb = static_cast<float*>(g->data());
      float* pb = static_cast<float*>(p->data());
      c->AdviseSharedBuffer("grads", gb, g->name(), bytes);
      c->AdviseSharedBuffer("params", pb, p->name(), bytes);
      std::fill(gb, gb + chunk * world, 1.0f);
      std::fill(pb, pb + chunk * world, 2.0f);
      for (int i = 0; i < iters + 2; ++i) {  // 2 warm-up rounds
        auto t0 = std::chrono::steady_clock::now();
        if (!c->ReduceScatter(gb, chunk).ok()) std::exit(1);
        auto t1 = std::chrono::steady_clock::now();
        if (!c->AllGather(pb, chunk).ok()) std::exit(1);
        auto t2 = std::chrono::steady_clock::now();
        if (i >= 2) {
          rs[r] += std::chrono::duration<double, std::milli>(t1 - t0).count() / iters;
          ag[r] += std::chrono::duration<double, std::milli>(t2 - t1).count() / iters;
        }
      }
      path[r] = c->Describe();
      if (!c->Barrier().ok()) std::exit(1);
    });
  }
  for (std::thread& t : threads) t.join();
  return {*std::max_element(rs.begin(), rs.end()), *std::max_element(ag.begin(), ag.end()),
          path[0]};
}

}  // namespace
}  // namespace sherd

int main(int argc, char** argv) {
  CLI::App app{"Reduce-scatter + all-gather: flat Gloo, one-host shared memory, hierarchical"};
  int64_t elements = 8 << 20;
  int world = 4, hosts = 2, iters = 10;
  app.add_option("--elements", elements, "Floats per rank's buffer")->capture_default_str();
  app.add_option("--world", world, "Ranks (threads)")->capture_default_str();
  app.add_option("--hosts", hosts, "Simulated hosts for the hierarchical run")
      ->capture_default_str();
  app.add_option("--iters", iters, "Timed rounds (after 2 warm-up rounds)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (world < 4 || hosts < 2 || world % hosts != 0 || world / hosts < 2 || elements < world) {
    std::fprintf(stderr, "need world >= 4, hosts >= 2 dividing it with >= 2 ranks per host\n");
    return 2;
  }
  const int per_host = world / hosts;
  std::printf("%lld floats per rank, %d ranks, %d hosts of %d (threads of one process)\n",
              static_cast<long long>(elements), world, hosts, per_host);
  std::printf("%-13s %12s %12s  %s\n", "path", "RS ms", "AG ms", "backend");
  for (const char* mode : {"gloo", "one-host", "hierarchical"}) {
    sherd::Timing t = sherd::Run(mode, elements, world, hosts, iters);
    std::printf("%-13s %12.2f %12.2f  %s\n", mode, t.reduce_scatter_ms, t.all_gather_ms,
                t.path.c_str());
  }
  return 0;
}
