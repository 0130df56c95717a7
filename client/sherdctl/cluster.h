// sherdctl's view of a cluster: from any one shard server, the peer table
// (Peer.GetPeers) gives every rank's address; admin calls then go to each
// rank point to point. Nothing here enters a collective, so it works while a
// step is in flight or a trainer is stuck.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/sherdctl/commands.h"
#include "sherd/v1/admin.grpc.pb.h"

namespace sherd::ctl {

struct RankEndpoint {
  int rank = 0;
  std::string address;  // empty: this rank has not joined
};

class Cluster {
 public:
  // Asks `g.server` for the peer table. A server that is not part of a
  // multi-rank cluster yields one endpoint: itself.
  static absl::StatusOr<Cluster> Discover(const GlobalOptions& g);

  int world_size() const { return static_cast<int>(ranks_.size()); }
  const std::vector<RankEndpoint>& ranks() const { return ranks_; }
  // The admin stub of a rank (the --server one for the rank that answered).
  v1::Admin::Stub* Admin(int rank);
  v1::Admin::Stub* Entry() { return entry_.get(); }

  // Calls fn on the stub with the global timeout; maps unreachable servers
  // to UNAVAILABLE with the address in the message.
  template <typename Req, typename Resp, typename Fn>
  absl::Status Call(v1::Admin::Stub* stub, const std::string& address, Fn fn,
                    const Req& req, Resp* resp) const;

 private:
  GlobalOptions g_;
  std::vector<RankEndpoint> ranks_;
  std::unique_ptr<v1::Admin::Stub> entry_;
  std::vector<std::unique_ptr<v1::Admin::Stub>> stubs_;
};

absl::Status CallError(const grpc::Status& s, const std::string& address);

template <typename Req, typename Resp, typename Fn>
absl::Status Cluster::Call(v1::Admin::Stub* stub, const std::string& address,
                           Fn fn, const Req& req, Resp* resp) const {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(g_.timeout_s * 1000)));
  return CallError((stub->*fn)(&ctx, req, resp), address);
}

}  // namespace sherd::ctl
