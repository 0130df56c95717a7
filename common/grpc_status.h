// The one place that converts between absl::Status and grpc::Status. The
// codes map one to one; the message travels unchanged.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sherd {

grpc::Status ToGrpcStatus(const absl::Status& s);
absl::Status FromGrpcStatus(const grpc::Status& s);

// For service adapters: moves an OK result into the response.
template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* resp) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *resp = std::move(*result);
  return grpc::Status::OK;
}

}  // namespace sherd
