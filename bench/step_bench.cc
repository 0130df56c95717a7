// End-to-end step benchmark: W real sherd-server processes on loopback and W
// trainer threads (one client each, shared-memory data plane), N fp32
// params. Prints the median step time seen by the trainers, the servers'
// per-stage breakdown, and each server's resident memory against 16 N / W.
//
//   step_bench --params 33554432 --world 2 [--steps 10] [--json]
//
// Run it next to the anchor (bench/run_step.sh does) and report the ratio.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "client/client.h"
#include "tests/testing/process.h"

namespace {

struct Mem {
  int64_t anon = 0, shmem = 0;
};

Mem ReadMem(pid_t pid) {
  Mem m;
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  int64_t kb;
  while (f >> key) {
    if (key == "RssAnon:" && f >> kb) m.anon = kb * 1024;
    if (key == "RssShmem:" && f >> kb) m.shmem = kb * 1024;
  }
  return m;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t params = 32 << 20;
  int world = 2, steps = 10, tensors = 16, opt_threads = 0;
  bool json = false;
  CLI::App app{"step_bench: end-to-end sherd step time and server memory"};
  app.add_option("--params", params, "Parameters")->capture_default_str();
  app.add_option("--world", world, "Shard servers")->capture_default_str();
  app.add_option("--steps", steps, "Timed steps (after 2 warm-up steps)")->capture_default_str();
  app.add_option("--tensors", tensors, "Tensors the params are split into")->capture_default_str();
  app.add_option("--optimizer-threads", opt_threads, "Per server (0: cores / world)");
  app.add_flag("--json", json, "One JSON line instead of a table");
  CLI11_PARSE(app, argc, argv);
  if (opt_threads == 0) {
    opt_threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world);
  }
  auto cluster = sherd::testing::ClusterProcess::Start(
      world, {"--optimizer-threads", std::to_string(opt_threads), "--collective-timeout", "300"});
  if (!cluster.ok()) {
    std::fprintf(stderr, "step_bench: %s\n", std::string(cluster.status().message()).c_str());
    return 1;
  }
  sherd::ModelDef model{.name = "bench"};
  for (int t = 0; t < tensors; ++t) {
    model.tensors.push_back({"t" + std::to_string(t), {params / tensors}, ""});
  }
  std::vector<std::vector<double>> times(world);
  std::vector<sherd::StepResult> last(world);
  std::vector<std::thread> trainers;
  for (int r = 0; r < world; ++r) {
    trainers.emplace_back([&, r] {
      auto c = sherd::Client::Connect(cluster->address(r));
      if (!c.ok() || !(*c)->Register(model).ok()) std::abort();
      std::mt19937 rng(r);
      std::normal_distribution<float> n;
      for (float& x : (*c)->params()) x = n(rng);
      for (float& g : (*c)->grads()) g = n(rng) * 1e-3f;
      if (!(*c)->InitParams().ok()) std::abort();
      for (int s = 0; s < steps + 2; ++s) {
        auto t0 = std::chrono::steady_clock::now();
        auto res = (*c)->Step({.lr = 1e-3f});
        double ms = std::chrono::duration<double, std::milli>(
                        std::chrono::steady_clock::now() - t0).count();
        if (!res.ok()) {
          std::fprintf(stderr, "step: %s\n", std::string(res.status().message()).c_str());
          std::abort();
        }
        if (s >= 2) times[r].push_back(ms);
        last[r] = *res;
      }
    });
  }
  for (auto& t : trainers) t.join();
  const double step_ms = Median(times[0]);
  Mem mem = ReadMem(cluster->servers()[0].process().pid());
  const double ideal = 16.0 * params / world;
  if (json) {
    std::printf(
        "{\"params\": %lld, \"world\": %d, \"step_ms\": %.3f, \"reduce_scatter_ms\": %.3f, "
        "\"norm_ms\": %.3f, \"optimizer_ms\": %.3f, \"all_gather_ms\": %.3f, "
        "\"agreement_ms\": %.3f, \"agreement_ms_rank1\": %.3f, "
        "\"server_rss_anon\": %lld, \"server_rss_shmem\": %lld, \"ideal_state_bytes\": %.0f}\n",
        static_cast<long long>(params), world, step_ms, last[0].reduce_scatter_ms,
        last[0].norm_ms, last[0].optimizer_ms, last[0].all_gather_ms, last[0].agreement_ms,
        last.size() > 1 ? last[1].agreement_ms : 0.0,
        static_cast<long long>(mem.anon), static_cast<long long>(mem.shmem), ideal);
  } else {
    std::printf("sherd step: %lld params, W=%d, %d optimizer thread(s) per server\n",
                static_cast<long long>(params), world, opt_threads);
    std::printf("  step (trainer-observed, median of %d) %8.2f ms\n", steps, step_ms);
    std::printf("  agreement %.2f  reduce-scatter %.2f  norm %.2f  optimizer %.2f  all-gather %.2f ms (last step, rank 0)\n",
                last[0].agreement_ms, last[0].reduce_scatter_ms, last[0].norm_ms,
                last[0].optimizer_ms, last[0].all_gather_ms);
    std::printf("  server 0 memory: private %.1f MiB (16N/W = %.1f MiB, ratio %.2f), shared %.1f MiB\n",
                mem.anon / 1048576.0, ideal / 1048576.0, mem.anon / ideal, mem.shmem / 1048576.0);
  }
  cluster->Stop();
  return 0;
}
