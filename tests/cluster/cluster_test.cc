// W real shard servers (one process each) and W trainers (threads, each with
// its own client and its own gradients): every rank's params must equal
// single-process float64 AdamW on the mean gradient, and all ranks' param
// buffers must be bitwise identical.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "client/client.h"
#include "tests/testing/adamw_reference.h"
#include "tests/testing/process.h"

namespace sherd {
namespace {

using testing::ClusterProcess;

// 3 tensors, 1000 + 7 + 333 = 1340 parameters: not a multiple of 3 or 4,
// and with 64-byte alignment tensors straddle slices for W >= 2.
ModelDef Model() {
  return ModelDef{.name = "straddle",
                  .tensors = {{"a", {40, 25}, ""}, {"b", {7}, "nd"}, {"c", {333}, ""}},
                  .groups = {{.name = "default", .weight_decay = 0.05f},
                             {.name = "nd", .lr_scale = 2.0f, .weight_decay = 0.0f}}};
}

float Init(size_t i) { return std::sin(0.5 * i) * 0.3f; }
float Grad(int rank, int step, size_t i) {
  std::mt19937 rng(rank * 100003 + step * 7919 + static_cast<int>(i));
  return std::uniform_real_distribution<float>(-1, 1)(rng) * (1 + rank);
}

// (world size, collectives through shared memory or over Gloo's TCP)
class ClusterExactness : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(ClusterExactness, MatchesSingleProcessAdamWOnTheMeanGradient) {
  const int world = std::get<0>(GetParam());
  const bool shm = std::get<1>(GetParam());
  const int kSteps = 20;
  const float kLr = 0.01f;
  auto cluster = ClusterProcess::Start(
      world, {"--collective-timeout", "30", "--shm-collectives", shm ? "true" : "false"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<std::vector<float>> finals(world);
  std::vector<std::thread> trainers;
  for (int r = 0; r < world; ++r) {
    trainers.emplace_back([&, r] {
      auto c = Client::Connect(cluster->address(r));
      ASSERT_TRUE(c.ok()) << c.status();
      auto info = (*c)->Register(Model());
      ASSERT_TRUE(info.ok()) << info.status();
      EXPECT_EQ(info->rank, r);
      EXPECT_EQ(info->world_size, world);
      size_t k = 0;
      for (const auto& t : Model().tensors)
        for (float& x : (*c)->Param(t.name)) x = Init(k++);
      ASSERT_TRUE((*c)->InitParams().ok());
      for (int s = 1; s <= kSteps; ++s) {
        k = 0;
        for (const auto& t : Model().tensors)
          for (float& g : (*c)->Grad(t.name)) g = Grad(r, s, k++);
        auto res = (*c)->Step({.lr = kLr});
        ASSERT_TRUE(res.ok()) << res.status();
        ASSERT_TRUE(res->applied);
      }
      auto p = (*c)->params();
      finals[r].assign(p.begin(), p.end());
    });
  }
  for (auto& t : trainers) t.join();
  ASSERT_FALSE(HasFailure());

  // Reference: float64 AdamW on the mean gradient.
  const ModelDef model = Model();
  std::vector<double> init;
  for (size_t i = 0; i < 1340; ++i) init.push_back(Init(i));
  testing::RefAdamW ref(init);
  for (int s = 1; s <= kSteps; ++s) {
    std::vector<double> mean(init.size(), 0.0);
    for (int r = 0; r < world; ++r)
      for (size_t i = 0; i < mean.size(); ++i) mean[i] += Grad(r, s, i) / static_cast<double>(world);
    ref.Tick();
    ref.Update(mean, 0, 1000, {kLr, 0.9, 0.999, 1e-8, 0.05});
    ref.Update(mean, 1000, 1007, {2 * kLr, 0.9, 0.999, 1e-8, 0.0});
    ref.Update(mean, 1007, 1340, {kLr, 0.9, 0.999, 1e-8, 0.05});
  }
  // Flat offsets: a at 0, b at 1008 (aligned to 16), c at 1024.
  const size_t offsets[] = {0, 1008, 1024};
  const size_t sizes[] = {1000, 7, 333};
  size_t k = 0;
  for (int t = 0; t < 3; ++t) {
    for (size_t i = 0; i < sizes[t]; ++i, ++k) {
      float got = finals[0][offsets[t] + i];
      // Relative to the params' scale (initial values up to 0.3): float32
      // holds a param near 0.3 only to ~1.5e-8, whatever the arithmetic.
      ASSERT_TRUE(testing::Close(got, ref.p[k], 1e-6, 0.1)) << "element " << k << ": " << got
                                                 << " vs " << ref.p[k];
    }
  }
  for (int r = 1; r < world; ++r) {
    ASSERT_EQ(finals[r].size(), finals[0].size());
    EXPECT_EQ(0, std::memcmp(finals[r].data(), finals[0].data(),
                             finals[0].size() * sizeof(float)))
        << "rank " << r << " differs from rank 0";
  }
  EXPECT_TRUE(cluster->Stop());
}

INSTANTIATE_TEST_SUITE_P(
    WorldSizes, ClusterExactness,
    ::testing::Values(std::make_tuple(1, true), std::make_tuple(2, true), std::make_tuple(3, true),
                      std::make_tuple(4, true), std::make_tuple(2, false),
                      std::make_tuple(3, false), std::make_tuple(4, false)),
    [](const auto& info) {
      return "W" + std::to_string(std::get<0>(info.param)) +
             (std::get<1>(info.param) ? "_shm" : "_gloo");
    });

}  // namespace
}  // namespace sherd
