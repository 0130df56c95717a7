#include "server/step/grad_norm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace sherd {
namespace {

// GCC/Clang vector extensions: 8 floats, compiled to whatever SIMD the
// target has (SSE pairs on baseline x86-64), without per-ISA files. Four
// independent accumulators hide the add latency; each block's sums go into
// double so large slices do not lose precision.
typedef float V8 __attribute__((vector_size(32)));
constexpr int64_t kBlock = 8192;

inline V8 Load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float HorizontalSum(V8 v) {
  float s = 0;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

}  // namespace

GradSummary SummarizeGrads(const float* g, int64_t n) {
  GradSummary out;
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t len = std::min(kBlock, n - base);
    const float* x = g + base;
    V8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    V8 bad = {};  // x - x is NaN exactly for NaN and Inf, 0 otherwise
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      V8 x0 = Load(x + i), x1 = Load(x + i + 8), x2 = Load(x + i + 16), x3 = Load(x + i + 24);
      a0 += x0 * x0;
      a1 += x1 * x1;
      a2 += x2 * x2;
      a3 += x3 * x3;
      bad += (x0 - x0) + (x1 - x1) + (x2 - x2) + (x3 - x3);
    }
    double block_sum = static_cast<double>(HorizontalSum(a0)) + HorizontalSum(a1) +
                       HorizontalSum(a2) + HorizontalSum(a3);
    float block_bad = HorizontalSum(bad);
    for (; i < len; ++i) {
      block_sum += static_cast<double>(x[i]) * x[i];
      block_bad += x[i] - x[i];
    }
    if (block_bad != 0 || std::isnan(block_bad) || !std::isfinite(block_sum)) {
      // Rare path: recount exactly, in double (a float square of a huge
      // finite value overflows without the value being non-finite).
      block_sum = 0;
      for (int64_t k = 0; k < len; ++k) {
        if (std::isfinite(x[k])) {
          block_sum += static_cast<double>(x[k]) * x[k];
        } else {
          ++out.non_finite;
        }
      }
    }
    out.sum_sq += block_sum;
  }
  return out;
}

}  // namespace sherd
