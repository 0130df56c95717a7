#include "server/rendezvous/peer_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/rendezvous/peer_proto.h"

namespace sherd {
namespace {

// Extra time a KvGet call is given beyond the wait it asks for, so the
// server's DEADLINE_EXCEEDED (which names the key) arrives before ours.
constexpr absl::Duration kGetGrace = absl::Seconds(2);

// Capped exponential backoff with jitter in [d/2, d].
class Backoff {
 public:
  Backoff(absl::Duration initial, absl::Duration max)
      : next_(std::max(initial, absl::Milliseconds(1))), max_(max) {}
  absl::Duration Next() {
    const absl::Duration d = next_;
    next_ = std::min(next_ * 2, max_);
    return d * absl::Uniform(gen_, 0.5, 1.0);
  }

 private:
  absl::Duration next_;
  const absl::Duration max_;
  absl::BitGen gen_;
};

void SleepUntilAtMost(absl::Duration d, absl::Time limit) {
  absl::SleepFor(std::min(d, limit - absl::Now()));
}

absl::Status CheckPeerTable(const v1::JoinResponse& resp, int world_size) {
  if (resp.world_size() != world_size || resp.peers_size() != world_size) {
    return absl::InternalError(absl::StrCat(
        "coordinator answered a table of ", resp.peers_size(),
        " peers for world size ", resp.world_size(), ", want ", world_size));
  }
  for (int r = 0; r < world_size; ++r) {
    if (resp.peers(r).rank() != r) {
      return absl::InternalError(absl::StrCat(
          "coordinator answered an unsorted peer table (entry ", r,
          " is rank ", resp.peers(r).rank(), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<v1::Peer::StubInterface> NewPeerStub(
    const std::string& address) {
  grpc::ChannelArguments args;
  // While the cluster starts, the coordinator may come up any moment; gRPC's
  // default reconnect backoff (1 s growing to 120 s) would leave a joiner
  // idle long after it is up.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return v1::Peer::NewStub(grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args));
}

absl::StatusOr<PeerList> JoinCluster(const std::string& coordinator_address,
                                     int rank, int world_size,
                                     const std::string& my_address,
                                     absl::Duration deadline,
                                     const JoinOptions& options, int64_t* epoch) {
  const std::string what =
      absl::StrCat("joining the cluster at ", coordinator_address, " as rank ",
                   rank, " of ", world_size);
  if (world_size <= 0 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": rank out of range"));
  }
  if (my_address.empty() || deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": needs an address and a positive deadline"));
  }
  const absl::Time deadline_at = absl::Now() + deadline;
  std::unique_ptr<v1::Peer::StubInterface> stub =
      NewPeerStub(coordinator_address);
  v1::JoinRequest req;
  req.set_rank(rank);
  req.set_world_size(world_size);
  req.set_address(my_address);
  req.set_cluster_id(options.cluster_id);
  req.set_incarnation(options.incarnation);
  req.set_rejoining(options.rejoining);
  req.set_epoch(options.epoch);
  Backoff backoff(options.initial_backoff, options.max_backoff);
  absl::Status last_unavailable;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline_at));
    v1::JoinResponse resp;
    absl::Status s = FromGrpcStatus(stub->Join(&context, req, &resp));
    if (s.ok()) {
      RETURN_IF_ERROR(CheckPeerTable(resp, world_size));
      if (epoch != nullptr) *epoch = resp.epoch();
      SHERD_LOG(Info, "joined the cluster at %s as rank %d of %d",
                coordinator_address, rank, world_size);
      return internal::PeersFromProto(resp.peers());
    }
    if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      // Usually the coordinator's answer, naming the missing ranks; if our
      // own timer fired first, the last transport error may say more.
      return absl::UnavailableError(absl::StrCat(
          what, ": ", s.message(), " (waited ",
          absl::FormatDuration(deadline), ")",
          last_unavailable.ok() ? "" : "; before that: ",
          last_unavailable.message()));
    }
    if (s.code() != absl::StatusCode::kUnavailable) {
      return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
    }
    last_unavailable = s;
    if (absl::Now() >= deadline_at) {
      return absl::UnavailableError(absl::StrCat(
          what, ": coordinator unavailable for ",
          absl::FormatDuration(deadline), " (", attempt,
          " attempts): ", s.message()));
    }
    SHERD_LOG(Debug, "%s: attempt %d: %s", what, attempt, s.ToString());
    if (options.on_retry) options.on_retry(attempt, s);
    SleepUntilAtMost(backoff.Next(), deadline_at);
  }
}

absl::StatusOr<PeerList> FormCluster(PeerTable& table,
                                     const std::string& coordinator_address,
                                     const std::string& my_address,
                                     absl::Duration deadline,
                                     const JoinOptions& options) {
  if (table.is_coordinator()) {
    JoinArgs args{0, table.world_size(), my_address, options.cluster_id, options.incarnation,
                  options.rejoining, options.epoch};
    absl::StatusOr<PeerList> peers = table.Join(args, absl::Now() + deadline);
    if (peers.status().code() == absl::StatusCode::kDeadlineExceeded) {
      // Same contract as JoinCluster: an incomplete cluster is UNAVAILABLE.
      return absl::UnavailableError(peers.status().message());
    }
    return peers;
  }
  int64_t epoch = 0;
  ASSIGN_OR_RETURN(PeerList peers,
                   JoinCluster(coordinator_address, table.rank(),
                               table.world_size(), my_address, deadline,
                               options, &epoch));
  RETURN_IF_ERROR(table.Adopt(peers, epoch));
  return peers;
}

RemoteKvStore::RemoteKvStore(const std::string& coordinator_address,
                             RemoteKvOptions options)
    : RemoteKvStore(NewPeerStub(coordinator_address), coordinator_address,
                    options) {}

RemoteKvStore::RemoteKvStore(std::unique_ptr<v1::Peer::StubInterface> stub,
                             std::string target, RemoteKvOptions options)
    : stub_(std::move(stub)), target_(std::move(target)), options_(options) {}

absl::Status RemoteKvStore::Set(std::string_view key, std::string_view value) {
  v1::KvSetRequest req;
  req.set_key(std::string(key));
  req.set_value(std::string(value));
  return CallSet(std::move(req)).status();
}

absl::StatusOr<std::string> RemoteKvStore::SetIfAbsent(std::string_view key,
                                                       std::string_view value) {
  v1::KvSetRequest req;
  req.set_key(std::string(key));
  req.set_value(std::string(value));
  req.set_if_absent(true);
  return CallSet(std::move(req));
}

// Retrying an if_absent set is safe: a second attempt after a first that
// landed answers the value the first one wrote.
absl::StatusOr<std::string> RemoteKvStore::CallSet(v1::KvSetRequest req) {
  const absl::Time retry_until = absl::Now() + options_.unavailable_retry;
  Backoff backoff(absl::Milliseconds(50), absl::Seconds(1));
  for (;;) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.set_timeout));
    v1::KvSetResponse resp;
    absl::Status s = FromGrpcStatus(stub_->KvSet(&context, req, &resp));
    if (s.ok()) return std::move(*resp.mutable_value());
    if (s.code() != absl::StatusCode::kUnavailable ||
        absl::Now() >= retry_until) {
      return absl::Status(s.code(),
                          absl::StrCat("rendezvous store at ", target_,
                                       ": set '", req.key(), "': ",
                                       s.message()));
    }
    SleepUntilAtMost(backoff.Next(), retry_until);
  }
}

absl::StatusOr<std::string> RemoteKvStore::Get(std::string_view key,
                                               absl::Duration timeout) {
  v1::KvGetRequest req;
  req.set_key(std::string(key));
  const absl::Time deadline = absl::Now() + timeout;
  absl::Time retry_until = absl::InfiniteFuture();  // set at first failure
  Backoff backoff(absl::Milliseconds(50), absl::Seconds(1));
  for (;;) {
    const absl::Duration left =
        std::max(deadline - absl::Now(), absl::ZeroDuration());
    req.set_timeout_ms(absl::ToInt64Milliseconds(left));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + left + kGetGrace));
    v1::KvGetResponse resp;
    absl::Status s = FromGrpcStatus(stub_->KvGet(&context, req, &resp));
    if (s.ok()) return std::move(*resp.mutable_value());
    if (s.code() == absl::StatusCode::kUnavailable &&
        retry_until == absl::InfiniteFuture()) {
      retry_until = absl::Now() + options_.unavailable_retry;
    }
    if (s.code() != absl::StatusCode::kUnavailable ||
        absl::Now() >= retry_until) {
      return absl::Status(s.code(),
                          absl::StrCat("rendezvous store at ", target_,
                                       ": get '", req.key(), "': ",
                                       s.message()));
    }
    SleepUntilAtMost(backoff.Next(), retry_until);
  }
}

}  // namespace sherd
