// A small multi-layer perceptron with a hand-written backward pass, for the
// example trainer. Weights are read from, and gradients written to, flat
// views the caller provides (the shard server's P and G buffers), so the
// model itself owns no parameters.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace sherd::example {

struct MlpShape {
  int input = 128;
  int hidden = 1536;
  int classes = 10;
};

// Tensor names in registration order with their shapes.
struct MlpTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool is_bias;
};
std::vector<MlpTensor> MlpTensors(const MlpShape& s);

struct MlpViews {  // one span per tensor, in MlpTensors order
  std::vector<std::span<float>> t;
};

class Mlp {
 public:
  explicit Mlp(MlpShape shape) : s_(shape) {}
  // Kaiming-uniform weights, zero biases, from `seed`.
  void Init(const MlpViews& params, uint64_t seed) const;
  // Forward + backward on a batch (x: batch x input, labels): writes the
  // gradients of the mean cross-entropy into `grads`, returns the loss and
  // sets *correct to the number of correct argmax predictions.
  double TrainStep(const MlpViews& params, const MlpViews& grads,
                   const std::vector<float>& x, const std::vector<int>& labels,
                   int* correct);
  // Forward only; returns the number of correct predictions.
  int Evaluate(const MlpViews& params, const std::vector<float>& x,
               const std::vector<int>& labels);

 private:
  void Forward(const MlpViews& p, const float* x, int batch);
  MlpShape s_;
  std::vector<float> h1_, h2_, logits_, d2_, d1_;
};

// The synthetic task: labels are the argmax of a fixed random teacher
// network (input -> 64 tanh -> classes) on Gaussian inputs.
class TeacherTask {
 public:
  TeacherTask(const MlpShape& shape, uint64_t seed);
  void Sample(uint64_t seed, int batch, std::vector<float>* x,
              std::vector<int>* labels) const;

 private:
  MlpShape s_;
  int hidden_ = 64;
  std::vector<float> w1_, w2_;
};

}  // namespace sherd::example
