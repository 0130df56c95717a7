#include "examples/mlp.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace sherd::example {

std::vector<MlpTensor> MlpTensors(const MlpShape& s) {
  return {{"fc1.weight", {s.hidden, s.input}, false},
          {"fc1.bias", {s.hidden}, true},
          {"fc2.weight", {s.hidden, s.hidden}, false},
          {"fc2.bias", {s.hidden}, true},
          {"head.weight", {s.classes, s.hidden}, false},
          {"head.bias", {s.classes}, true}};
}

void Mlp::Init(const MlpViews& p, uint64_t seed) const {
  std::mt19937_64 rng(seed);
  auto tensors = MlpTensors(s_);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].is_bias) {
      std::fill(p.t[i].begin(), p.t[i].end(), 0.0f);
      continue;
    }
    float bound = std::sqrt(6.0f / static_cast<float>(tensors[i].shape[1]));
    std::uniform_real_distribution<float> u(-bound, bound);
    for (float& w : p.t[i]) w = u(rng);
  }
}

// y (batch x out) = x (batch x in) * W^T (W: out x in) + b
static void Linear(const float* x, const float* w, const float* b, float* y,
                   int batch, int in, int out) {
  for (int r = 0; r < batch; ++r) std::copy(b, b + out, y + static_cast<size_t>(r) * out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, out, in, 1.0f, x,
              in, w, in, 1.0f, y, out);
}

void Mlp::Forward(const MlpViews& p, const float* x, int batch) {
  const int H = s_.hidden, C = s_.classes, D = s_.input;
  h1_.resize(static_cast<size_t>(batch) * H);
  h2_.resize(static_cast<size_t>(batch) * H);
  logits_.resize(static_cast<size_t>(batch) * C);
  Linear(x, p.t[0].data(), p.t[1].data(), h1_.data(), batch, D, H);
  for (float& v : h1_) v = std::max(v, 0.0f);
  Linear(h1_.data(), p.t[2].data(), p.t[3].data(), h2_.data(), batch, H, H);
  for (float& v : h2_) v = std::max(v, 0.0f);
  Linear(h2_.data(), p.t[4].data(), p.t[5].data(), logits_.data(), batch, H, C);
}

static int Argmax(const float* v, int n) {
  return static_cast<int>(std::max_element(v, v + n) - v);
}

double Mlp::TrainStep(const MlpViews& p, const MlpViews& g,
                      const std::vector<float>& x, const std::vector<int>& labels,
                      int* correct) {
  const int B = static_cast<int>(labels.size());
  const int H = s_.hidden, C = s_.classes, D = s_.input;
  Forward(p, x.data(), B);
  double loss = 0;
  *correct = 0;
  // logits_ becomes dlogits = (softmax - onehot) / B.
  for (int r = 0; r < B; ++r) {
    float* z = logits_.data() + static_cast<size_t>(r) * C;
    if (Argmax(z, C) == labels[r]) ++*correct;
    float m = *std::max_element(z, z + C);
    double sum = 0;
    for (int c = 0; c < C; ++c) sum += std::exp(static_cast<double>(z[c] - m));
    loss += std::log(sum) - (z[labels[r]] - m);
    for (int c = 0; c < C; ++c) {
      double prob = std::exp(static_cast<double>(z[c] - m)) / sum;
      z[c] = static_cast<float>((prob - (c == labels[r] ? 1.0 : 0.0)) / B);
    }
  }
  auto bias_grad = [&](const float* d, int out, std::span<float> gb) {
    std::fill(gb.begin(), gb.end(), 0.0f);
    for (int r = 0; r < B; ++r)
      for (int o = 0; o < out; ++o) gb[o] += d[static_cast<size_t>(r) * out + o];
  };
  // head: dW3 = dlogits^T h2, db3, dh2 = dlogits W3
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, H, B, 1.0f,
              logits_.data(), C, h2_.data(), H, 0.0f, g.t[4].data(), H);
  bias_grad(logits_.data(), C, g.t[5]);
  d2_.resize(static_cast<size_t>(B) * H);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, H, C, 1.0f,
              logits_.data(), C, p.t[4].data(), H, 0.0f, d2_.data(), H);
  for (size_t i = 0; i < d2_.size(); ++i) if (h2_[i] <= 0) d2_[i] = 0;
  // fc2
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, H, B, 1.0f,
              d2_.data(), H, h1_.data(), H, 0.0f, g.t[2].data(), H);
  bias_grad(d2_.data(), H, g.t[3]);
  d1_.resize(static_cast<size_t>(B) * H);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, H, H, 1.0f,
              d2_.data(), H, p.t[2].data(), H, 0.0f, d1_.data(), H);
  for (size_t i = 0; i < d1_.size(); ++i) if (h1_[i] <= 0) d1_[i] = 0;
  // fc1
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, D, B, 1.0f,
              d1_.data(), H, x.data(), D, 0.0f, g.t[0].data(), D);
  bias_grad(d1_.data(), H, g.t[1]);
  return loss / B;
}

int Mlp::Evaluate(const MlpViews& p, const std::vector<float>& x,
                  const std::vector<int>& labels) {
  const int B = static_cast<int>(labels.size());
  Forward(p, x.data(), B);
  int correct = 0;
  for (int r = 0; r < B; ++r) {
    if (Argmax(logits_.data() + static_cast<size_t>(r) * s_.classes, s_.classes) ==
        labels[r]) {
      ++correct;
    }
  }
  return correct;
}

TeacherTask::TeacherTask(const MlpShape& shape, uint64_t seed) : s_(shape) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  w1_.resize(static_cast<size_t>(hidden_) * s_.input);
  w2_.resize(static_cast<size_t>(s_.classes) * hidden_);
  for (float& w : w1_) w = n(rng) / std::sqrt(static_cast<float>(s_.input));
  for (float& w : w2_) w = n(rng) / std::sqrt(static_cast<float>(hidden_));
}

void TeacherTask::Sample(uint64_t seed, int batch, std::vector<float>* x,
                         std::vector<int>* labels) const {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  x->resize(static_cast<size_t>(batch) * s_.input);
  labels->resize(batch);
  std::vector<float> h(hidden_), z(s_.classes);
  for (int r = 0; r < batch; ++r) {
    float* xr = x->data() + static_cast<size_t>(r) * s_.input;
    for (int i = 0; i < s_.input; ++i) xr[i] = n(rng);
    for (int j = 0; j < hidden_; ++j) {
      float a = 0;
      for (int i = 0; i < s_.input; ++i) a += w1_[static_cast<size_t>(j) * s_.input + i] * xr[i];
      h[j] = std::tanh(a);
    }
    for (int c = 0; c < s_.classes; ++c) {
      float a = 0;
      for (int j = 0; j < hidden_; ++j) a += w2_[static_cast<size_t>(c) * hidden_ + j] * h[j];
      z[c] = a;
    }
    (*labels)[r] = Argmax(z.data(), s_.classes);
  }
}

}  // namespace sherd::example
