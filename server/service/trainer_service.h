// gRPC adapter for sherd.v1.Trainer: proto in, ShardServer call, proto out.
#pragma once

#include "sherd/v1/trainer.grpc.pb.h"
#include "server/service/inflight.h"
#include "server/shard_server.h"

namespace sherd {

class TrainerService final : public v1::Trainer::Service {
 public:
  TrainerService(ShardServer& server, Inflight& inflight)
      : server_(server), inflight_(inflight) {}

  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* req,
                        v1::RegisterResponse* resp) override;
  grpc::Status InitParams(grpc::ServerContext*, const v1::InitParamsRequest* req,
                          v1::InitParamsResponse* resp) override;
  grpc::Status Step(grpc::ServerContext*, const v1::StepRequest* req,
                    v1::StepResponse* resp) override;
  grpc::Status Push(grpc::ServerContext*, grpc::ServerReader<v1::DataChunk>* reader,
                    v1::PushResponse* resp) override;
  grpc::Status Fetch(grpc::ServerContext*, const v1::FetchRequest* req,
                     grpc::ServerWriter<v1::DataChunk>* writer) override;
  grpc::Status Checkpoint(grpc::ServerContext*, const v1::CheckpointRequest*,
                          v1::CheckpointResponse* resp) override;

 private:
  ShardServer& server_;
  Inflight& inflight_;
};

}  // namespace sherd
