// The server side of checkpoints: when and where a rank saves, how rank 0
// commits, and restoring at registration. The format and its guarantees live
// in server/checkpoint/ (docs/checkpoint_format.md).
//
// Save: every save has an id that all ranks share (the server derives it
// from the step and its agreement round, or sherdctl sends one). Every rank
// snapshots its slice under the step mutex (Start) and writes it in the
// background into <root>/.tmp-ckpt-<step>-<id>/. A rank other than 0
// reports its shard, or its error (also a failure to start), to rank 0
// through the rendezvous store under "ckpt/<id>/shard/<rank>"; rank 0 writes
// the manifest and commits only when every rank has reported success, then
// applies retention, and erases the save's reports on commit or abort. Two
// saves of one step (an every-K save, then one asked for; or a step replayed
// after a restore) therefore never share a directory or read each other's
// reports. At most one save is in
// flight per rank (Start is FAILED_PRECONDITION otherwise; the server waits
// with WaitIdle before an every-K save); the destructor waits for it.
//
// Restore: at Register, the newest checkpoint that verifies and matches the
// model (or the one named) is loaded: the rank's slice of master and moments
// from whichever shard files hold it (any old world size), and the full
// params into P. With more than one rank the choice is the cluster's, made
// once (LoadAtRegister): the first rank to register resolves --restore,
// verifying every checksum, and records its choice in rank 0's store under
// "restore/choice"; every other rank loads exactly that checkpoint or fails
// its Register. It never falls back to another one, so the ranks never
// restore a mix of two checkpoints.
//
// Threads: Start and Restore are called under the server's step mutex;
// status() from anywhere.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/checkpoint/snapshot_saver.h"
#include "server/rendezvous/kv_store.h"
#include "server/state/model_state.h"

namespace sherd {

struct CheckpointOptions {
  std::string root;       // empty: checkpoints off
  int every = 0;          // save after every K-th step (0: only on request)
  int keep = 3;           // committed checkpoints kept
  std::string restore = "newest";  // "newest", "none" or a checkpoint name
  absl::Duration report_timeout = absl::Minutes(10);
};

// Save ids and restore transaction ids: at most 64 characters of letters,
// digits, '_' and '-' (they become parts of directory names and store keys).
bool IsIdToken(absl::string_view id);

// A checkpoint read and verified into memory, not yet applied: loading
// stages everything first so that applying cannot fail half-way.
struct RestoredState {
  std::string name;
  int64_t step = 0;
  std::map<std::string, int64_t> counters;
  std::vector<float> master, exp_avg, exp_avg_sq;  // this rank's slice
  std::vector<float> params;                       // the full P
};

class Checkpointer {
 public:
  Checkpointer(CheckpointOptions options, int rank, int world_size);
  ~Checkpointer();

  const CheckpointOptions& options() const { return options_; }
  // Rank 0 at start: creates the root and removes leftovers of saves that
  // never committed.
  absl::Status Prepare();
  // Where ranks other than 0 report (rank 0's store); unset with one rank.
  void SetReportStore(std::shared_ptr<KvStore> store);

  // Snapshots the slice of `model` at `step` and saves it in the background
  // as save `save_id` (the same on every rank; [A-Za-z0-9_-], 1 to 64
  // characters, else INVALID_ARGUMENT). FAILED_PRECONDITION while a save is
  // in flight.
  absl::Status Start(const ModelState& model, int64_t step,
                     std::map<std::string, int64_t> counters, const std::string& save_id);

  struct Status {
    bool in_flight = false;
    int64_t step = 0;
    int64_t bytes_written = 0;
    int64_t bytes_total = 0;
    int64_t last_committed_step = 0;
    std::string last_committed;  // name
    std::string last_error;
  };
  Status status() const;
  // Waits until no save is in flight here (written, reported and, on rank
  // 0, committed or aborted) and Start would accept a new one; false if the
  // timeout passed first.
  bool WaitIdle(absl::Duration timeout);

  // Reads `which` ("newest", "none" or a checkpoint name) for `model`'s
  // layout into memory; nullopt when there is nothing to restore.
  absl::StatusOr<std::optional<RestoredState>> Load(const ModelState& model,
                                                    const std::string& which);
  // At registration: Load(which) with one rank; with more, the cluster's
  // choice (header comment; the store's keys are those of the membership
  // epoch, so a rebuilt cluster chooses again). `fingerprint` identifies the model
  // (step/agreement.h's Fingerprint of DescribeModel): a choice recorded
  // for another model is FAILED_PRECONDITION. Needs the store (WaitForStore).
  // `which` is what this rank would choose ("newest", "none" or a name).
  absl::StatusOr<std::optional<RestoredState>> LoadAtRegister(const ModelState& model,
                                                              uint64_t fingerprint,
                                                              const std::string& which);
  // Multi-rank: waits until SetReportStore ran (the cluster formed); false
  // on timeout.
  bool WaitForStore(absl::Duration timeout);
  // Copies a loaded state into the model (master, moments, P). Fails only
  // when a device copy fails (the GPU is broken; the server then refuses
  // to step).
  static absl::Status Apply(const RestoredState& state, ModelState& model);
  // Exchanges the loaded state with the model's (master, moments, P): after
  // it, `state` holds what the model held, so a second Exchange undoes the
  // first. No allocation beyond a 4 MiB staging buffer for device state.
  // Fails only when a device copy fails (the state is then a mix, and the
  // server refuses to step).
  static absl::Status Exchange(RestoredState& state, ModelState& model);

 private:
  void Finish(const ModelSpec& spec, int64_t step, const std::string& save_id,
              std::string dir, std::map<std::string, int64_t> counters,
              const absl::StatusOr<ShardInfo>& shard);
  absl::Status Commit(const ModelSpec& spec, int64_t step, const std::string& save_id,
                      const std::string& dir, std::map<std::string, int64_t> counters,
                      ShardInfo own);
  // Rank != 0: tells rank 0 that this rank's part of `save_id` failed.
  void ReportFailure(const std::string& save_id, const absl::Status& error);
  // Rank 0: erases the reports of `save_id`.
  void EraseReports(const std::string& save_id);

  const CheckpointOptions options_;
  const int rank_;
  const int world_size_;
  mutable absl::Mutex mu_;
  std::shared_ptr<KvStore> store_ ABSL_GUARDED_BY(mu_);
  int64_t step_ ABSL_GUARDED_BY(mu_) = 0;
  bool committing_ ABSL_GUARDED_BY(mu_) = false;
  int64_t last_committed_step_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_committed_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> abandoned_ ABSL_GUARDED_BY(mu_);  // rank 0: refused save ids
  SnapshotSaver saver_;  // last: destroyed (and waited for) first
};

}  // namespace sherd
