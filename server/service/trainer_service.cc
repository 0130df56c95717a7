#include "server/service/trainer_service.h"

#include "absl/strings/str_cat.h"
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

grpc::Status TrainerService::Push(grpc::ServerContext* ctx,
                                  grpc::ServerReader<v1::DataChunk>* reader,
                                  v1::PushResponse* resp) {
  SHERD_ADMIT_OR_RETURN(inflight_);
  // All or nothing: the chunks are checked as they arrive and written only
  // once the whole stream has, so a stream with a bad chunk, or one the
  // client abandons, writes nothing.
  std::vector<v1::DataChunk> chunks;
  int64_t elements = 0;
  for (v1::DataChunk chunk; reader->Read(&chunk);) {
    if (absl::Status s = server_.CheckChunk(chunk); !s.ok()) {
      return ToGrpcStatus(absl::Status(
          s.code(), absl::StrCat("chunk ", chunks.size(), " of this push: ", s.message(),
                                 "; nothing of this push was written")));
    }
    elements += static_cast<int64_t>(chunk.data().size() / sizeof(float));
    chunks.push_back(std::move(chunk));
  }
  if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "push cancelled");
  if (absl::Status s = server_.WriteChunks(chunks); !s.ok()) return ToGrpcStatus(s);
  resp->set_elements(elements);
  resp->set_chunks(static_cast<int64_t>(chunks.size()));
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
