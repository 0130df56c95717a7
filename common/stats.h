// Summary statistics of a float range, mergeable across ranks so sherdctl
// can assemble a tensor's statistics from the pieces its owners report.
#pragma once

#include <cstdint>
#include <limits>

namespace sherd {

struct RangeStats {
  int64_t count = 0;      // finite and non-finite values
  int64_t finite = 0;
  double min = std::numeric_limits<double>::infinity();   // over finite
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0;         // over finite
  double sum_sq = 0;      // over finite
  int64_t nan = 0;
  int64_t inf = 0;

  void Merge(const RangeStats& o);
  double mean() const { return finite ? sum / finite : 0.0; }
  double l2() const;
};

RangeStats ComputeStats(const float* data, int64_t n);

}  // namespace sherd
