// Conversions between the PeerInfo value type and its proto twin, shared by
// the peer service and the join client.
#pragma once

#include "server/rendezvous/peer_info.h"
#include "sherd/v1/peer.pb.h"

namespace sherd::internal {

inline void PeersToProto(
    const PeerList& peers,
    google::protobuf::RepeatedPtrField<v1::PeerInfo>* out) {
  out->Clear();
  for (const PeerInfo& p : peers) {
    v1::PeerInfo* q = out->Add();
    q->set_rank(p.rank);
    q->set_address(p.address);
  }
}

inline PeerList PeersFromProto(
    const google::protobuf::RepeatedPtrField<v1::PeerInfo>& in) {
  PeerList peers;
  peers.reserve(in.size());
  for (const v1::PeerInfo& q : in) peers.push_back({q.rank(), q.address()});
  return peers;
}

}  // namespace sherd::internal
