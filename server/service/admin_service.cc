#include "server/service/admin_service.h"

#include "common/grpc_status.h"

namespace sherd {
grpc::Status AdminService::Status(grpc::ServerContext*, const v1::StatusRequest*,
                                  v1::StatusResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  *resp = server_.Status();
  return grpc::Status::OK;
}

grpc::Status AdminService::ListTensors(grpc::ServerContext*,
                                       const v1::ListTensorsRequest*,
                                       v1::ListTensorsResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.ListTensors(), resp);
}

grpc::Status AdminService::Where(grpc::ServerContext*,
                                 const v1::WhereRequest* req,
                                 v1::WhereResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.Where(*req), resp);
}

grpc::Status AdminService::Inspect(grpc::ServerContext*,
                                   const v1::InspectRequest* req,
                                   v1::InspectResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.Inspect(*req), resp);
}

grpc::Status AdminService::CheckpointSave(grpc::ServerContext*,
                                          const v1::CheckpointRequest* req,
                                          v1::CheckpointResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.Checkpoint(req->save_id()), resp);
}

grpc::Status AdminService::CheckpointStatus(grpc::ServerContext*,
                                            const v1::CheckpointStatusRequest*,
                                            v1::CheckpointStatusResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  *resp = server_.CheckpointStatus();
  return grpc::Status::OK;
}

grpc::Status AdminService::CheckpointRestore(grpc::ServerContext*,
                                             const v1::CheckpointRestoreRequest* req,
                                             v1::CheckpointRestoreResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.RestoreCheckpoint(*req), resp);
}

}  // namespace sherd
