// Builds the NCCL backend: unique id through the KvStore, a non-blocking
// communicator created under a deadline, a dedicated stream.
#include "server/collective/nccl/factory.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "cuda_kernels/cuda_status.h"
#include "cuda_kernels/device.h"
#include "server/collective/nccl/nccl_collective.h"
#include "server/collective/nccl/nccl_status.h"

namespace sherd {
namespace {

// Rank 0 creates and publishes the id; the others wait for it.
absl::StatusOr<ncclUniqueId> RendezvousId(KvStore& store, int rank,
                                          const NcclOptions& options) {
  const std::string key = options.prefix + "/unique_id";
  ncclUniqueId id;
  if (rank == 0) {
    absl::Status s = internal::NcclInitStatus(ncclGetUniqueId(&id),
                                              "ncclGetUniqueId", nullptr);
    if (!s.ok()) return s;
    // Base64: the store's values cross gRPC and logs as text.
    s = store.Set(key, absl::Base64Escape(absl::string_view(
                           id.internal, sizeof id.internal)));
    if (!s.ok()) return s;
    return id;
  }
  absl::StatusOr<std::string> value = store.Get(key, options.timeout);
  if (!value.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "NCCL rendezvous: rank ", rank, " got no unique id under \"", key,
        "\" within ", absl::FormatDuration(options.timeout), ": ",
        value.status().message()));
  }
  std::string raw;
  if (!absl::Base64Unescape(*value, &raw) || raw.size() != sizeof id) {
    return absl::UnavailableError(absl::StrCat(
        "NCCL rendezvous: malformed unique id under \"", key, "\""));
  }
  std::memcpy(&id, raw.data(), sizeof id);
  return id;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Collective>> CreateNcclCollective(
    KvStore& store, int rank, int world_size, const NcclOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateNcclCollective: bad rank ", rank, " of world size ",
        world_size));
  }
  if (options.timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        "CreateNcclCollective: timeout must be at least 1 ms");
  }
  if (options.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateNcclCollective: bad device ", options.device));
  }
  // Rank 0 needs its device before NCCL initializes; the others wait in
  // the store first (no GPU needed to find out that rank 0 never came).
  if (rank == 0) {
    absl::Status s = CudaSetDevice(options.device);
    if (!s.ok()) return s;
  }
  absl::StatusOr<ncclUniqueId> id = RendezvousId(store, rank, options);
  if (!id.ok()) return id.status();
  absl::Status s = CudaSetDevice(options.device);
  if (!s.ok()) return s;

  cudaStream_t stream = nullptr;
  SHERD_RETURN_IF_CUDA_ERROR(
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
      "NCCL stream");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every wait is ours, so every wait can time out
  ncclComm_t comm = nullptr;
  const absl::Time deadline = absl::Now() + options.timeout;
  ncclResult_t state =
      ncclCommInitRankConfig(&comm, world_size, *id, rank, &config);
  if (state == ncclInProgress && comm != nullptr) {
    int spins = 0;
    do {
      if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) break;
      if (state != ncclInProgress) break;
      if (++spins > 100) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    } while (absl::Now() < deadline);
  }
  if (state != ncclSuccess) {
    absl::Status why =
        state == ncclInProgress
            ? absl::UnavailableError(absl::StrCat(
                  "NCCL rendezvous: rank ", rank, " of ", world_size,
                  ": not every rank joined within ",
                  absl::FormatDuration(options.timeout)))
            : internal::NcclInitStatus(state, "ncclCommInitRankConfig", comm);
    if (comm != nullptr) ncclCommAbort(comm);
    cudaStreamDestroy(stream);
    return why;
  }
  return std::unique_ptr<Collective>(std::make_unique<internal::NcclCollective>(
      comm, stream, rank, world_size, options.device, options.timeout));
}

}  // namespace sherd
