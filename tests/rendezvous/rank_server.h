// One rank's peer service on a real gRPC server (loopback TCP port 0, or a
// given address such as unix:/path), for tests that run ranks as threads.
// The destructor shuts down in the order a shard server must: close the
// table (wakes blocked Join/KvGet), drain, stop the server.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/rendezvous/coordinator.h"
#include "server/rendezvous/peer_client.h"
#include "server/service/inflight.h"

namespace sherd::rendezvous_test {

class RankServer {
 public:
  RankServer(int rank, int world_size, const std::string& listen = "127.0.0.1:0",
             const std::string& cluster_id = "")
      : table_(rank, world_size, cluster_id), service_(table_, inflight_) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
    // As in the real server: idle pollers notice Shutdown quickly.
    builder.SetSyncServerOption(
        grpc::ServerBuilder::SyncServerOption::CQ_TIMEOUT_MSEC, 100);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    if (absl::StartsWith(listen, "unix:")) {
      address_ = listen;
    } else {
      address_ = absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
    }
  }
  ~RankServer() {
    table_.Close();
    inflight_.Drain(absl::Now() + absl::Seconds(5));
    if (server_ != nullptr) server_->Shutdown();
  }
  RankServer(const RankServer&) = delete;
  RankServer& operator=(const RankServer&) = delete;

  bool ok() const { return server_ != nullptr; }
  const std::string& address() const { return address_; }
  PeerTable& table() { return table_; }
  Inflight& inflight() { return inflight_; }
  std::unique_ptr<v1::Peer::StubInterface> Stub() const {
    return NewPeerStub(address_);
  }

 private:
  PeerTable table_;
  Inflight inflight_;
  PeerService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace sherd::rendezvous_test
