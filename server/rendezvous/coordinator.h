// Cluster formation and the rendezvous store, server side.
//
// PeerTable is the domain object every shard server holds. On rank 0 (the
// coordinator) it collects Joins until every rank of the world has one, and
// it hosts the rendezvous key-value store (it is a KvStore, so rank 0's own
// Gloo rendezvous uses it directly). On other ranks it holds the table they
// received from rank 0 (Adopt) so they can answer GetPeers too; their store
// methods refuse with FAILED_PRECONDITION ("ask rank 0").
//
// PeerService is the gRPC adapter for sherd.v1.Peer over a PeerTable.
//
//   PeerTable table(config.rank, config.world_size);
//   PeerService service(table, inflight);   // register with the server
//   ... serve ...
//   table.Close();                          // wakes blocked Join/KvGet
//   inflight.Drain(...); server->Shutdown(...);
//
// Once complete, membership changes only by replacement: a Join for a rank
// from another incarnation (a restarted server, at the same or a new
// address) takes the rank over, unless the old address still answers as
// that rank (the liveness probe). Each replacement raises the membership
// epoch and sets "cluster/epoch/<n>" in the store, which every rank watches
// to rebuild its collectives (server/cluster_formation.h). Before
// completion, a rank whose every Join call has given up (deadline) is
// forgotten, so a restarted pod may take its rank again from a new address.
//
// Threads: every method is thread-safe. Join, WaitComplete and Get block
// (absl::Mutex conditions, no polling) until their condition, their
// deadline, or Close(). The table outlives the service and the server.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/rendezvous/kv_store.h"
#include "server/rendezvous/peer_info.h"
#include "server/service/inflight.h"
#include "sherd/v1/peer.grpc.pb.h"

namespace sherd {

struct JoinArgs {
  int rank = 0;
  int world_size = 0;
  std::string address;
  std::string cluster_id;  // empty: any
  std::string incarnation;  // empty: unknown (no replacement at one address)
  bool rejoining = false;   // rank 0 was restarted; this rank was at `epoch`
  int64_t epoch = 0;
};

// The store key where rank 0 keeps its incarnation: a rank that finds
// another value (or none) there is talking to a restarted rank 0.
inline constexpr char kCoordinatorKey[] = "cluster/coordinator";

// The store key that announces membership epoch `epoch` (>= 1); its value
// is "<rank> <address>" of the replacement.
std::string EpochKey(int64_t epoch);

class PeerTable final : public KvStore {
 public:
  // `rank` is this server's own rank; rank 0 is the coordinator.
  // `cluster_id`, if not empty, is the only id the coordinator accepts;
  // if empty, the first joiner's non-empty id pins it.
  PeerTable(int rank, int world_size, std::string cluster_id = "");

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool is_coordinator() const { return rank_ == 0; }

  // Coordinator only. Registers the joiner and waits until all ranks have
  // joined (then returns the full table) or `deadline` (then
  // DEADLINE_EXCEEDED, naming the missing ranks; the join clients turn that
  // into UNAVAILABLE). Rank 0 joins itself through this too.
  absl::StatusOr<PeerList> Join(const JoinArgs& args, absl::Time deadline);

  // Non-coordinators: installs the complete table received from rank 0,
  // at membership epoch `epoch`.
  absl::Status Adopt(const PeerList& peers, int64_t epoch = 0);

  // Coordinator: how a replacement checks that the rank's old server is
  // gone (true: `address` still answers as `rank`). Unset: assumed gone.
  void SetLivenessProbe(std::function<bool(const std::string& address, int rank)> probe);

  struct Snapshot {
    PeerList peers;  // known ranks, sorted
    int world_size = 0;
    bool complete = false;
    std::string cluster_id;
    int64_t epoch = 0;
  };
  Snapshot GetSnapshot() const;

  // Waits until the table is complete; DEADLINE_EXCEEDED at `deadline`.
  absl::StatusOr<PeerList> WaitComplete(absl::Time deadline) const;

  // KvStore, coordinator only. Keys must be non-empty.
  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> SetIfAbsent(std::string_view key,
                                          std::string_view value) override;
  absl::Status Erase(std::string_view key) override;
  absl::StatusOr<std::string> Get(std::string_view key,
                                  absl::Duration timeout) override;

  // Wakes every blocked call with UNAVAILABLE and makes later Join/Get/
  // WaitComplete fail fast. Call before Inflight::Drain and the gRPC
  // server's Shutdown: both wait for handlers, and these may block for
  // minutes.
  void Close();

  // For tests and diagnostics: wait until at least `n` ranks have joined,
  // or `n` Get calls are blocked on a missing key. False on timeout.
  bool AwaitJoined(int n, absl::Duration timeout) const;
  bool AwaitBlockedGets(int n, absl::Duration timeout) const;

 private:
  struct Member {
    std::string address;
    std::string cluster_id;
    std::string incarnation;
    bool rejoining = false;  // JoinArgs
    int64_t epoch = 0;
    int waiting = 0;  // Join calls for this rank now blocked
  };

  // Join of a rank's new incarnation into the complete table.
  absl::StatusOr<PeerList> Replace(const JoinArgs& args, const std::string& old_address,
                                   const std::function<bool(const std::string&, int)>& alive);
  void StartPastRejoinersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckJoinLocked(const JoinArgs& args) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string EffectiveClusterIdLocked() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string MissingRanksLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  PeerList PeersLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CompleteLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(members_.size()) == world_size_;
  }
  absl::Status NotCoordinator(absl::string_view what) const;

  const int rank_;
  const int world_size_;
  const std::string configured_cluster_id_;

  mutable absl::Mutex mu_;
  std::map<int, Member> members_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> kv_ ABSL_GUARDED_BY(mu_);
  int blocked_gets_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<bool(const std::string&, int)> alive_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// gRPC adapter for sherd.v1.Peer: proto in, PeerTable call, proto out.
// Blocking calls wait until the call's deadline at most (a little less, so
// the informative answer reaches the caller before its own timer fires).
class PeerService final : public v1::Peer::Service {
 public:
  PeerService(PeerTable& table, Inflight& inflight)
      : table_(table), inflight_(inflight) {}

  grpc::Status Join(grpc::ServerContext* context, const v1::JoinRequest* req,
                    v1::JoinResponse* resp) override;
  grpc::Status GetPeers(grpc::ServerContext* context,
                        const v1::GetPeersRequest* req,
                        v1::GetPeersResponse* resp) override;
  grpc::Status KvSet(grpc::ServerContext* context, const v1::KvSetRequest* req,
                     v1::KvSetResponse* resp) override;
  grpc::Status KvGet(grpc::ServerContext* context, const v1::KvGetRequest* req,
                     v1::KvGetResponse* resp) override;

 private:
  PeerTable& table_;
  Inflight& inflight_;
};

}  // namespace sherd
