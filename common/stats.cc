#include "common/stats.h"

#include <algorithm>
#include <cmath>

namespace sherd {

void RangeStats::Merge(const RangeStats& o) {
  count += o.count;
  finite += o.finite;
  min = std::min(min, o.min);
  max = std::max(max, o.max);
  sum += o.sum;
  sum_sq += o.sum_sq;
  nan += o.nan;
  inf += o.inf;
}

double RangeStats::l2() const { return std::sqrt(sum_sq); }

RangeStats ComputeStats(const float* data, int64_t n) {
  RangeStats s;
  s.count = n;
  for (int64_t i = 0; i < n; ++i) {
    float x = data[i];
    if (std::isnan(x)) {
      ++s.nan;
    } else if (std::isinf(x)) {
      ++s.inf;
    } else {
      double d = x;
      ++s.finite;
      s.min = std::min(s.min, d);
      s.max = std::max(s.max, d);
      s.sum += d;
      s.sum_sq += d * d;
    }
  }
  return s;
}

}  // namespace sherd
