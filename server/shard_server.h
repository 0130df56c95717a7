// The shard server: the domain object behind the gRPC services. It owns the
// registered model's state, the collective backend and the optimizer, and
// serializes steps. The service classes in service/ only convert.
//
//   ShardServer server(options, CreateSingleRankCollective());
//   auto reg = server.Register(request);     // creates P, G in shared memory
//   server.InitParams({});                   // P -> fp32 master copy
//   auto result = server.Step(step_request); // one optimizer step
//
// Threads: every method is thread-safe. Steps, registration and
// initialization are serialized by one mutex; the inline data plane and the
// admin reads do not take it (they read and write buffers whose ordering is
// the trainer's protocol: push, then Step, then fetch).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "sherd/v1/admin.pb.h"
#include "sherd/v1/trainer.pb.h"
#include "server/checkpointer.h"
#include "server/collective/collective.h"
#include "server/state/model_state.h"
#include "server/step/agreement.h"
#include "server/step/step_pipeline.h"

namespace sherd {

struct ServerOptions {
  int rank = 0;
  int world_size = 1;
  int64_t memory_limit_bytes = 0; // 0: no limit
  int optimizer_threads = 1;
  std::string shm_prefix;         // default: /sherd.<pid>.<rank>
  int64_t fetch_chunk_elements = 1 << 18;
  CheckpointOptions checkpoint;  // root empty: checkpoints off
  // Multi-rank: how long a step waits for every rank to send it (the step
  // agreement, server/step/agreement.h) before all of them refuse it.
  absl::Duration agreement_timeout = absl::Seconds(60);
  // Called with false when the server goes out of service (the standard
  // gRPC health service follows it). May be empty.
  std::function<void(bool serving)> on_health_change;
  // GPU state (server/gpu/gpu_backend.h): where the buffers live and what
  // steps them. Both null: host state, stepped by the CPU pipeline.
  std::shared_ptr<StateMemory> state_memory;
  std::shared_ptr<StepRunner> step_runner;
};

class ShardServer {
 public:
  // `collective` may be null: a multi-rank server serves Register and the
  // admin calls while the cluster forms, and gets its collective later.
  ShardServer(ServerOptions options, std::unique_ptr<Collective> collective);
  ~ShardServer();

  // Hands over the collective once the cluster has formed.
  // `store` is rank 0's rendezvous store (null with one rank): the ranks
  // agree on every step through it, and report checkpoint shards to it.
  // `epoch` is the cluster's membership epoch (0 at first formation; +1
  // per replaced rank): the store keys of epoch n > 0 live under "e<n>/".
  void AttachCollective(std::unique_ptr<Collective> collective,
                        std::shared_ptr<KvStore> store = nullptr, int64_t epoch = 0);
  // A rank was replaced (server/cluster_formation.h): every rank installs
  // the collective rebuilt for membership epoch `epoch`, rewinds to the
  // newest complete checkpoint (chosen once for the epoch; without one,
  // training starts over: not initialized, next step 1) and serves again.
  // Trainers re-register to learn the step to continue from. An error
  // (the checkpoint cannot be loaded) leaves the server out of service.
  absl::Status Rejoin(std::unique_ptr<Collective> collective, std::shared_ptr<KvStore> store,
                      int64_t epoch);
  // Rank 0: creates the checkpoint root and removes leftovers. Call once
  // before serving.
  absl::Status PrepareCheckpoints();
  // Saves this rank's state after its last step (see Checkpointer).
  // `save_id` as in v1::CheckpointRequest (empty: derived).
  absl::StatusOr<v1::CheckpointResponse> Checkpoint(const std::string& save_id = "");
  v1::CheckpointStatusResponse CheckpointStatus() const;
  absl::StatusOr<v1::CheckpointRestoreResponse> RestoreCheckpoint(
      const v1::CheckpointRestoreRequest& req);
  // At shutdown, before the services stop: lets a save in flight finish
  // (its reports travel over the peer service). False on timeout.
  bool WaitForCheckpoint(absl::Duration timeout);
  // Marks this server unhealthy (e.g. the cluster could not form).
  void MarkUnhealthy(std::string reason);

  // Trainer service.
  absl::StatusOr<v1::RegisterResponse> Register(const v1::RegisterRequest& req);
  absl::StatusOr<v1::InitParamsResponse> InitParams(
      const v1::InitParamsRequest& req);
  absl::StatusOr<v1::StepResponse> Step(const v1::StepRequest& req);
  // Inline data plane: writes one chunk into P or G.
  absl::Status WriteChunk(const v1::DataChunk& chunk);
  // Whether WriteChunk would accept `chunk` (buffer, range, size).
  absl::Status CheckChunk(const v1::DataChunk& chunk) const;
  // A whole Push: every chunk is checked before any is written.
  absl::Status WriteChunks(const std::vector<v1::DataChunk>& chunks);
  // Reads [offset, offset+count) of P or G as chunks; `sink` returns false
  // to stop (client gone).
  absl::Status ReadRange(const v1::FetchRequest& req,
                         const std::function<bool(const v1::DataChunk&)>& sink);

  // Admin service.
  v1::StatusResponse Status() const;
  absl::StatusOr<v1::ListTensorsResponse> ListTensors() const;
  absl::StatusOr<v1::WhereResponse> Where(const v1::WhereRequest& req) const;
  absl::StatusOr<v1::InspectResponse> Inspect(
      const v1::InspectRequest& req) const;

  // The address clients dial, once the port is bound.
  void SetAddress(std::string address) {
    absl::MutexLock l(&stats_mu_);
    address_ = std::move(address);
  }

  // False once a collective failed (a peer is lost).
  bool healthy() const { return healthy_.load(); }

 private:
  std::shared_ptr<ModelState> model() const;
  absl::StatusOr<std::shared_ptr<ModelState>> RequireModel() const;
  void InstallLocked(std::unique_ptr<Collective> collective, std::shared_ptr<KvStore> store,
                     int64_t epoch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);
  // What save ids derived by the server end in: the agreement round, and
  // the epoch once a rank was replaced (equal on every rank).
  std::string SaveIdSuffix() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);
  absl::Status StartCheckpointLocked(const ModelState& m, int64_t step,
                                     const std::string& save_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);
  absl::StatusOr<float*> BufferFor(const ModelState& m, v1::BufferKind kind) const;
  // The flat-layout range a buffer kind covers: all of P and G, the owned
  // slice of the optimizer state.
  static Range ValidRange(const ModelState& m, v1::BufferKind kind);
  static absl::Status CheckRange(const ModelState& m, v1::BufferKind kind,
                                 int64_t offset, int64_t count);
  // The local checks of a step: the step's arguments, or why this rank
  // refuses it.
  absl::StatusOr<StepArgs> PrepareStep(const v1::StepRequest& req, const ModelState& m)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);
  // Takes over a restored checkpoint's step counters (its data is already
  // in the model).
  void AdoptCounters(const RestoredState& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);
  // A step goes ahead: a committed restore is finished, and after a rewind
  // rank 0 sets aside the checkpoints of the timeline left behind.
  void LeaveRestoreBehind(const ModelState& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);

  const ServerOptions options_;
  const absl::Time started_;
  std::atomic<bool> healthy_{true};
  std::atomic<int64_t> inline_bytes_received_{0};
  std::atomic<int64_t> inline_bytes_sent_{0};

  mutable absl::Mutex model_mu_;  // guards the pointer only
  std::shared_ptr<ModelState> model_ ABSL_GUARDED_BY(model_mu_);

  absl::Mutex step_mu_ ABSL_ACQUIRED_BEFORE(model_mu_);
  std::unique_ptr<Collective> collective_ ABSL_GUARDED_BY(step_mu_);
  std::unique_ptr<StepAgreement> agreement_ ABSL_GUARDED_BY(step_mu_);  // multi-rank
  // The agreement's round counter after the last step that went ahead: the
  // same on every rank, so saves derive shared ids from it.
  int64_t last_round_ ABSL_GUARDED_BY(step_mu_) = 0;
  int64_t epoch_ ABSL_GUARDED_BY(step_mu_) = 0;  // membership epoch
  std::atomic<int64_t> epoch_seen_{0};            // the same, for Status
  std::string model_description_ ABSL_GUARDED_BY(step_mu_);  // DescribeModel
  std::unique_ptr<Checkpointer> checkpointer_;  // null: checkpoints off
  // A live restore (v1::CheckpointRestoreRequest): before COMMIT, the
  // checkpoint PREPARE staged; after it, the data and step bookkeeping the
  // restore replaced, kept for an ABORT until FINISH or the next step.
  struct RestoreTxn {
    std::string id;
    RestoredState state;
    bool committed = false;
    bool initialized = false;
    int64_t next_step = 0, adam_step = 0, steps_applied = 0, steps_skipped = 0;
    std::string restored_from;
    std::deque<v1::StepResponse> recent;
    int64_t rewound_to = -1;
  };
  std::optional<RestoreTxn> restore_ ABSL_GUARDED_BY(step_mu_);
  // The step of the checkpoint last restored, until a step goes ahead from
  // it; -1: none.
  int64_t rewound_to_ ABSL_GUARDED_BY(step_mu_) = -1;
  std::string restored_from_ ABSL_GUARDED_BY(stats_mu_);
  std::string collectives_ ABSL_GUARDED_BY(stats_mu_);  // collective_->Describe()
  const std::shared_ptr<StepRunner> runner_ ABSL_PT_GUARDED_BY(step_mu_);

  // Step bookkeeping; written under step_mu_, read by Status under stats_mu_.
  mutable absl::Mutex stats_mu_;
  std::string address_ ABSL_GUARDED_BY(stats_mu_);
  std::string unhealthy_reason_ ABSL_GUARDED_BY(stats_mu_);
  bool initialized_ ABSL_GUARDED_BY(stats_mu_) = false;
  int64_t next_step_ ABSL_GUARDED_BY(stats_mu_) = 1;
  int64_t adam_step_ ABSL_GUARDED_BY(stats_mu_) = 0;
  int64_t steps_applied_ ABSL_GUARDED_BY(stats_mu_) = 0;
  int64_t steps_skipped_ ABSL_GUARDED_BY(stats_mu_) = 0;
  // Recent responses, newest last, for idempotent retries.
  std::deque<v1::StepResponse> recent_ ABSL_GUARDED_BY(stats_mu_);
};

}  // namespace sherd
