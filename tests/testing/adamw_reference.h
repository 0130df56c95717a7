// A float64 AdamW, written for clarity, as the oracle of the tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace sherd::testing {

struct RefHyper {
  double lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
};

struct RefAdamW {
  std::vector<double> p, m, v;
  int64_t t = 0;

  explicit RefAdamW(std::vector<double> init)
      : p(std::move(init)), m(p.size(), 0), v(p.size(), 0) {}

  // Updates elements [begin, end) with gradient g (indexed like p). Call
  // Tick() once per step before the ranges of that step.
  void Tick() { ++t; }
  void Update(const std::vector<double>& g, size_t begin, size_t end, const RefHyper& h) {
    const double bc1 = 1 - std::pow(h.beta1, static_cast<double>(t));
    const double bc2 = 1 - std::pow(h.beta2, static_cast<double>(t));
    for (size_t i = begin; i < end; ++i) {
      p[i] *= 1 - h.lr * h.weight_decay;
      m[i] = h.beta1 * m[i] + (1 - h.beta1) * g[i];
      v[i] = h.beta2 * v[i] + (1 - h.beta2) * g[i] * g[i];
      p[i] -= (h.lr / bc1) * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + h.eps);
    }
  }
};

// |a - b| <= rel * max(|b|, floor): relative error, with an absolute floor
// for values that pass near zero.
inline bool Close(double a, double b, double rel = 1e-6, double floor = 1e-3) {
  return std::fabs(a - b) <= rel * std::max(std::fabs(b), floor);
}

}  // namespace sherd::testing
