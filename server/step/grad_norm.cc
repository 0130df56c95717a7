#include "server/step/grad_norm.h"

#include <cmath>

namespace sherd {
namespace {

// Blocks of float accumulators keep the loop vectorizable; each block's sum
// goes into double so large slices do not lose precision.
constexpr int kLanes = 16;
constexpr int64_t kBlock = 4096;

}  // namespace

GradSummary SummarizeGrads(const float* g, int64_t n) {
  GradSummary out;
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t len = std::min(kBlock, n - base);
    const float* x = g + base;
    float acc[kLanes] = {};
    float bad[kLanes] = {};  // x - x is NaN exactly for NaN and Inf
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        acc[j] += x[i + j] * x[i + j];
        bad[j] += x[i + j] - x[i + j];
      }
    }
    double block_sum = 0;
    float block_bad = 0;
    for (int j = 0; j < kLanes; ++j) {
      block_sum += acc[j];
      block_bad += bad[j];
    }
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
