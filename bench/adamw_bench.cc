// CPU AdamW step time against memory-copy bandwidth, in one run.
//
//   adamw_bench [--params=32Mi] [--pairs=15] [--benchmark_* flags]
//
// For every ISA path this CPU supports and 1 and 2 threads: one AdamW step
// over N params (read p, g, m, v; write p, m, v: 28 B/param with fp32 grads),
// and a memcpy of the same 28 B/param (14 B/param read + 14 B/param
// written), split over the same number of threads, as the bandwidth
// reference. For the best path also: bf16 grads + bf16 p_out (28 B/param),
// fp32 p_out (32 B/param, streamed), and fp32 p_out applied in 512 Ki pieces,
// below the streaming threshold (plain stores) to show what streaming buys.
// These machines are shared and noisy, so every case runs as several
// repetitions, randomly interleaved with the others; the table printed at the
// end gives the median and the best repetition, and the ratio to memcpy (best
// to best) last. Load from other processes comes and goes within seconds, so
// a second table times memcpy and an fp32 AdamW step back to back, --pairs=N
// times (default 15), and gives the median of the per-pair ratios: the most
// robust figure on a busy machine.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
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
        out32(AllocPages<float>(n)),
        copy_bytes(static_cast<size_t>(n) * 14),
        src(AllocPages<char>(copy_bytes)),
        dst(AllocPages<char>(copy_bytes)) {
    for (int64_t i = 0; i < n; ++i) {
      const float x = 1e-3f * static_cast<float>((i * 2654435761u) % 1000 + 1);
      g32[i] = x, p[i] = x, m[i] = 1e-3f * x, v[i] = 1e-6f * x;
      g16[i] = internal::FloatToBFloat16(x);
      out16[i] = 0;
      out32[i] = 0;
    }
    std::memset(src, 1, copy_bytes);
    std::memset(dst, 2, copy_bytes);
  }
  float* g32;
  uint16_t* g16;
  float *p, *m, *v;
  uint16_t* out16;
  float* out32;
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

enum Variant : int64_t {
  kFp32,           // fp32 grads, no p_out: 28 B/param
  kBf16,           // bf16 grads, bf16 p_out: 28 B/param
  kFp32Out,        // fp32 grads, fp32 p_out: 32 B/param
  kFp32OutPieces,  // the same in 512 Ki-element applies (no streaming)
};
constexpr const char* kVariantNames[] = {"_fp32", "_bf16g_bf16out", "_fp32out",
                                         "_fp32out_512Ki"};

void BM_AdamW(benchmark::State& state) {
  const Isa isa = static_cast<Isa>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const auto variant = static_cast<Variant>(state.range(2));
  AdamW opt(threads, isa);
  AdamWBuffers buf{g_buf->g32, g_buf->p, g_buf->m, g_buf->v};
  if (variant == kBf16) {
    buf.grad = g_buf->g16;
    buf.grad_type = GradType::kBFloat16;
    buf.param_out = g_buf->out16;
    buf.param_out_type = ParamOutType::kBFloat16;
  } else if (variant != kFp32) {
    buf.param_out = g_buf->out32;
    buf.param_out_type = ParamOutType::kFloat32;
  }
  const int64_t piece = variant == kFp32OutPieces ? 512 * 1024 : g_params;
  std::vector<AdamWSegment> segs;
  for (int64_t b = 0; b < g_params; b += piece) {
    segs.push_back({b, std::min(b + piece, g_params), {}});
    segs.back().hyper.weight_decay = 0.01f;
  }
  int64_t step = 0;
  for (auto _ : state) {
    ++step;
    for (const AdamWSegment& s : segs) opt.Apply(buf, {&s, 1}, step, 1.0f);
    benchmark::ClobberMemory();
  }
  state.counters["bytes_per_param"] = variant >= kFp32Out ? 32 : 28;
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
      const auto bpp = r.counters.find("bytes_per_param");
      bytes_per_param_[r.run_name.function_name] =
          bpp == r.counters.end() ? 28.0 : bpp->second.value;
      if (order_.empty() || std::find(order_.begin(), order_.end(),
                                      r.run_name.function_name) == order_.end())
        order_.push_back(r.run_name.function_name);
    }
  }

  void PrintTable() {
    // Names are "<what>/T<threads>"; memcpy of the same threads is the
    // reference, compared in GB/s.
    std::map<std::string, double> copy_gbps;
    for (auto& [name, s] : samples_) {
      std::sort(s.begin(), s.end());
      if (name.rfind("memcpy", 0) == 0) copy_gbps[Threads(name)] = Gbps(name);
    }
    std::printf("\nparams %lld (%.1f Mi), %zu repetitions\n",
                static_cast<long long>(g_params), g_params / 1048576.0,
                samples_.empty() ? size_t{0} : samples_.begin()->second.size());
    std::printf("%-30s %6s %10s %10s %10s %10s\n", "run", "B/par", "median ms",
                "best ms", "best GB/s", "vs memcpy");
    std::sort(order_.begin(), order_.end(), [](const auto& a, const auto& b) {
      return Threads(a) != Threads(b) ? Threads(a) < Threads(b) : a < b;
    });
    for (const std::string& name : order_) {
      const std::vector<double>& s = samples_[name];
      const double ref =
          copy_gbps.count(Threads(name)) ? copy_gbps[Threads(name)] : 0;
      std::printf("%-30s %6.0f %10.2f %10.2f %10.2f %9.0f%%\n", name.c_str(),
                  bytes_per_param_[name], s[s.size() / 2] * 1e3,
                  s.front() * 1e3, Gbps(name),
                  ref > 0 ? 100 * Gbps(name) / ref : 0.0);
    }
  }

 private:
  static std::string Threads(const std::string& name) {
    return name.substr(name.rfind('/') + 1);
  }
  // Best repetition, in GB/s of the bytes the case moves.
  double Gbps(const std::string& name) {
    return bytes_per_param_[name] * static_cast<double>(g_params) /
           *std::min_element(samples_[name].begin(), samples_[name].end()) /
           1e9;
  }
  std::map<std::string, std::vector<double>> samples_;
  std::map<std::string, double> bytes_per_param_;
  std::vector<std::string> order_;
};

double Seconds(absl::FunctionRef<void()> fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

void PrintPairedRatios(int pairs) {
  if (pairs <= 0) return;
  std::printf(
      "\n%d back-to-back pairs (memcpy 28 B/param, then one fp32 "
      "AdamW step)\n%-24s %14s %10s %10s\n",
      pairs, "run", "median ratio", "min", "max");
  const size_t bytes = g_buf->copy_bytes;
  for (int threads : {1, 2}) {
    internal::ThreadPool pool(threads);
    const size_t part = (bytes / threads + 4095) & ~size_t{4095};
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!IsaSupported(isa)) continue;
      AdamW opt(threads, isa);
      const AdamWBuffers buf{g_buf->g32, g_buf->p, g_buf->m, g_buf->v};
      const AdamWSegment seg{0, g_params, {}};
      std::vector<double> ratios;
      for (int k = 0; k <= pairs; ++k) {
        const double copy = Seconds([&] {
          pool.Run([&](int w) {
            const size_t begin = std::min(bytes, part * w);
            const size_t end = std::min(bytes, begin + part);
            std::memcpy(g_buf->dst + begin, g_buf->src + begin, end - begin);
          });
        });
        const double adamw = Seconds([&] {
          opt.Apply(buf, {&seg, 1}, 1000 + k, 1.0f);
        });
        if (k > 0) ratios.push_back(copy / adamw);  // k = 0 warms up
      }
      std::sort(ratios.begin(), ratios.end());
      const std::string name =
          "adamw_" + std::string(IsaName(isa)) + "/T" + std::to_string(threads);
      std::printf("%-24s %13.0f%% %9.0f%% %9.0f%%\n", name.c_str(),
                  100 * ratios[ratios.size() / 2], 100 * ratios.front(),
                  100 * ratios.back());
    }
  }
}

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
  int pairs = 15;
  std::vector<std::string> storage = {
      argv[0], "--benchmark_repetitions=10", "--benchmark_min_time=0.1",
      "--benchmark_enable_random_interleaving=true"};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--params=", 9) == 0) {
      g_params = std::max<int64_t>(1, ParseCount(argv[i] + 9));
    } else if (std::strncmp(argv[i], "--pairs=", 8) == 0) {
      pairs = std::atoi(argv[i] + 8);
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
      for (int64_t v : {kFp32, kBf16, kFp32Out, kFp32OutPieces}) {
        if (v != kFp32 && isa != BestIsa()) continue;  // variants: best only
        const std::string name =
            "adamw_" + std::string(IsaName(isa)) + kVariantNames[v] + t;
        benchmark::RegisterBenchmark(name.c_str(), BM_AdamW)
            ->Args({static_cast<int64_t>(isa), threads, v})
            ->UseRealTime();
      }
    }
  }
  TableReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintTable();
  PrintPairedRatios(pairs);
  benchmark::Shutdown();
  return 0;
}
