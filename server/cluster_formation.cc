#include "server/cluster_formation.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "server/collective/gloo/factory.h"
#include "server/collective/local/factory.h"
#include "server/collective/nccl/factory.h"
#include "server/rendezvous/peer_client.h"

namespace sherd {

struct ClusterFormation::State {
  absl::Mutex mu;
  ShardServer* shard ABSL_GUARDED_BY(mu) = nullptr;  // null once stopped
  bool done ABSL_GUARDED_BY(mu) = false;
};

namespace {

// The host part of host:port, for Gloo's TCP transport to bind and advertise.
std::string HostOf(const std::string& address) {
  size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

}  // namespace

ClusterFormation::ClusterFormation(const ServerConfig& config,
                                   std::string my_address,
                                   std::shared_ptr<PeerTable> table,
                                   ShardServer& shard)
    : config_(config),
      my_address_(std::move(my_address)),
      table_(std::move(table)),
      state_(std::make_shared<State>()) {
  absl::MutexLock l(&state_->mu);
  state_->shard = &shard;
}

ClusterFormation::~ClusterFormation() { Stop(); }

void ClusterFormation::Start() {
  thread_ = std::thread([config = config_, address = my_address_,
                         table = table_, state = state_] {
    auto finish = [&](absl::StatusOr<std::unique_ptr<Collective>> result,
                      std::shared_ptr<KvStore> store = nullptr) {
      absl::MutexLock l(&state->mu);
      state->done = true;
      if (state->shard == nullptr) return;  // shutting down
      if (result.ok()) {
        state->shard->AttachCollective(std::move(*result), std::move(store));
        SHERD_LOG(Info, "cluster formed: rank %d of %d", config.rank, config.world_size);
      } else {
        state->shard->MarkUnhealthy(
            absl::StrCat("cluster formation failed: ", result.status().message()));
      }
    };
    const std::string coordinator = config.rank == 0 ? address : config.coordinator;
    absl::StatusOr<PeerList> peers =
        FormCluster(*table, coordinator, address,
                    absl::Seconds(config.join_timeout_s), {.cluster_id = config.cluster_id});
    if (!peers.ok()) return finish(peers.status());
    SHERD_LOG(Info, "all %d ranks joined; connecting collectives", config.world_size);
    GlooOptions gloo;
    gloo.hostname = HostOf(address);
    gloo.timeout = absl::Seconds(config.collective_timeout_s);
    gloo.prefix = absl::StrCat("gloo/", config.cluster_id);
    // Rank 0's store also collects checkpoint reports (shared ownership: it
    // outlives this thread inside the shard server).
    std::shared_ptr<KvStore> store =
        table->is_coordinator() ? std::shared_ptr<KvStore>(table)
                                : std::make_shared<RemoteKvStore>(coordinator);
    if (config.device == "cuda") {
      // Device state: NCCL on this rank's GPU (ResolveDevice chose it).
      NcclOptions nccl;
      nccl.timeout = gloo.timeout;
      nccl.device = config.cuda_device;
      nccl.prefix = absl::StrCat("nccl/", config.cluster_id);
      return finish(CreateNcclCollective(*store, config.rank, config.world_size, nccl),
                    store);
    }
    absl::StatusOr<std::unique_ptr<Collective>> collective =
        CreateGlooCollective(*store, config.rank, config.world_size, gloo);
    if (collective.ok() && config.shm_collectives) {
      // Ranks on this host reduce and gather through shared memory; the
      // rest (and every barrier) stays on Gloo.
      collective = CreateLocalShmCollective(std::move(*collective), store,
                                            {.prefix = absl::StrCat("shm/", config.cluster_id)});
    }
    finish(std::move(collective), store);
  });
}

void ClusterFormation::Stop() {
  if (!thread_.joinable()) return;
  bool done;
  {
    absl::MutexLock l(&state_->mu);
    state_->shard = nullptr;
    done = state_->done;
  }
  table_->Close();  // wakes a blocked Join or KvGet on this rank
  if (!done) {
    absl::MutexLock l(&state_->mu);
    auto finished = [s = state_.get()]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) {
      return s->done;
    };
    done = state_->mu.AwaitWithTimeout(absl::Condition(&finished), absl::Seconds(2));
  }
  if (done) {
    thread_.join();
  } else {
    SHERD_LOG(Warning, "abandoning cluster formation still in progress");
    thread_.detach();
  }
}

}  // namespace sherd
