#include "server/collective/nccl/nccl_status.h"

#include <nccl.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace sherd::internal {
namespace {

std::string Describe(int result, std::string_view what, void* comm) {
  const auto r = static_cast<ncclResult_t>(result);
  std::string msg = absl::StrCat("NCCL ", std::string(what), ": ",
                                 ncclGetErrorString(r));
  const char* detail =
      ncclGetLastError(comm ? static_cast<ncclComm_t>(comm) : nullptr);
  if (detail != nullptr && detail[0] != '\0') {
    absl::StrAppend(&msg, " (", detail, ")");
  }
  return msg;
}

}  // namespace

absl::Status NcclStatus(int result, std::string_view what, void* comm) {
  if (result == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(Describe(result, what, comm));
}

absl::Status NcclInitStatus(int result, std::string_view what, void* comm) {
  if (result == ncclSuccess) return absl::OkStatus();
  if (result == ncclInvalidUsage || result == ncclInvalidArgument) {
    return absl::FailedPreconditionError(Describe(result, what, comm));
  }
  return absl::UnavailableError(Describe(result, what, comm));
}

}  // namespace sherd::internal
