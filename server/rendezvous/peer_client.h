// Client side of the peer service: joining the cluster, and the rendezvous
// store of rank 0 seen from any rank.
//
//   // every rank, once its own server is serving:
//   ASSIGN_OR_RETURN(PeerList peers,
//                    FormCluster(table, coordinator, my_address, timeout));
//   // then Gloo rendezvous through rank 0's store (rank 0 may use its
//   // table directly, or dial itself like everyone else):
//   RemoteKvStore remote(coordinator);
//   KvStore& store = table.is_coordinator() ? static_cast<KvStore&>(table)
//                                           : remote;
//   CreateGlooCollective(store, rank, world_size, gloo_options);
//
// Threads: the functions are blocking and thread-safe; RemoteKvStore is
// thread-safe (gRPC stubs are) and owns its channel.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/rendezvous/coordinator.h"
#include "server/rendezvous/kv_store.h"
#include "server/rendezvous/peer_info.h"
#include "sherd/v1/peer.grpc.pb.h"

namespace sherd {

struct JoinOptions {
  std::string cluster_id;  // empty: any
  std::string incarnation;  // this server process's (JoinRequest)
  bool rejoining = false;   // JoinRequest.rejoining / epoch
  int64_t epoch = 0;
  // Backoff between attempts while the coordinator is unreachable: doubles
  // from initial to max, each sleep drawn uniformly from [d/2, d] so that a
  // whole cluster starting at once does not retry in lock step.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  // Called after each failed attempt that will be retried (attempt counts
  // from 1). Tests use it to know that the joiner is waiting.
  std::function<void(int attempt, const absl::Status& error)> on_retry;
};

// Joins the cluster whose rank 0 serves the peer service at
// `coordinator_address`, and returns the full peer table, sorted by rank.
// Retries while the coordinator is unreachable (not started yet, DNS not
// ready) until `deadline` from now. Returns at once, with the coordinator's
// reason, on FAILED_PRECONDITION (world size or cluster id mismatch),
// ALREADY_EXISTS (rank held by another address) or INVALID_ARGUMENT.
// Returns UNAVAILABLE if the cluster does not complete in time, naming the
// missing ranks when the coordinator could say.
absl::StatusOr<PeerList> JoinCluster(const std::string& coordinator_address,
                                     int rank, int world_size,
                                     const std::string& my_address,
                                     absl::Duration deadline,
                                     const JoinOptions& options = {},
                                     int64_t* epoch = nullptr);

// The usual way to join: rank 0 joins its own `table` directly (it ignores
// `coordinator_address`); any other rank calls JoinCluster and installs the
// answer in `table` (Adopt), so that it can answer GetPeers too. Errors as
// JoinCluster's, for every rank.
absl::StatusOr<PeerList> FormCluster(PeerTable& table,
                                     const std::string& coordinator_address,
                                     const std::string& my_address,
                                     absl::Duration deadline,
                                     const JoinOptions& options = {});

// A stub for the peer service at `address`, with reconnect backoff tuned
// for cluster start-up (gRPC's default backs off to two minutes).
std::unique_ptr<v1::Peer::StubInterface> NewPeerStub(
    const std::string& address);

struct RemoteKvOptions {
  // Deadline of one KvSet call.
  absl::Duration set_timeout = absl::Seconds(30);
  // How long an unreachable coordinator is retried before UNAVAILABLE.
  absl::Duration unavailable_retry = absl::Seconds(5);
};

// The rendezvous store of rank 0, over gRPC.
class RemoteKvStore final : public KvStore {
 public:
  explicit RemoteKvStore(const std::string& coordinator_address,
                         RemoteKvOptions options = {});
  // `target` names the coordinator in error messages.
  RemoteKvStore(std::unique_ptr<v1::Peer::StubInterface> stub,
                std::string target, RemoteKvOptions options = {});

  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> SetIfAbsent(std::string_view key,
                                          std::string_view value) override;
  absl::StatusOr<std::string> Get(std::string_view key,
                                  absl::Duration timeout) override;

 private:
  absl::StatusOr<std::string> CallSet(v1::KvSetRequest req);

  const std::unique_ptr<v1::Peer::StubInterface> stub_;
  const std::string target_;
  const RemoteKvOptions options_;
};

}  // namespace sherd
