#include "cuda_kernels/internal/segment_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/optimizer/adamw_kernel.h"

namespace sherd::cuda_internal {

absl::StatusOr<int64_t> BuildSegmentTable(
    std::span<const AdamWSegment> segments, int64_t step, bool vectorized,
    std::vector<SegmentEntry>* rows) {
  rows->clear();
  int64_t units = 0;
  constexpr int64_t kW = kVecWidth;
  for (const AdamWSegment& seg : segments) {
    if (seg.end <= seg.begin) continue;
    if (seg.begin < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("CudaAdamW: segment begins at ", seg.begin));
    }
    // The multiplier is applied per step on the device, not baked in here.
    const internal::AdamWConstants c =
        internal::MakeAdamWConstants(seg.hyper, step, 1.0f);
    SegmentEntry r;
    r.begin = seg.begin;
    r.end = seg.end;
    if (vectorized) {
      r.vec_begin = std::min((seg.begin + kW - 1) / kW * kW, seg.end);
      r.vec_end = std::max(r.vec_begin, seg.end / kW * kW);
    } else {
      r.vec_begin = r.vec_end = seg.end;
    }
    r.unit_begin = units;
    r.lr_wd = c.lr_wd;
    r.one_minus_beta1 = c.one_minus_beta1;
    r.one_minus_beta2 = c.one_minus_beta2;
    r.step_size = c.step_size;
    r.inv_sqrt_bc2 = c.inv_sqrt_bc2;
    r.eps = c.eps;
    units += UnitsOf(r);
    rows->push_back(r);
  }
  return units;
}

}  // namespace sherd::cuda_internal
