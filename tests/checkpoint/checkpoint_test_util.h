// Helpers for the checkpoint tests: a scratch root per test, random models
// whose flat size is not a multiple of the world size, and a "cluster"
// holding every rank's slice of a full flat state in one process.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/layout.h"
#include "gtest/gtest.h"
#include "server/checkpoint/writer.h"
#include "server/state/model_state.h"

namespace sherd::testing {

// A fresh directory under TEST_TMPDIR (or /tmp), removed afterwards.
class TempRoot {
 public:
  TempRoot() {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string tmpl = absl::StrCat(base ? base : "/tmp", "/sherd-ckpt-XXXXXX");
    path_ = mkdtemp(tmpl.data()) ? tmpl : "";
    EXPECT_FALSE(path_.empty());
  }
  ~TempRoot() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const {
    return absl::StrCat(path_, "/", name);
  }

 private:
  std::string path_;
};

// A model of `tensors` tensors with odd shapes, two param groups.
inline ModelSpec RandomModel(uint32_t seed, int tensors = 7,
                             const std::string& name = "net") {
  std::mt19937 rng(seed);
  ModelSpec spec;
  spec.name = name;
  spec.groups = {ParamGroupConfig{.name = "default"},
                 ParamGroupConfig{.name = "no_decay", .lr_scale = 0.5f,
                                  .beta1 = 0.8f, .beta2 = 0.95f, .eps = 1e-6f,
                                  .weight_decay = 0.0f}};
  for (int i = 0; i < tensors; ++i) {
    TensorDesc d;
    d.name = absl::StrCat("layer", i, i % 2 ? ".bias" : ".weight");
    if (i % 2) {
      d.shape = {static_cast<int64_t>(rng() % 37 + 1)};
    } else {
      d.shape = {static_cast<int64_t>(rng() % 29 + 3),
                 static_cast<int64_t>(rng() % 23 + 5)};
    }
    d.dtype = i % 3 == 0 ? DType::kBFloat16 : DType::kFloat32;
    d.group = i % 2;
    spec.tensors.push_back(d);
  }
  return spec;
}

// The full flat state of a model (every element of [0, total) for one
// world size): random in the tensors, zero in the padding, as a server
// keeps it.
struct FullState {
  std::vector<float> p, m, v;
};

inline FullState RandomState(const Layout& layout, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  FullState s;
  for (auto* a : {&s.p, &s.m, &s.v}) a->assign(layout.total(), 0.0f);
  for (const TensorPlacement& t : layout.tensors()) {
    for (int64_t i = 0; i < t.numel; ++i) {
      s.p[t.offset + i] = normal(rng);
      s.m[t.offset + i] = normal(rng) * 1e-3f;
      s.v[t.offset + i] = std::abs(normal(rng)) * 1e-6f;
    }
  }
  return s;
}

inline std::vector<SliceSource> Slices(const Layout& layout,
                                       const FullState& s) {
  std::vector<SliceSource> out;
  for (int r = 0; r < layout.world_size(); ++r) {
    const int64_t b = layout.Slice(r).begin;
    out.push_back({s.p.data() + b, s.m.data() + b, s.v.data() + b});
  }
  return out;
}

inline std::map<std::string, int64_t> Counters(int64_t step) {
  return {{"adam_step", step - 2}, {"steps_applied", step - 2},
          {"steps_skipped", 2}};
}

// Saves `state` (laid out for `world`) as step `step`; returns the path.
inline std::string Save(const std::string& root, const ModelSpec& spec,
                        int world, int64_t step, const FullState& state,
                        WriteOptions options = {}) {
  Layout layout = *Layout::Build(spec.tensors, world);
  auto path = SaveCheckpoint(root, spec, world, step, Counters(step),
                             Slices(layout, state), options);
  EXPECT_TRUE(path.ok()) << path.status();
  return path.ok() ? *path : "";
}

// Small chunks so that even tiny test models span many chunks.
inline WriteOptions SmallChunks() {
  WriteOptions o;
  o.chunk_bytes = 64;
  return o;
}

}  // namespace sherd::testing
