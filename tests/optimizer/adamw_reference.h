// Test-only float64 AdamW and the accuracy criterion the optimizer tests
// share.
//
// AdamWReference follows the math in server/optimizer/adamw.h in double
// precision (bias corrections with pow, exact sqrt and division), starting
// from the same float32 inputs the kernel sees. By default it rounds its
// stored state (p, m, v) to float32 after every step, as any fp32 optimizer
// must: each step is then exact-then-rounded, and a correct fp32 kernel stays
// within an ulp or so of it step after step (worst 3.5e-7 normalized after
// 100 steps on every path). A pure float64 trajectory (round_state = false)
// drifts from ANY fp32 one, torch's included, by a random walk of ~sqrt(steps)
// storage roundings: 1.4e-6 worst here, see StaysNearPureFloat64Trajectory.
//
// Criterion (Close): |x - ref| <= rtol * max(|ref|, mag), where mag is the
// float64 magnitude of the terms summed into the value over the whole
// trajectory (m: EMA of |g|; p: |p0| decayed plus every |update|; v: v
// itself). Without cancellation mag ~ |ref| and this is a plain relative
// bound; where m or p pass near zero, their rounding error is that of the
// terms that cancelled, so a bound on |ref| alone would be meaningless.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "server/optimizer/adamw.h"

namespace sherd::testing {

struct AdamWReference {
  std::vector<double> p, m, v;
  std::vector<double> p_mag, m_mag;  // error scales, see Close()
  bool round_state = true;

  explicit AdamWReference(std::span<const float> p0)
      : p(p0.begin(), p0.end()),
        m(p0.size(), 0.0),
        v(p0.size(), 0.0),
        m_mag(p0.size(), 0.0) {
    for (float x : p0) p_mag.push_back(std::fabs(x));
  }

  // grads: the exact (widened) grad values, one per element.
  void Step(std::span<const double> grads,
            std::span<const AdamWSegment> segments, int64_t step,
            float grad_multiplier) {
    auto store = [&](double x) {
      return round_state ? static_cast<double>(static_cast<float>(x)) : x;
    };
    for (const AdamWSegment& s : segments) {
      const AdamWHyper& h = s.hyper;
      const double b1 = h.beta1, b2 = h.beta2, lr = h.lr;
      const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step));
      const double bc2 = 1.0 - std::pow(b2, static_cast<double>(step));
      const double decay = 1.0 - lr * h.weight_decay;
      for (int64_t i = s.begin; i < s.end; ++i) {
        const double g = grads[i] * static_cast<double>(grad_multiplier);
        m[i] = store(b1 * m[i] + (1.0 - b1) * g);
        v[i] = store(b2 * v[i] + (1.0 - b2) * g * g);
        const double update =
            lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + h.eps);
        p[i] = store(p[i] * decay - update);
        m_mag[i] = b1 * m_mag[i] + (1.0 - b1) * std::fabs(g);
        p_mag[i] = p_mag[i] * decay + std::fabs(update);
      }
    }
  }
};

struct CloseResult {
  bool ok = true;
  double worst = 0.0;  // largest |x - ref| / max(|ref|, mag)
  int64_t worst_index = -1;
  std::string Describe(const char* what) const {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "%s: worst normalized error %.3g at element %lld", what,
                  worst, static_cast<long long>(worst_index));
    return buf;
  }
};

// Checks x against ref on every segment's elements (see the header comment).
// mag may be empty (plain relative bound).
inline CloseResult Close(std::span<const float> x, std::span<const double> ref,
                         std::span<const double> mag,
                         std::span<const AdamWSegment> segments, double rtol) {
  CloseResult r;
  for (const AdamWSegment& s : segments) {
    for (int64_t i = s.begin; i < s.end; ++i) {
      double scale = std::fabs(ref[i]);
      if (!mag.empty()) scale = std::max(scale, mag[i]);
      const double err = std::fabs(static_cast<double>(x[i]) - ref[i]);
      const double norm = scale > 0 ? err / scale : (err > 0 ? INFINITY : 0);
      if (!std::isnan(r.worst) && !(norm <= r.worst)) {  // NaN sticks
        r.worst = norm;
        r.worst_index = i;
      }
    }
  }
  r.ok = r.worst <= rtol;
  return r;
}

}  // namespace sherd::testing
