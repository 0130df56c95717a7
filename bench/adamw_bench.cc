// CPU AdamW step time against memory-copy bandwidth, in one run.
//
//   adamw_bench [--params=32Mi] [--benchmark_* flags]
//
// For every ISA path this CPU supports and 1 and 2 threads: one AdamW step
// over N params (read p, g, m, v; write p, m, v: 28 B/param with fp32 grads;
// also 28 B/param with bf16 grads plus a bf16 p_out), and a memcpy of the
// same 28 B/param (14 B/param read + 14 B/param written), split over the same
// number of threads, as the bandwidth reference. These machines are shared
// and noisy, so every case runs as several repetitions, randomly interleaved
// with the others; the table printed at the end gives the median and the
// best repetition, and the ratio to memcpy (best to best) last.

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
#include "server/optimizer/float_convert.h"
#include "server/optimizer/thread_pool.h"

namespace sherd {
namespace {

int64_t g_params = int64_t{32} << 20;

template <class T>
T* AllocPages(size_t count) {
  const size_t bytes = (count * sizeof(T) + 4095) & ~size_t{4095};
  return static_cast<T*>(std::aligned_alloc(4096, bytes));
}

// Allocated and faulted in once, before any timing, and reused by every
// repetition. Values are normal floats: denormals would time microcode
// assists, not memory.
struct Buffers {
  explicit Buffers(int64_t n)
      : g32(AllocPages<float>(n)),
        g16(AllocPages<uint16_t>(n)),
        p(AllocPages<float>(n)),
        m(AllocPages<float>(n)),
        v(AllocPages<float>(n)),
        out16(AllocPages<uint16_t>(n)),
        copy_bytes(static_cast<size_t>(n) * 14),
        src(AllocPages<char>(copy_bytes)),
        dst(AllocPages<char>(copy_bytes)) {
    for (int64_t i = 0; i < n; ++i) {
      const float x = 1e-3f * static_cast<float>((i * 2654435761u) % 1000 + 1);
      g32[i] = x, p[i] = x, m[i] = 1e-3f * x, v[i] = 1e-6f * x;
      g16[i] = internal::FloatToBFloat16(x);
      out16[i] = 0;
    }
    std::memset(src, 1, copy_bytes);
    std::memset(dst, 2, copy_bytes);
  }
  float* g32;
  uint16_t* g16;
  float *p, *m, *v;
  uint16_t* out16;
  size_t copy_bytes;
  char *src, *dst;
};
Buffers* g_buf = nullptr;

void BM_Memcpy(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const size_t bytes = g_buf->copy_bytes;
  internal::ThreadPool pool(threads);
  const size_t part = (bytes / threads + 4095) & ~size_t{4095};
  for (auto _ : state) {
    pool.Run([&](int w) {
      const size_t begin = std::min(bytes, part * w);
      const size_t end = std::min(bytes, begin + part);
      std::memcpy(g_buf->dst + begin, g_buf->src + begin, end - begin);
    });
    benchmark::ClobberMemory();
  }
}

void BM_AdamW(benchmark::State& state) {
  const Isa isa = static_cast<Isa>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const bool half = state.range(2) != 0;  // bf16 grads + bf16 p_out
  AdamW opt(threads, isa);
  AdamWBuffers buf{half ? static_cast<const void*>(g_buf->g16) : g_buf->g32,
                   g_buf->p,
                   g_buf->m,
                   g_buf->v,
                   half ? g_buf->out16 : nullptr,
                   half ? GradType::kBFloat16 : GradType::kFloat32,
                   half ? ParamOutType::kBFloat16 : ParamOutType::kNone};
  AdamWSegment seg{0, g_params, {}};
  seg.hyper.weight_decay = 0.01f;
  int64_t step = 0;
  for (auto _ : state) {
    opt.Apply(buf, {&seg, 1}, ++step, 1.0f);
    benchmark::ClobberMemory();
  }
}

// Collects every repetition's time per step; prints nothing per run.
class TableReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context& context) override {
    PrintBasicContext(&GetErrorStream(), context);
    return true;
  }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.error_occurred || r.run_type != Run::RT_Iteration) continue;
      samples_[r.run_name.function_name].push_back(r.real_accumulated_time /
                                                   r.iterations);
      if (order_.empty() || std::find(order_.begin(), order_.end(),
                                      r.run_name.function_name) == order_.end())
        order_.push_back(r.run_name.function_name);
    }
  }

  void PrintTable() {
    // Names are "<what>/T<threads>"; memcpy of the same threads is the
    // reference. Every case moves 28 B/param.
    const double bytes = 28.0 * static_cast<double>(g_params);
    std::map<std::string, double> copy_best;
    for (auto& [name, s] : samples_) {
      std::sort(s.begin(), s.end());
      if (name.rfind("memcpy", 0) == 0) copy_best[Threads(name)] = s.front();
    }
    std::printf("\nparams %lld (%.1f Mi), 28 B/param, %zu repetitions\n",
                static_cast<long long>(g_params), g_params / 1048576.0,
                samples_.empty() ? size_t{0} : samples_.begin()->second.size());
    std::printf("%-30s %11s %11s %11s %13s\n", "run", "median ms", "best ms",
                "best GB/s", "vs memcpy");
    std::sort(order_.begin(), order_.end(), [](const auto& a, const auto& b) {
      return Threads(a) != Threads(b) ? Threads(a) < Threads(b) : a < b;
    });
    for (const std::string& name : order_) {
      const std::vector<double>& s = samples_[name];
      const double best = s.front(), median = s[s.size() / 2];
      const double ref =
          copy_best.count(Threads(name)) ? copy_best[Threads(name)] : 0;
      std::printf("%-30s %11.2f %11.2f %11.2f %12.0f%%\n", name.c_str(),
                  median * 1e3, best * 1e3, bytes / best / 1e9,
                  ref > 0 ? 100 * ref / best : 0.0);
    }
  }

 private:
  static std::string Threads(const std::string& name) {
    return name.substr(name.rfind('/') + 1);
  }
  std::map<std::string, std::vector<double>> samples_;
  std::vector<std::string> order_;
};

int64_t ParseCount(const char* s) {
  char* end = nullptr;
  int64_t n = std::strtoll(s, &end, 10);
  if (std::strcmp(end, "Mi") == 0 || std::strcmp(end, "M") == 0) n <<= 20;
  if (std::strcmp(end, "Ki") == 0 || std::strcmp(end, "K") == 0) n <<= 10;
  return n;
}

}  // namespace
}  // namespace sherd

int main(int argc, char** argv) {
  using namespace sherd;
  // Defaults for a noisy shared machine; later flags override them.
  std::vector<std::string> storage = {
      argv[0], "--benchmark_repetitions=10", "--benchmark_min_time=0.1",
      "--benchmark_enable_random_interleaving=true"};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--params=", 9) == 0) {
      g_params = std::max<int64_t>(1, ParseCount(argv[i] + 9));
    } else {
      storage.push_back(argv[i]);
    }
  }
  std::vector<char*> args;
  for (std::string& s : storage) args.push_back(s.data());
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  g_buf = new Buffers(g_params);

  for (int threads : {1, 2}) {
    const std::string t = "/T" + std::to_string(threads);
    benchmark::RegisterBenchmark(("memcpy_28B" + t).c_str(), BM_Memcpy)
        ->Arg(threads)
        ->UseRealTime();
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!IsaSupported(isa)) continue;
      for (int half : {0, 1}) {
        if (half && isa != BestIsa()) continue;  // one bf16 row is enough
        const std::string name = "adamw_" + std::string(IsaName(isa)) +
                                 (half ? "_bf16g_bf16out" : "_fp32") + t;
        benchmark::RegisterBenchmark(name.c_str(), BM_AdamW)
            ->Args({static_cast<int64_t>(isa), threads, half})
            ->UseRealTime();
      }
    }
  }
  TableReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintTable();
  benchmark::Shutdown();
  return 0;
}
