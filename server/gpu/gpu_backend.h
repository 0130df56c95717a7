// The shard server's GPU path: model state in device memory, shared with
// the trainer through CUDA IPC, stepped by the fused CUDA optimizer step
// with NCCL collectives (server/collective/nccl/).
//
//   trainer (process A, GPU d)         shard server (process B, GPU d)
//   Register  <-- IPC handles of P, G  ModelState on CudaStateMemory
//   backward writes G (device)
//   synchronize its stream, Step  -->  1 NCCL reduce-scatter G (W > 1)
//                                      2 sum of squares + non-finite count
//                                        -> NCCL all-reduce of 2 device doubles
//                                      3 on the device: norm, skip, clip;
//                                        unscale+clip+AdamW in one pass; new
//                                        p into P's slice (staged for W > 1)
//                                      4 NCCL all-gather P; commit (W > 1)
//                                      5 synchronize, reply
//   forward reads P (device)  <------
//
// Ordering across the two processes: the client synchronizes the trainer's
// stream before it sends Step (client.h, StepOptions::cuda_stream), and the
// server synchronizes its own stream before it replies, so each side sees
// the other's writes without IPC events.
//
// Without CUDA at build time every factory here returns UNIMPLEMENTED and
// GpuUnavailableReason says so; nothing else in the server changes.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/state/state_memory.h"
#include "server/step/step_pipeline.h"

namespace sherd {

// Empty when this build can put state on a GPU and one is visible;
// otherwise why not ("built without CUDA", "no CUDA device: ...").
std::string GpuUnavailableReason();
// GPUs this process sees (0 when none or without CUDA).
int VisibleGpuCount();

struct GpuBackend {
  std::shared_ptr<StateMemory> memory;  // device memory on `device`
  std::shared_ptr<StepRunner> runner;   // steps state in `memory`
};

// FAILED_PRECONDITION without a usable GPU, INVALID_ARGUMENT for a device
// ordinal that is not visible, UNIMPLEMENTED in a build without CUDA.
absl::StatusOr<GpuBackend> CreateGpuBackend(int device);

}  // namespace sherd
