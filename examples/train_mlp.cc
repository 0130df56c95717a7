// The example trainer: a multi-layer perceptron learning a teacher network's
// labels, with every optimizer step done by its shard server through
// sherd::Client. Gradients go into the server's grad buffer, updated
// parameters are read from its param buffer.
//
//   train_mlp --server 127.0.0.1:7070 --steps 300
//
// Deterministic: batch s of rank r is drawn from seed (seed, r, s), so a
// trainer restarted mid-run continues exactly where it left off.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "client/client.h"
#include "examples/mlp.h"

namespace {

using sherd::example::MlpShape;

struct Flags {
  std::string server = "127.0.0.1:7070";
  int steps = 300;
  int batch = 128;
  float lr = 1e-3f;
  int warmup = 20;
  float max_grad_norm = 1.0f;
  int hidden = 1536;
  uint64_t seed = 1;
  int log_every = 20;
  int eval_size = 4096;
  bool inline_data = false;
  std::string model = "mlp";
};

float LearningRate(const Flags& f, int64_t step) {
  if (step <= f.warmup) return f.lr * static_cast<float>(step) / f.warmup;
  double progress = static_cast<double>(step - f.warmup) /
                    std::max(1, f.steps - f.warmup);
  return static_cast<float>(f.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * std::min(1.0, progress)))));
}

int Run(const Flags& f) {
  sherd::ClientOptions co;
  co.use_shared_memory = !f.inline_data;
  co.map_device_buffers = false;  // a CPU trainer: GPU state goes inline
  auto client = sherd::Client::Connect(f.server, co);
  if (!client.ok()) {
    std::fprintf(stderr, "train_mlp: %s\n", std::string(client.status().message()).c_str());
    return 1;
  }
  sherd::Client& c = **client;
  MlpShape shape;
  shape.hidden = f.hidden;
  sherd::ModelDef def;
  def.name = f.model;
  def.groups = {{.name = "default", .weight_decay = 0.01f},
                {.name = "no_decay", .weight_decay = 0.0f}};
  auto tensors = sherd::example::MlpTensors(shape);
  for (const auto& t : tensors) def.tensors.push_back({t.name, t.shape, t.is_bias ? "no_decay" : ""});
  auto info = c.Register(def);
  if (!info.ok()) {
    std::fprintf(stderr, "train_mlp: register: %s\n", std::string(info.status().message()).c_str());
    return 1;
  }
  sherd::example::MlpViews p, g;
  for (const auto& t : tensors) {
    p.t.push_back(c.Param(t.name));
    g.t.push_back(c.Grad(t.name));
  }
  sherd::example::Mlp mlp(shape);
  const int rank = info->rank;
  if (!info->initialized) {
    mlp.Init(p, f.seed);
    if (auto s = c.InitParams(); !s.ok()) {
      std::fprintf(stderr, "train_mlp: init: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  int64_t params = c.layout().parameters();
  std::printf("rank %d/%d: model '%s', %lld parameters, state on %s, %s data plane, %s at step %lld\n",
              rank, info->world_size, f.model.c_str(), static_cast<long long>(params),
              info->device.c_str(), c.shared_memory() ? "shared-memory" : "inline gRPC",
              info->reattached ? "re-attached" : "starting", static_cast<long long>(c.next_step()));
  std::fflush(stdout);

  sherd::example::TeacherTask task(shape, f.seed + 1000);
  std::vector<float> xe, x;
  std::vector<int> ye, y;
  task.Sample(f.seed * 7919 + 17, f.eval_size, &xe, &ye);  // held out: same for all ranks
  const double chance = 1.0 / shape.classes;
  std::vector<double> losses;
  double first_loss = NAN;
  double sum_ms = 0;
  int counted = 0;
  while (c.next_step() <= f.steps) {
    const int64_t step = c.next_step();
    auto t0 = std::chrono::steady_clock::now();
    task.Sample((f.seed << 40) ^ (static_cast<uint64_t>(rank) << 32) ^ static_cast<uint64_t>(step),
                f.batch, &x, &y);
    int correct = 0;
    double loss = mlp.TrainStep(p, g, x, y, &correct);
    auto r = c.Step({.lr = LearningRate(f, step), .max_grad_norm = f.max_grad_norm});
    if (!r.ok()) {
      std::fprintf(stderr, "train_mlp: %s\n", std::string(r.status().message()).c_str());
      return 1;
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    sum_ms += ms;
    ++counted;
    if (std::isnan(first_loss)) first_loss = loss;
    losses.push_back(loss);
    if (step % f.log_every == 0 || step == 1 || step == f.steps) {
      std::printf("rank %d step %4lld  loss %.4f  acc %.3f  |g| %.3f%s  step %.1f ms (server %.1f ms)\n",
                  rank, static_cast<long long>(step), loss,
                  static_cast<double>(correct) / f.batch, r->grad_norm,
                  r->applied ? "" : " SKIPPED", ms, r->server_ms);
      std::fflush(stdout);
    }
  }
  if (losses.empty()) {
    std::printf("rank %d: nothing to do, already at step %lld\n", rank,
                static_cast<long long>(c.next_step()));
    return 0;
  }
  const size_t k = std::min<size_t>(20, losses.size());
  double tail = std::accumulate(losses.end() - k, losses.end(), 0.0) / k;
  double head = std::accumulate(losses.begin(), losses.begin() + k, 0.0) / k;
  int ok = mlp.Evaluate(p, xe, ye);
  // A fingerprint of the final params, to compare runs bit for bit.
  uint64_t fnv = 1469598103934665603ull;
  for (float v : c.params()) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (int b = 0; b < 4; ++b) fnv = (fnv ^ ((bits >> (8 * b)) & 0xff)) * 1099511628211ull;
  }
  std::printf("rank %d params fnv1a64 %016llx\n", rank, static_cast<unsigned long long>(fnv));
  std::printf("rank %d final: loss %.4f -> %.4f (mean of first/last %zu steps), held-out accuracy %.1f%% (chance %.0f%%), mean step %.1f ms\n",
              rank, head, tail, k, 100.0 * ok / f.eval_size, 100 * chance, sum_ms / counted);
  // Exit 3 if the loss did not fall over a run long enough to tell.
  return losses.size() < 2 * k || tail < head ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"train_mlp: trains an MLP on a synthetic teacher task, with the "
               "optimizer state held by a sherd shard server."};
  app.add_option("--server", f.server, "Shard server address")->envname("SHERD_SERVER")->capture_default_str();
  app.add_option("--steps", f.steps, "Last step to train")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", f.batch, "Batch size per trainer")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", f.lr, "Peak learning rate")->capture_default_str();
  app.add_option("--warmup", f.warmup, "Warmup steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--max-grad-norm", f.max_grad_norm, "Clip the global gradient norm (0: off)")->capture_default_str();
  app.add_option("--hidden", f.hidden, "Hidden width")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of the model and the data")->capture_default_str();
  app.add_option("--log-every", f.log_every, "Print every N steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--model", f.model, "Model name to register")->capture_default_str();
  app.add_flag("--inline", f.inline_data, "Use the inline gRPC data plane instead of shared memory");
  CLI11_PARSE(app, argc, argv);
  return Run(f);
}
