#include "server/service/trainer_service.h"

#include "common/grpc_status.h"

namespace sherd {
grpc::Status TrainerService::Register(grpc::ServerContext*,
                                      const v1::RegisterRequest* req,
                                      v1::RegisterResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.Register(*req), resp);
}

grpc::Status TrainerService::InitParams(grpc::ServerContext*,
                                        const v1::InitParamsRequest* req,
                                        v1::InitParamsResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.InitParams(*req), resp);
}

grpc::Status TrainerService::Step(grpc::ServerContext*,
                                  const v1::StepRequest* req,
                                  v1::StepResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.Step(*req), resp);
}

grpc::Status TrainerService::Push(grpc::ServerContext*,
                                  grpc::ServerReader<v1::DataChunk>* reader,
                                  v1::PushResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  v1::DataChunk chunk;
  int64_t elements = 0, chunks = 0;
  while (reader->Read(&chunk)) {
    absl::Status s = server_.WriteChunk(chunk);
    if (!s.ok()) return ToGrpcStatus(s);
    elements += static_cast<int64_t>(chunk.data().size() / sizeof(float));
    ++chunks;
  }
  resp->set_elements(elements);
  resp->set_chunks(chunks);
  return grpc::Status::OK;
}

grpc::Status TrainerService::Fetch(grpc::ServerContext* ctx,
                                   const v1::FetchRequest* req,
                                   grpc::ServerWriter<v1::DataChunk>* writer) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return ToGrpcStatus(
      server_.ReadRange(*req, [&](const v1::DataChunk& c) {
        return !ctx->IsCancelled() && writer->Write(c);
      }));
}

grpc::Status TrainerService::Checkpoint(grpc::ServerContext*,
                                        const v1::CheckpointRequest* req,
                                        v1::CheckpointResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  return Reply(server_.Checkpoint(req->save_id()), resp);
}

}  // namespace sherd
