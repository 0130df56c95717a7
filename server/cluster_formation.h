// Forms a multi-rank cluster in the background once this server is serving:
// joins the peer table through rank 0, rendezvous Gloo through rank 0's
// store, and hands the collective to the shard server. Until then the server
// answers Register and the admin calls, and Step answers UNAVAILABLE (which
// the client retries). A formation that fails marks the server unhealthy.
//
// Threads: Start() spawns one thread; Stop() may be called from any thread,
// once. If formation is still blocked at Stop(), the thread is abandoned
// (it holds only shared state and never touches the shard server again) and
// dies with the process.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "server/config.h"
#include "server/rendezvous/coordinator.h"
#include "server/shard_server.h"

namespace sherd {

class ClusterFormation {
 public:
  ClusterFormation(const ServerConfig& config, std::string my_address,
                   std::shared_ptr<PeerTable> table, ShardServer& shard);
  ~ClusterFormation();

  void Start();
  void Stop();

 private:
  struct State;
  const ServerConfig config_;
  const std::string my_address_;
  std::shared_ptr<PeerTable> table_;
  std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace sherd
