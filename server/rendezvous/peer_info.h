// One entry of the cluster's peer table: which address serves which rank.
// A plain value type, shared by the coordinator, the join client and
// whoever wires the server (the proto twin is sherd.v1.PeerInfo).
#pragma once

#include <string>
#include <vector>

namespace sherd {

struct PeerInfo {
  int rank = 0;
  std::string address;  // what trainers and sherdctl dial for this rank

  friend bool operator==(const PeerInfo&, const PeerInfo&) = default;
};

// A complete table holds one PeerInfo per rank, sorted by rank.
using PeerList = std::vector<PeerInfo>;

}  // namespace sherd
