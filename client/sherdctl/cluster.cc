#include "client/sherdctl/cluster.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "sherd/v1/peer.grpc.pb.h"

namespace sherd::ctl {

absl::Status CallError(const grpc::Status& s, const std::string& address) {
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
      s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the shard server at ", address, ": ", s.error_message()));
  }
  return FromGrpcStatus(s);
}

absl::StatusOr<Cluster> Cluster::Discover(const GlobalOptions& g) {
  Cluster c;
  c.g_ = g;
  auto channel = grpc::CreateChannel(g.server, grpc::InsecureChannelCredentials());
  c.entry_ = v1::Admin::NewStub(channel);
  auto peer = v1::Peer::NewStub(channel);
  v1::GetPeersResponse peers;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(g.timeout_s * 1000)));
  grpc::Status s = peer->GetPeers(&ctx, v1::GetPeersRequest(), &peers);
  if (!s.ok() && s.error_code() != grpc::StatusCode::UNIMPLEMENTED) {
    absl::Status e = CallError(s, g.server);
    return absl::Status(e.code(), absl::StrCat(e.message(), " (set --server or SHERD_SERVER)"));
  }
  const int world = s.ok() && peers.world_size() > 0 ? peers.world_size() : 1;
  c.ranks_.resize(world);
  c.stubs_.resize(world);
  for (int r = 0; r < world; ++r) c.ranks_[r].rank = r;
  if (world == 1) {
    c.ranks_[0].address = g.server;
    return c;
  }
  for (const v1::PeerInfo& p : peers.peers()) {
    if (p.rank() >= 0 && p.rank() < world) c.ranks_[p.rank()].address = p.address();
  }
  // The rank that answered is reachable at the address the user gave.
  if (peers.rank() >= 0 && peers.rank() < world) {
    c.ranks_[peers.rank()].address = g.server;
  }
  return c;
}

v1::Admin::Stub* Cluster::Admin(int rank) {
  if (rank < 0 || rank >= world_size() || ranks_[rank].address.empty()) return nullptr;
  if (ranks_[rank].address == g_.server) return entry_.get();
  if (stubs_[rank] == nullptr) {
    stubs_[rank] = v1::Admin::NewStub(
        grpc::CreateChannel(ranks_[rank].address, grpc::InsecureChannelCredentials()));
  }
  return stubs_[rank].get();
}

}  // namespace sherd::ctl
