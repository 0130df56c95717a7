#include "server/rendezvous/coordinator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/rendezvous/peer_proto.h"

namespace sherd {
namespace {

// Enough to act on; a 1000-rank cluster with most ranks missing should not
// produce a 5 KB status message.
constexpr int kMaxRanksNamed = 16;

absl::Status ShuttingDown() {
  return absl::UnavailableError("the coordinator (rank 0) is shutting down");
}

}  // namespace

PeerTable::PeerTable(int rank, int world_size, std::string cluster_id)
    : rank_(rank),
      world_size_(world_size),
      configured_cluster_id_(std::move(cluster_id)) {}

absl::Status PeerTable::NotCoordinator(absl::string_view what) const {
  return absl::FailedPreconditionError(absl::StrCat(
      "rank ", rank_, " is not the coordinator and cannot ", what,
      "; ask rank 0"));
}

std::string PeerTable::EffectiveClusterIdLocked() const {
  if (!configured_cluster_id_.empty()) return configured_cluster_id_;
  for (const auto& [rank, m] : members_) {
    if (!m.cluster_id.empty()) return m.cluster_id;
  }
  return "";
}

std::string PeerTable::MissingRanksLocked() const {
  std::vector<int> missing;
  for (int r = 0; r < world_size_; ++r) {
    if (members_.count(r) == 0) missing.push_back(r);
  }
  const int total = static_cast<int>(missing.size());
  if (total > kMaxRanksNamed) missing.resize(kMaxRanksNamed);
  std::string text = absl::StrJoin(missing, ", ");
  if (total > kMaxRanksNamed) {
    absl::StrAppend(&text, " and ", total - kMaxRanksNamed, " more");
  }
  return text;
}

PeerList PeerTable::PeersLocked() const {
  PeerList peers;
  peers.reserve(members_.size());
  for (const auto& [rank, m] : members_) peers.push_back({rank, m.address});
  return peers;
}

absl::Status PeerTable::CheckJoinLocked(const JoinArgs& a) const {
  if (a.world_size <= 0 || a.rank < 0 || a.rank >= a.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", a.rank, " is out of range for world size ", a.world_size));
  }
  if (a.world_size != world_size_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "world size mismatch: rank ", a.rank, " joined with world size ",
        a.world_size, " but the coordinator (rank 0) has world size ",
        world_size_));
  }
  if (a.address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", a.rank, " joined with an empty address"));
  }
  const std::string cluster = EffectiveClusterIdLocked();
  if (!a.cluster_id.empty() && !cluster.empty() && a.cluster_id != cluster) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cluster id mismatch: rank ", a.rank, " belongs to cluster '",
        a.cluster_id, "' but this coordinator serves cluster '", cluster,
        "'"));
  }
  auto it = members_.find(a.rank);
  if (it != members_.end() && it->second.address != a.address && !CompleteLocked()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "rank ", a.rank, " is already held by ", it->second.address,
        " (this join came from ", a.address, ")"));
  }
  return absl::OkStatus();
}

void PeerTable::StartPastRejoinersLocked() {
  // Ranks of a cluster whose rank 0 was restarted: the new table's epoch
  // goes past all of theirs, so that every rank, this one included, treats
  // the formation as a rebuild and rewinds to the newest checkpoint.
  bool rejoined = false;
  int64_t past = epoch_;
  for (const auto& [rank, m] : members_) {
    if (!m.rejoining) continue;
    rejoined = true;
    past = std::max(past, m.epoch);
  }
  if (!rejoined) return;
  epoch_ = past + 1;
  kv_[EpochKey(epoch_)] = absl::StrCat("0 ", members_.at(0).address);
  SHERD_LOG(Warning, "rank 0 was restarted: the cluster re-formed at membership epoch %d",
            epoch_);
}

std::string EpochKey(int64_t epoch) { return absl::StrCat("cluster/epoch/", epoch); }

void PeerTable::SetLivenessProbe(std::function<bool(const std::string&, int)> probe) {
  absl::MutexLock lock(&mu_);
  alive_ = std::move(probe);
}

absl::StatusOr<PeerList> PeerTable::Replace(
    const JoinArgs& args, const std::string& old_address,
    const std::function<bool(const std::string&, int)>& alive) {
  // The probe is a network call, made without the lock.
  if (old_address != args.address && alive && alive(old_address, args.rank)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "rank ", args.rank, " is held by a live server at ", old_address,
        " (this join came from ", args.address, "); stop that one first"));
  }
  absl::MutexLock lock(&mu_);
  if (closed_) return ShuttingDown();
  Member& m = members_[args.rank];
  m.address = args.address;
  m.incarnation = args.incarnation;
  // Past any epoch the ranks announced themselves (a rebuild that failed
  // moves every rank on to the next epoch: ClusterFormation).
  while (kv_.count(EpochKey(epoch_ + 1)) > 0) ++epoch_;
  ++epoch_;
  kv_[EpochKey(epoch_)] = absl::StrCat(args.rank, " ", args.address);
  SHERD_LOG(Warning, "rank %d replaced: now at %s (was %s); membership epoch %d",
            args.rank, args.address, old_address, epoch_);
  return PeersLocked();
}

absl::StatusOr<PeerList> PeerTable::Join(const JoinArgs& args,
                                         absl::Time deadline) {
  if (!is_coordinator()) return NotCoordinator("accept joins");
  // A complete table: the join of a rank's new incarnation replaces it.
  std::string old_address;
  std::function<bool(const std::string&, int)> alive;
  bool replacement = false;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return ShuttingDown();
    RETURN_IF_ERROR(CheckJoinLocked(args));
    auto it = members_.find(args.rank);
    replacement = CompleteLocked() && it != members_.end() &&
                  (it->second.address != args.address ||
                   (!args.incarnation.empty() && it->second.incarnation != args.incarnation));
    if (replacement) {
      old_address = it->second.address;
      alive = alive_;
    }
  }
  if (replacement) return Replace(args, old_address, alive);
  absl::MutexLock lock(&mu_);
  if (closed_) return ShuttingDown();
  RETURN_IF_ERROR(CheckJoinLocked(args));
  auto [it, inserted] = members_.try_emplace(args.rank);
  if (inserted) {
    it->second.address = args.address;
    it->second.cluster_id = args.cluster_id;
    it->second.incarnation = args.incarnation;
    it->second.rejoining = args.rejoining;
    it->second.epoch = args.epoch;
    SHERD_LOG(Info, "rank %d joined from %s (%d of %d)%s", args.rank,
              args.address, members_.size(), world_size_,
              args.rejoining ? absl::StrCat(", rejoining from membership epoch ", args.epoch)
                             : std::string());
    if (CompleteLocked()) {
      SHERD_LOG(Info, "cluster complete");
      StartPastRejoinersLocked();
    }
  }
  if (CompleteLocked()) return PeersLocked();

  ++it->second.waiting;
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return closed_ || CompleteLocked();
  };
  mu_.AwaitWithDeadline(absl::Condition(&done), deadline);
  // The entry still exists: it is only erased when its waiters reach zero.
  --it->second.waiting;
  if (CompleteLocked()) return PeersLocked();

  const absl::Status gave_up =
      closed_ ? ShuttingDown()
              : absl::DeadlineExceededError(absl::StrCat(
                    "cluster incomplete at the deadline: ", members_.size(),
                    " of ", world_size_, " ranks joined; missing ranks ",
                    MissingRanksLocked()));
  // Nobody waits for this rank any more: forget it, so that a restarted
  // process may take the rank again, from a new address if need be.
  if (it->second.waiting == 0) {
    SHERD_LOG(Info, "rank %d (%s) gave up before the cluster completed",
              args.rank, it->second.address);
    members_.erase(it);
  }
  return gave_up;
}

absl::Status PeerTable::Adopt(const PeerList& peers, int64_t epoch) {
  if (is_coordinator()) {
    return absl::FailedPreconditionError(
        "rank 0 builds its peer table from joins; it adopts none");
  }
  if (static_cast<int>(peers.size()) != world_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer table has ", peers.size(), " entries, world size is ",
                     world_size_));
  }
  std::map<int, Member> members;
  for (int r = 0; r < world_size_; ++r) {
    if (peers[r].rank != r || peers[r].address.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "peer table entry ", r, " is rank ", peers[r].rank, " at '",
          peers[r].address, "'; want one entry per rank, sorted"));
    }
    members[r].address = peers[r].address;
  }
  absl::MutexLock lock(&mu_);
  members_ = std::move(members);
  epoch_ = epoch;
  return absl::OkStatus();
}

PeerTable::Snapshot PeerTable::GetSnapshot() const {
  absl::MutexLock lock(&mu_);
  return Snapshot{PeersLocked(), world_size_, CompleteLocked(),
                  EffectiveClusterIdLocked(), epoch_};
}

absl::StatusOr<PeerList> PeerTable::WaitComplete(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return closed_ || CompleteLocked();
  };
  mu_.AwaitWithDeadline(absl::Condition(&done), deadline);
  if (CompleteLocked()) return PeersLocked();
  if (closed_) return absl::UnavailableError("the peer table is closed");
  return absl::DeadlineExceededError(absl::StrCat(
      "cluster incomplete at the deadline: missing ranks ",
      MissingRanksLocked()));
}

absl::Status PeerTable::Set(std::string_view key, std::string_view value) {
  if (!is_coordinator()) return NotCoordinator("serve the rendezvous store");
  if (key.empty()) return absl::InvalidArgumentError("empty rendezvous key");
  absl::MutexLock lock(&mu_);
  if (closed_) return ShuttingDown();
  kv_[std::string(key)] = std::string(value);
  return absl::OkStatus();
}

absl::StatusOr<std::string> PeerTable::SetIfAbsent(std::string_view key,
                                                   std::string_view value) {
  if (!is_coordinator()) return NotCoordinator("serve the rendezvous store");
  if (key.empty()) return absl::InvalidArgumentError("empty rendezvous key");
  absl::MutexLock lock(&mu_);
  if (closed_) return ShuttingDown();
  return kv_.try_emplace(std::string(key), value).first->second;
}

absl::Status PeerTable::Erase(std::string_view key) {
  if (!is_coordinator()) return NotCoordinator("serve the rendezvous store");
  absl::MutexLock lock(&mu_);
  kv_.erase(std::string(key));
  return absl::OkStatus();
}

absl::StatusOr<std::string> PeerTable::Get(std::string_view key,
                                           absl::Duration timeout) {
  if (!is_coordinator()) return NotCoordinator("serve the rendezvous store");
  if (key.empty()) return absl::InvalidArgumentError("empty rendezvous key");
  const std::string k(key);
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return closed_ || kv_.count(k) > 0;
  };
  if (!ready()) {
    ++blocked_gets_;
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    --blocked_gets_;
  }
  auto it = kv_.find(k);
  if (it != kv_.end()) return it->second;
  if (closed_) return ShuttingDown();
  return absl::DeadlineExceededError(absl::StrCat(
      "rendezvous key '", k, "' not set within ",
      absl::FormatDuration(timeout)));
}

void PeerTable::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

bool PeerTable::AwaitJoined(int n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(members_.size()) >= n;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

bool PeerTable::AwaitBlockedGets(int n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return blocked_gets_ >= n;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

// ---- PeerService -----------------------------------------------------------

namespace {

// A blocked call answers a little before the caller's deadline, so the
// caller receives the reason (e.g. which ranks are missing) rather than a
// bare DEADLINE_EXCEEDED from its own timer.
absl::Time WaitDeadline(const grpc::ServerContext& context) {
  const absl::Time deadline = absl::FromChrono(context.deadline());
  const absl::Duration margin =
      std::min(absl::Milliseconds(250), (deadline - absl::Now()) / 10);
  return deadline - std::max(margin, absl::ZeroDuration());
}

}  // namespace

grpc::Status PeerService::Join(grpc::ServerContext* context,
                               const v1::JoinRequest* req,
                               v1::JoinResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  JoinArgs args{req->rank(), req->world_size(), req->address(),
                req->cluster_id(), req->incarnation(), req->rejoining(), req->epoch()};
  absl::StatusOr<PeerList> peers = table_.Join(args, WaitDeadline(*context));
  if (!peers.ok()) return ToGrpcStatus(peers.status());
  internal::PeersToProto(*peers, resp->mutable_peers());
  resp->set_world_size(table_.world_size());
  PeerTable::Snapshot snap = table_.GetSnapshot();
  resp->set_cluster_id(snap.cluster_id);
  resp->set_epoch(snap.epoch);
  return grpc::Status::OK;
}

grpc::Status PeerService::GetPeers(grpc::ServerContext*,
                                   const v1::GetPeersRequest*,
                                   v1::GetPeersResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  PeerTable::Snapshot snap = table_.GetSnapshot();
  internal::PeersToProto(snap.peers, resp->mutable_peers());
  resp->set_world_size(snap.world_size);
  resp->set_complete(snap.complete);
  resp->set_rank(table_.rank());
  resp->set_epoch(snap.epoch);
  return grpc::Status::OK;
}

grpc::Status PeerService::KvSet(grpc::ServerContext*,
                                const v1::KvSetRequest* req,
                                v1::KvSetResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  if (!req->if_absent()) return ToGrpcStatus(table_.Set(req->key(), req->value()));
  absl::StatusOr<std::string> now = table_.SetIfAbsent(req->key(), req->value());
  if (!now.ok()) return ToGrpcStatus(now.status());
  resp->set_value(*std::move(now));
  return grpc::Status::OK;
}

grpc::Status PeerService::KvGet(grpc::ServerContext* context,
                                const v1::KvGetRequest* req,
                                v1::KvGetResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  if (req->timeout_ms() < 0) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("negative timeout_ms ", req->timeout_ms())));
  }
  const absl::Duration timeout =
      std::min(absl::Milliseconds(req->timeout_ms()),
               WaitDeadline(*context) - absl::Now());
  absl::StatusOr<std::string> value = table_.Get(req->key(), timeout);
  if (!value.ok()) return ToGrpcStatus(value.status());
  resp->set_value(*std::move(value));
  return grpc::Status::OK;
}

}  // namespace sherd
