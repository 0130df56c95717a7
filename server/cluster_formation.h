// Forms a multi-rank cluster in the background once this server is serving:
// joins the peer table through rank 0, rendezvous Gloo through rank 0's
// store, and hands the collective to the shard server. Until then the server
// answers Register and the admin calls, and Step answers UNAVAILABLE (which
// the client retries). A formation that fails marks the server unhealthy.
//
// Then it watches rank 0's store for replaced ranks (PeerTable: a restarted
// server's join raises the membership epoch and sets "cluster/epoch/<n>").
// Every rank then rebuilds its collectives for epoch n, through keys of that
// epoch, and hands them to ShardServer::Rejoin, which rewinds to the newest
// complete checkpoint; the restarted rank itself forms at epoch n directly.
// The watch is a 1 s long poll on the store. Rank 0 restarted at its
// address comes back with an empty store: the other ranks notice (its
// incarnation at "cluster/coordinator" changed), join it again saying the
// epoch they were at, and rebuild and rewind at the epoch it forms past
// theirs.
//
// Threads: Start() spawns one thread; Stop() may be called from any thread,
// once. If formation (or a rebuild) is still blocked at Stop(), the thread
// is abandoned (it holds only shared state and never touches the shard
// server again) and dies with the process.
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
