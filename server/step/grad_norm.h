// Stage 2 of the step: the local part of the global gradient norm and the
// non-finite check, in one read pass over the owned gradient slice.
#pragma once

#include <cstdint>

namespace sherd {

struct GradSummary {
  double sum_sq = 0;        // sum of squares of the finite values
  int64_t non_finite = 0;   // count of NaN and Inf values
};

GradSummary SummarizeGrads(const float* g, int64_t n);

}  // namespace sherd
