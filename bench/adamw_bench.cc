// CPU AdamW step time against memory-copy bandwidth, in one run.
//
//   adamw_bench [--params=32Mi] [--benchmark_* flags]
//
// For every ISA path this CPU supports and 1 and 2 threads: one AdamW step
// over N fp32 params (read p, g, m, v; write p, m, v: 28 B/param), and a
// memcpy of the same 28 B/param (14 B/param read + 14 B/param written), split
// over the same number of threads, as the bandwidth reference. The table
// printed at the end gives ms/step, GB/s and the ratio to memcpy last.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "server/optimizer/adamw.h"
#include "server/optimizer/thread_pool.h"

namespace sherd {
namespace {

int64_t g_params = int64_t{32} << 20;

struct Buffer {
  explicit Buffer(size_t bytes)
      : data(static_cast<char*>(
            std::aligned_alloc(4096, (bytes + 4095) & ~size_t{4095}))),
        size(bytes) {
    // Fault every page in before timing; nonzero so nothing is special.
    for (size_t i = 0; i < bytes; i += 4) {
      const float x = 1e-3f * static_cast<float>((i * 2654435761u) % 1000 + 1);
      std::memcpy(data + i, &x, std::min<size_t>(4, bytes - i));
    }
  }
  ~Buffer() { std::free(data); }
  char* data;
  size_t size;
};

struct Row {
  std::string name;  // "<what>/T<threads>"
  double ms = 0;
  double gbps = 0;
};
std::vector<Row>* g_rows = new std::vector<Row>;

void BM_Memcpy(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const size_t bytes = static_cast<size_t>(g_params) * 14;
  Buffer src(bytes), dst(bytes);
  internal::ThreadPool pool(threads);
  const size_t part = (bytes / threads + 4095) & ~size_t{4095};
  for (auto _ : state) {
    pool.Run([&](int w) {
      const size_t begin = std::min(bytes, part * w);
      const size_t end = std::min(bytes, begin + part);
      std::memcpy(dst.data + begin, src.data + begin, end - begin);
    });
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * static_cast<int64_t>(bytes));
}

void BM_AdamW(benchmark::State& state) {
  const Isa isa = static_cast<Isa>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const bool half = state.range(2) != 0;  // bf16 grads + bf16 p_out
  if (!IsaSupported(isa)) {
    state.SkipWithError("ISA not supported on this CPU");
    return;
  }
  const size_t n = static_cast<size_t>(g_params);
  Buffer g(n * (half ? 2 : 4)), p(n * 4), m(n * 4), v(n * 4),
      out(half ? n * 2 : 0);
  AdamW opt(threads, isa);
  AdamWBuffers buf{g.data,
                   reinterpret_cast<float*>(p.data),
                   reinterpret_cast<float*>(m.data),
                   reinterpret_cast<float*>(v.data),
                   half ? out.data : nullptr,
                   half ? GradType::kBFloat16 : GradType::kFloat32,
                   half ? ParamOutType::kBFloat16 : ParamOutType::kNone};
  AdamWSegment seg{0, g_params, {}};
  seg.hyper.weight_decay = 0.01f;
  int64_t step = 0;
  for (auto _ : state) {
    opt.Apply(buf, {&seg, 1}, ++step, 1.0f);
    benchmark::ClobberMemory();
  }
  // 28 B/param either way: fp32 g + no p_out, or bf16 g + bf16 p_out.
  state.SetBytesProcessed(state.iterations() * 28 * g_params);
}

// Keeps each run's mean time for the ratio table.
class TableReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred || r.run_type != Run::RT_Iteration) continue;
      const double seconds = r.real_accumulated_time / r.iterations;
      // Every run here moves 28 B/param (see the file comment).
      g_rows->push_back({r.run_name.function_name, seconds * 1e3,
                         28.0 * static_cast<double>(g_params) / seconds / 1e9});
    }
  }
};

void PrintTable() {
  std::map<std::string, double> copy_gbps;  // "T1" / "T2" -> GB/s
  for (const Row& r : *g_rows) {
    if (r.name.rfind("memcpy", 0) == 0)
      copy_gbps[r.name.substr(r.name.rfind('/') + 1)] = r.gbps;
  }
  std::printf("\nparams %lld (%.1f Mi), 28 B/param\n",
              static_cast<long long>(g_params), g_params / 1048576.0);
  std::printf("%-40s %10s %10s %12s\n", "run", "ms/step", "GB/s", "vs memcpy");
  for (const Row& r : *g_rows) {
    const std::string t = r.name.substr(r.name.rfind('/') + 1);
    const double ref = copy_gbps.count(t) ? copy_gbps[t] : 0;
    std::printf("%-40s %10.2f %10.2f %11.0f%%\n", r.name.c_str(), r.ms, r.gbps,
                ref > 0 ? 100 * r.gbps / ref : 0.0);
  }
}

int64_t ParseCount(const char* s) {
  char* end = nullptr;
  int64_t n = std::strtoll(s, &end, 10);
  if (end && (std::strcmp(end, "Mi") == 0 || std::strcmp(end, "M") == 0))
    n <<= 20;
  if (end && (std::strcmp(end, "Ki") == 0 || std::strcmp(end, "K") == 0))
    n <<= 10;
  return n;
}

}  // namespace
}  // namespace sherd

int main(int argc, char** argv) {
  using namespace sherd;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--params=", 9) == 0) {
      g_params = std::max<int64_t>(1, ParseCount(argv[i] + 9));
    } else {
      args.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  for (int threads : {1, 2}) {
    const std::string t = "/T" + std::to_string(threads);
    benchmark::RegisterBenchmark(("memcpy_28B" + t).c_str(), BM_Memcpy)
        ->Arg(threads)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!IsaSupported(isa)) continue;
      for (int half : {0, 1}) {
        if (half && isa != BestIsa()) continue;  // one bf16 row is enough
        const std::string name = "adamw_" + std::string(IsaName(isa)) +
                                 (half ? "_bf16g_bf16out" : "_fp32") + t;
        benchmark::RegisterBenchmark(name.c_str(), BM_AdamW)
            ->Args({static_cast<int64_t>(isa), threads, half})
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  TableReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  PrintTable();
  benchmark::Shutdown();
  return 0;
}
