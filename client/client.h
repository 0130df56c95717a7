// sherd::Client — the library a training process links to hand its
// gradients to its shard server and get updated parameters back.
//
//   auto client = sherd::Client::Connect("127.0.0.1:7070").value();
//   sherd::ModelDef model{.name = "mlp",
//                         .tensors = {{"fc1.weight", {512, 256}},
//                                     {"fc1.bias", {512}, "no_decay"}},
//                         .groups = {{.name = "no_decay", .weight_decay = 0}}};
//   client->Register(model).IgnoreError();      // maps P and G
//   InitWeights(client->Param("fc1.weight"));   // write initial values
//   client->InitParams();                       // they become the fp32 master
//   for (...) {
//     Backward(client->Param(...), client->Grad(...));  // write grads into G
//     auto r = client->Step({.lr = 1e-3f});     // params in P are updated
//   }
//
// A GPU trainer (server started with --device cuda, same host and GPU):
//   auto info = client->Register(model).value();  // info.device_buffers
//   float* p = client->params().data();           // DEVICE pointers
//   float* g = client->grads().data();
//   cudaMemcpy(p, init, bytes, cudaMemcpyHostToDevice);  // initial values
//   client->InitParams();
//   for (...) {
//     Forward(p, stream); Backward(g, stream);    // kernels read P, write G
//     client->Step({.lr = 1e-3f, .cuda_stream = stream});  // waits for stream
//   }
//
// Data plane: by default the server's param buffer P and grad buffer G are
// mapped from shared memory (same host), so Step copies nothing; when the
// server keeps its state on a GPU (--device cuda) they are that GPU's
// memory, mapped through CUDA IPC (RegisterInfo::device_buffers). With
// use_shared_memory = false (remote server) the views are local memory and
// Step() pushes G before and fetches P after, over gRPC streams.
//
// Every call has a deadline; Step retries on UNAVAILABLE with the same step
// id (the server applies a step at most once and replays its response).
// Threads: a Client is not thread-safe, except that a StepAsync future may be
// waited on from another thread (do not touch the buffers until it is ready).
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/layout.h"

namespace sherd {

struct ClientOptions {
  // Per call. Longer than a step may wait on the servers (their default
  // collective timeout, 60 s, plus the step agreement's grace), so that a
  // step the servers refuse reports their reason, not this deadline.
  absl::Duration deadline = absl::Seconds(90);
  int max_retries = 5;                          // for UNAVAILABLE on Step
  absl::Duration retry_backoff = absl::Milliseconds(100);  // doubles per try
  absl::Duration max_retry_backoff = absl::Seconds(2);
  bool use_shared_memory = true;
  // With use_shared_memory and a server that keeps its state on a GPU:
  // true maps P and G through CUDA IPC (a GPU trainer); false uses the
  // inline data plane with host views instead (a CPU trainer).
  bool map_device_buffers = true;
  int64_t chunk_elements = 1 << 18;  // inline transfers: 1 MiB per message
  int64_t max_message_bytes = 64 << 20;
};

struct TensorDef {
  std::string name;
  std::vector<int64_t> shape;
  std::string group;  // "" = default group
};

struct GroupDef {
  std::string name;
  float lr_scale = 1.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
};

struct ModelDef {
  std::string name;
  std::vector<TensorDef> tensors;
  std::vector<GroupDef> groups;  // "default" may be overridden here
};

struct RegisterInfo {
  bool reattached = false;
  bool initialized = false;
  int64_t next_step = 1;
  int64_t adam_step = 0;  // applied steps so far
  int rank = 0;
  int world_size = 1;
  bool shared_memory = false;
  // Where the server keeps the state: "cpu" or "cuda:N". With GPU state and
  // shared_memory, params() and grads() are DEVICE pointers (mapped through
  // CUDA IPC): write them from kernels or cudaMemcpy, never dereference
  // them on the host. With use_shared_memory = false they are host memory
  // whatever the server's device.
  std::string device = "cpu";
  bool device_buffers = false;
};

// One param group's hyperparameters for one step (what a torch optimizer's
// param_groups hold); replaces the group's registered values, lr_scale
// included, for that step.
struct GroupStepOptions {
  std::string name;  // "default" or a registered group
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
};

struct StepOptions {
  float lr = 1e-3f;
  std::vector<GroupStepOptions> groups = {};  // per-group overrides (may be empty)
  float grad_scale = 1.0f;
  float max_grad_norm = 0.0f;  // 0: no clipping
  // GPU state mapped through CUDA IPC: the stream the trainer's backward
  // ran on (an opaque cudaStream_t). Step synchronizes it before asking the
  // server to read G (null: synchronizes the whole device). The server
  // synchronizes its own work before Step returns, so P is ready for the
  // next forward on any stream.
  void* cuda_stream = nullptr;
};

struct StepResult {
  int64_t step = 0;
  bool applied = false;
  std::string skip_reason;
  double grad_norm = 0;
  double clip_coef = 1;
  bool replayed = false;
  int retries = 0;
  double server_ms = 0;  // the server's total for the step
  double reduce_scatter_ms = 0, norm_ms = 0, optimizer_ms = 0, all_gather_ms = 0;
  double agreement_ms = 0;  // multi-rank: the step agreement before the collectives
};

// This server's checkpoint progress (the admin service's CheckpointStatus).
struct CheckpointProgress {
  bool enabled = false;           // the server has a checkpoint directory
  bool in_flight = false;         // a save is being written or committed
  int64_t step = 0;               // of the latest save started
  int64_t last_committed_step = 0;  // rank 0 only
  std::string last_committed;       // rank 0 only
  std::string last_error;
  std::string restored_from;      // checkpoint loaded at Register, if any
};

// This server's health (the admin service's Status, in brief).
struct ServerHealth {
  std::string health;            // SERVING, NOT_SERVING or NO_MODEL
  std::string reason;            // why NOT_SERVING
  int64_t epoch = 0;             // membership epoch: +1 per replaced rank
  int64_t last_step = 0;         // last step applied or skipped
  std::string restored_from;     // checkpoint this rank last rewound to
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const std::string& address, ClientOptions options = {});
  ~Client();

  absl::StatusOr<RegisterInfo> Register(const ModelDef& model);
  // Copies P into the fp32 master copy and zeroes the moments; the optimizer
  // continues from `adam_step` applied steps (0: fresh; a loaded state
  // passes its count, then pushes its moments with PushState).
  absl::Status InitParams(bool force = false, int64_t adam_step = 0);

  // One optimizer step with the next step id.
  absl::StatusOr<StepResult> Step(const StepOptions& options);
  std::future<absl::StatusOr<StepResult>> StepAsync(const StepOptions& options);

  // Asks this rank's server to checkpoint its state after the last step
  // (every trainer of a cluster calls it after the same step; rank 0
  // commits once all ranks have written). Returns the step being saved.
  absl::StatusOr<int64_t> Checkpoint();
  absl::StatusOr<CheckpointProgress> CheckpointStatus();
  // Whether the server serves, and its membership epoch: a trainer whose
  // step failed learns from it whether the cluster was rebuilt and rewound.
  absl::StatusOr<ServerHealth> Health();

  // Inline data plane (works with or without shared memory). Offsets are in
  // elements of the flat layout.
  absl::Status PushGrads(std::span<const float> grads, int64_t offset = 0);
  absl::Status PushParams(std::span<const float> params, int64_t offset = 0);
  absl::Status FetchParams(std::span<float> out, int64_t offset = 0);
  absl::Status FetchGrads(std::span<float> out, int64_t offset = 0);
  // The optimizer state of the server's owned slice (layout().Slice(rank));
  // offsets are flat-layout offsets inside it.
  enum class State { kMaster, kExpAvg, kExpAvgSq };
  absl::Status FetchState(State which, std::span<float> out, int64_t offset);
  absl::Status PushState(State which, std::span<const float> data, int64_t offset);

  // Views, valid after Register.
  const Layout& layout() const;
  std::span<float> params();  // the whole padded flat buffer
  std::span<float> grads();
  std::span<float> Param(const std::string& name);  // empty if unknown
  std::span<float> Grad(const std::string& name);
  int64_t next_step() const;
  bool shared_memory() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sherd
