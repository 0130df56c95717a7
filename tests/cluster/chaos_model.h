// What the chaos run trains (tests/cluster/chaos_test.cc), shared by the
// test and its trainer processes (chaos_trainer.cc): the gradients depend
// on the step id only, so a step replayed after a rewind applies exactly
// what its first try applied.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstddef>

#include "client/client.h"

namespace sherd::chaos {

constexpr int kWorld = 4;
constexpr int kSteps = 1000;

inline ModelDef Model() {
  return ModelDef{.name = "chaos",
                  .tensors = {{"w", {64, 48}, ""}, {"b", {48}, "nd"}, {"v", {517}, ""}},
                  .groups = {{.name = "nd", .weight_decay = 0.0f}}};
}

inline float Grad(int64_t step, size_t i) {
  return std::sin(0.05 * i + 0.3 * step) * 0.25f;
}

// Writes the initial params into a freshly registered client's P.
inline void InitialParams(Client& c) {
  size_t k = 0;
  for (const auto& t : Model().tensors)
    for (float& x : c.Param(t.name)) x = std::cos(0.1 * k++);
}

// Writes step `step`'s gradients into the client's G.
inline void Grads(Client& c, int64_t step) {
  size_t k = 0;
  for (const auto& t : Model().tensors)
    for (float& g : c.Grad(t.name)) g = Grad(step, k++);
}

}  // namespace sherd::chaos
