// gRPC adapter for sherd.v1.Admin: proto in, ShardServer call, proto out.
#pragma once

#include "sherd/v1/admin.grpc.pb.h"
#include "server/service/inflight.h"
#include "server/shard_server.h"

namespace sherd {

class AdminService final : public v1::Admin::Service {
 public:
  AdminService(ShardServer& server, Inflight& inflight)
      : server_(server), inflight_(inflight) {}

  grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest*,
                      v1::StatusResponse* resp) override;
  grpc::Status ListTensors(grpc::ServerContext*, const v1::ListTensorsRequest*,
                           v1::ListTensorsResponse* resp) override;
  grpc::Status Where(grpc::ServerContext*, const v1::WhereRequest* req,
                     v1::WhereResponse* resp) override;
  grpc::Status Inspect(grpc::ServerContext*, const v1::InspectRequest* req,
                       v1::InspectResponse* resp) override;
  grpc::Status CheckpointSave(grpc::ServerContext*, const v1::CheckpointRequest*,
                              v1::CheckpointResponse* resp) override;
  grpc::Status CheckpointStatus(grpc::ServerContext*,
                                const v1::CheckpointStatusRequest*,
                                v1::CheckpointStatusResponse* resp) override;
  grpc::Status CheckpointRestore(grpc::ServerContext*,
                                 const v1::CheckpointRestoreRequest* req,
                                 v1::CheckpointRestoreResponse* resp) override;

 private:
  ShardServer& server_;
  Inflight& inflight_;
};

}  // namespace sherd
