// The state of one registered model on one shard server.
//
// Owns: the trainer-visible buffers P (full params, fp32) and G (full grads,
// fp32) in POSIX shared memory (or, with a StateMemory, in GPU memory
// exported through CUDA IPC), and the server-private state of the owned
// slice: the fp32 master params and the two Adam moments. The gradient of
// the owned slice lives in G itself (the reduce-scatter is in place), so the
// state per server is 12 B x slice + the shared buffers. With more than one
// rank the moments are double-buffered (+8 B x slice): a step writes the
// next moments beside the current ones and flips only once every collective
// has succeeded, so a lost peer never leaves a half-applied step.
//
// Device state: with a StateMemory every buffer below is device memory.
// The accessors then return device pointers that only the step runner for
// that memory dereferences; everything else goes through Copy and Zero,
// which are plain memcpy / memset for host state.
//
// Threads: the layout, groups and buffer addresses are immutable after
// Create(); the values are written only by the step pipeline, under the
// server's step mutex. Readers (inspection) read live values.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/aligned_buffer.h"
#include "common/layout.h"
#include "common/shm_region.h"
#include "server/optimizer/adamw.h"
#include "server/state/state_memory.h"

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
  // With `memory`, everything is allocated there instead (shm_prefix unused).
  static absl::StatusOr<std::unique_ptr<ModelState>> Create(
      ModelSpec spec, Layout layout, int rank, const std::string& shm_prefix,
      std::shared_ptr<StateMemory> memory = nullptr);
  ~ModelState();

  const ModelSpec& spec() const { return spec_; }
  const Layout& layout() const { return layout_; }
  int rank() const { return rank_; }
  Range owned() const { return layout_.Slice(rank_); }

  // True when the buffers are device memory (see above).
  bool on_device() const { return memory_ != nullptr; }
  StateMemory* memory() const { return memory_.get(); }
  // "cpu" or the memory's name ("cuda:0").
  std::string device_name() const;

  float* params() const { return params_ptr_; }
  float* grads() const { return grads_ptr_; }
  // Host state only (empty regions on a device).
  const ShmRegion& params_region() const { return params_; }
  const ShmRegion& grads_region() const { return grads_; }
  // Device state only: the IPC handles of P and G (empty on the host).
  const std::string& params_handle() const { return params_handle_; }
  const std::string& grads_handle() const { return grads_handle_; }

  // Owned slice, indexed from the slice start.
  float* master() const { return master_ptr_; }
  float* exp_avg() const { return exp_avg_ptr_[current_]; }
  float* exp_avg_sq() const { return exp_avg_sq_ptr_[current_]; }
  // The staging moments of a multi-rank step (null with one rank), and the
  // commit that makes them current.
  float* next_exp_avg() const { return exp_avg_ptr_[1 - current_]; }
  float* next_exp_avg_sq() const { return exp_avg_sq_ptr_[1 - current_]; }
  void FlipMoments() { current_ = 1 - current_; }
  float* owned_grads() const { return grads() + owned().begin; }
  float* owned_params() const { return params() + owned().begin; }

  // Copies n floats between one of the buffers above and host memory, or
  // between two of the buffers: memcpy for host state, device copies
  // otherwise. Synchronous.
  absl::Status Copy(float* dst, const float* src, int64_t n) const;
  absl::Status Zero(float* dst, int64_t n) const;
  // InitParams: master <- P's owned slice, moments <- 0.
  absl::Status ResetOptimizerState() const;

  // The optimizer segments of the owned slice with hyperparameters for a
  // step at learning rate `lr` (times each group's lr_scale); a group with
  // an entry in `overrides` (by group index) takes that entry instead.
  std::vector<AdamWSegment> Segments(
      float lr, const std::vector<std::optional<AdamWHyper>>& overrides = {}) const;

 private:
  ModelState() = default;
  ModelSpec spec_;
  Layout layout_;
  int rank_ = 0;
  // Host state.
  ShmRegion params_;
  ShmRegion grads_;
  AlignedFloats master_;
  AlignedFloats exp_avg_[2];
  AlignedFloats exp_avg_sq_[2];
  // Device state: every allocation, released before memory_ goes.
  std::shared_ptr<StateMemory> memory_;
  std::vector<void*> allocations_;
  std::string params_handle_, grads_handle_;
  // Where the accessors point, for either kind.
  float* params_ptr_ = nullptr;
  float* grads_ptr_ = nullptr;
  float* master_ptr_ = nullptr;
  float* exp_avg_ptr_[2] = {nullptr, nullptr};
  float* exp_avg_sq_ptr_[2] = {nullptr, nullptr};
  int current_ = 0;  // written by the step pipeline under the step mutex
  std::vector<GroupRun> runs_;
};

}  // namespace sherd
