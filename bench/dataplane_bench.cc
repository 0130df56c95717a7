// Data-plane benchmark: moving a model's worth of fp32 values between a
// trainer and its shard server, by the inline gRPC path (Push / Fetch
// streams over loopback TCP) and by shared memory, against memcpy.
//
//   dataplane_bench --mib 64 [--chunk-kib 1024] [--json]
//
// bench/run_dataplane.sh runs it beside iperf3 on loopback for the ratio.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "client/client.h"
#include "tests/testing/process.h"

namespace {

template <typename F>
double BestMs(int reps, F fn) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t mib = 64, chunk_kib = 1024;
  int reps = 5;
  bool json = false;
  CLI::App app{"dataplane_bench: inline gRPC vs shared memory vs memcpy"};
  app.add_option("--mib", mib, "MiB moved per transfer")->capture_default_str();
  app.add_option("--chunk-kib", chunk_kib, "Inline chunk size")->capture_default_str();
  app.add_option("--reps", reps, "Repetitions (best is reported)")->capture_default_str();
  app.add_flag("--json", json, "One JSON line");
  CLI11_PARSE(app, argc, argv);
  const int64_t n = mib * (1 << 20) / 4;
  auto server = sherd::testing::ServerProcess::Start({"--max-message-bytes", "67108864"});
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  sherd::ClientOptions o;
  o.use_shared_memory = false;
  o.chunk_elements = chunk_kib * 256;
  auto c = sherd::Client::Connect(server->address(), o);
  sherd::ModelDef model{.name = "dp", .tensors = {{"x", {n}, ""}}};
  if (!c.ok() || !(*c)->Register(model).ok()) return 1;
  std::vector<float> data(n, 1.5f), back(n);
  double push_ms = BestMs(reps, [&] {
    if (!(*c)->PushGrads(data).ok()) std::abort();
  });
  double fetch_ms = BestMs(reps, [&] {
    if (!(*c)->FetchGrads(back).ok()) std::abort();
  });
  if (std::memcmp(data.data(), back.data(), n * 4) != 0) return 2;
  // Shared memory: the trainer writes G in place; nothing is copied between
  // processes, so the cost is the trainer's own write of the values.
  auto shm = sherd::Client::Connect(server->address());
  sherd::ModelDef model2 = model;
  if (!shm.ok() || !(*shm)->Register(model2).ok()) return 1;
  double shm_ms = BestMs(reps, [&] {
    std::memcpy((*shm)->grads().data(), data.data(), n * 4);
  });
  double memcpy_ms = BestMs(reps, [&] { std::memcpy(back.data(), data.data(), n * 4); });
  const double bytes = n * 4.0;
  auto gbps = [&](double ms) { return bytes / ms / 1e6; };
  if (json) {
    std::printf("{\"bytes\": %.0f, \"chunk_kib\": %lld, \"push_GBps\": %.3f, \"fetch_GBps\": %.3f, "
                "\"shm_write_GBps\": %.3f, \"memcpy_GBps\": %.3f}\n",
                bytes, static_cast<long long>(chunk_kib), gbps(push_ms), gbps(fetch_ms),
                gbps(shm_ms), gbps(memcpy_ms));
  } else {
    std::printf("%lld MiB, chunks of %lld KiB\n", static_cast<long long>(mib),
                static_cast<long long>(chunk_kib));
    std::printf("  inline push   %7.1f ms  %6.2f GB/s\n", push_ms, gbps(push_ms));
    std::printf("  inline fetch  %7.1f ms  %6.2f GB/s\n", fetch_ms, gbps(fetch_ms));
    std::printf("  shm write     %7.1f ms  %6.2f GB/s (trainer writes G in place; 0 bytes copied)\n",
                shm_ms, gbps(shm_ms));
    std::printf("  memcpy        %7.1f ms  %6.2f GB/s\n", memcpy_ms, gbps(memcpy_ms));
  }
  (void)server->Stop();
  return 0;
}
