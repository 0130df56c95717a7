// The NCCL factory of a build without CUDA/NCCL: callers get a clear
// UNIMPLEMENTED instead of #ifdefs of their own.
#include "server/collective/nccl/factory.h"

namespace sherd {

absl::StatusOr<std::unique_ptr<Collective>> CreateNcclCollective(
    KvStore&, int, int, const NcclOptions&) {
  return absl::UnimplementedError(
      "sherd was built without CUDA/NCCL; the NCCL backend is unavailable");
}

}  // namespace sherd
