// Test helper: a tensor's fp32 master values on one server, read through the
// Admin service's Inspect (what sherdctl inspect uses).
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "sherd/v1/admin.grpc.pb.h"

namespace sherd::testing {

inline std::vector<float> MasterValues(v1::Admin::Stub& admin, const std::string& tensor,
                                       int64_t max_values = 1000) {
  grpc::ClientContext ctx;
  v1::InspectRequest req;
  req.set_name(tensor);
  req.set_state(v1::STATE_PARAM);
  req.set_values(true);
  req.set_max_values(max_values);
  v1::InspectResponse r;
  if (!admin.Inspect(&ctx, req, &r).ok()) return {};
  return {r.values().begin(), r.values().end()};
}

inline std::vector<float> MasterValues(const std::string& address, const std::string& tensor) {
  auto stub = v1::Admin::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  return MasterValues(*stub, tensor);
}

}  // namespace sherd::testing
