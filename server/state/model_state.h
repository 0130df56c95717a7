// The state of one registered model on one shard server.
//
// Owns: the trainer-visible buffers P (full params, fp32) and G (full grads,
// fp32) in POSIX shared memory, and the server-private state of the owned
// slice: the fp32 master params and the two Adam moments. The gradient of
// the owned slice lives in G itself (the reduce-scatter is in place), so the
// state per server is 12 B x slice + the shared buffers. With more than one
// rank the moments are double-buffered (+8 B x slice): a step writes the
// next moments beside the current ones and flips only once every collective
// has succeeded, so a lost peer never leaves a half-applied step.
//
// Threads: the layout, groups and buffer addresses are immutable after
// Create(); the values are written only by the step pipeline, under the
// server's step mutex. Readers (inspection) read live values.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/aligned_buffer.h"
#include "common/layout.h"
#include "common/shm_region.h"
#include "server/optimizer/adamw.h"

namespace sherd {

struct ParamGroupConfig {
  std::string name;
  float lr_scale = 1.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
  bool operator==(const ParamGroupConfig&) const = default;
};

struct ModelSpec {
  std::string name;
  std::vector<TensorDesc> tensors;
  std::vector<ParamGroupConfig> groups;  // tensors refer to these by index
};

class ModelState {
 public:
  // Bytes Create() would hold for this layout on one rank: shared buffers
  // plus private state.
  static int64_t SharedBytes(const Layout& layout);
  static int64_t PrivateBytes(const Layout& layout);  // for this world size

  // shm_prefix names the shared objects: <prefix>.params / <prefix>.grads.
  static absl::StatusOr<std::unique_ptr<ModelState>> Create(
      ModelSpec spec, Layout layout, int rank, const std::string& shm_prefix);

  const ModelSpec& spec() const { return spec_; }
  const Layout& layout() const { return layout_; }
  int rank() const { return rank_; }
  Range owned() const { return layout_.Slice(rank_); }

  float* params() const { return static_cast<float*>(params_.data()); }
  float* grads() const { return static_cast<float*>(grads_.data()); }
  const ShmRegion& params_region() const { return params_; }
  const ShmRegion& grads_region() const { return grads_; }

  // Owned slice, indexed from the slice start.
  float* master() const { return master_.data(); }
  float* exp_avg() const { return exp_avg_[current_].data(); }
  float* exp_avg_sq() const { return exp_avg_sq_[current_].data(); }
  // The staging moments of a multi-rank step (null with one rank), and the
  // commit that makes them current.
  float* next_exp_avg() const { return exp_avg_[1 - current_].data(); }
  float* next_exp_avg_sq() const { return exp_avg_sq_[1 - current_].data(); }
  void FlipMoments() { current_ = 1 - current_; }
  float* owned_grads() const { return grads() + owned().begin; }
  float* owned_params() const { return params() + owned().begin; }

  // The optimizer segments of the owned slice with hyperparameters for a
  // step at learning rate `lr`.
  std::vector<AdamWSegment> Segments(float lr) const;

 private:
  ModelState() = default;
  ModelSpec spec_;
  Layout layout_;
  int rank_ = 0;
  ShmRegion params_;
  ShmRegion grads_;
  AlignedFloats master_;
  AlignedFloats exp_avg_[2];
  AlignedFloats exp_avg_sq_[2];
  int current_ = 0;  // written by the step pipeline under the step mutex
  std::vector<GroupRun> runs_;
};

}  // namespace sherd
