#include "server/cluster_formation.h"

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
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

// The collective backends of membership epoch `epoch`: every rank builds
// them at once, through keys of that epoch in rank 0's store.
absl::StatusOr<std::unique_ptr<Collective>> ConnectCollectives(
    const ServerConfig& config, const std::string& address, KvStore& store,
    std::shared_ptr<KvStore> shared_store, int64_t epoch) {
  const std::string suffix = epoch > 0 ? absl::StrCat("/e", epoch) : "";
  GlooOptions gloo;
  gloo.hostname = HostOf(address);
  gloo.timeout = absl::Seconds(config.collective_timeout_s);
  gloo.prefix = absl::StrCat("gloo/", config.cluster_id, suffix);
  if (config.device == "cuda") {
    // Device state: NCCL on this rank's GPU (ResolveDevice chose it).
    NcclOptions nccl;
    nccl.timeout = gloo.timeout;
    nccl.device = config.cuda_device;
    nccl.prefix = absl::StrCat("nccl/", config.cluster_id, suffix);
    return CreateNcclCollective(store, config.rank, config.world_size, nccl);
  }
  absl::StatusOr<std::unique_ptr<Collective>> collective =
      CreateGlooCollective(store, config.rank, config.world_size, gloo);
  if (collective.ok() && config.shm_collectives) {
    // Ranks that share this host reduce and gather through shared memory;
    // across hosts, each group of one rank per host has a Gloo backend of
    // its own (make_group); barriers and small all-reduces stay on the
    // full Gloo.
    GroupFactory make_group = [gloo, shared_store](const std::string& prefix, int rank,
                                                   int world_size) {
      GlooOptions group = gloo;
      group.prefix = prefix;
      return CreateGlooCollective(*shared_store, rank, world_size, group);
    };
    collective = CreateLocalShmCollective(
        std::move(*collective), shared_store,
        {.prefix = absl::StrCat("shm/", config.cluster_id, suffix),
         .lookup_timeout = gloo.timeout,
         .make_group = std::move(make_group)});
  }
  return collective;
}

// A rebuild for `epoch` failed here (typically: another rank was replaced
// while this epoch connected, so some rank never came, or came late). Its
// keys cannot be reused, so every rank moves on to the next epoch together:
// this announces it (first writer wins; the others' watches see it).
void RetryInNextEpoch(KvStore& store, int rank, int64_t epoch) {
  absl::SleepFor(absl::Milliseconds(200));  // let a replacement's announcement land first
  absl::StatusOr<std::string> now =
      store.SetIfAbsent(EpochKey(epoch + 1), absl::StrCat("rebuild ", rank));
  if (!now.ok()) {
    SHERD_LOG(Warning, "cannot announce epoch %d: %s", epoch + 1, now.status().message());
  }
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
    struct Done {  // however the thread ends, Stop may join it
      State* s;
      ~Done() {
        absl::MutexLock l(&s->mu);
        s->done = true;
      }
    } done{state.get()};
    auto stopping = [&] {
      absl::MutexLock l(&state->mu);
      return state->shard == nullptr;
    };
    absl::BitGen gen;
    JoinOptions join{.cluster_id = config.cluster_id,
                     .incarnation = absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen))};
    const std::string coordinator = config.rank == 0 ? address : config.coordinator;
    // Rank 0's incarnation, before any rank can complete its join: the
    // others tell a restarted rank 0 by a different value here.
    if (table->is_coordinator()) (void)table->Set(kCoordinatorKey, join.incarnation);
    absl::StatusOr<PeerList> peers =
        FormCluster(*table, coordinator, address, absl::Seconds(config.join_timeout_s), join);
    if (!peers.ok()) {
      absl::MutexLock l(&state->mu);
      if (state->shard != nullptr) {
        state->shard->MarkUnhealthy(
            absl::StrCat("cluster formation failed: ", peers.status().message()));
      }
      return;
    }
    int64_t epoch = table->GetSnapshot().epoch;
    SHERD_LOG(Info, "all %d ranks joined (membership epoch %d); connecting collectives",
              config.world_size, epoch);
    // Rank 0's store also collects checkpoint reports (shared ownership: it
    // outlives this thread inside the shard server).
    std::shared_ptr<KvStore> store =
        table->is_coordinator() ? std::shared_ptr<KvStore>(table)
                                : std::make_shared<RemoteKvStore>(coordinator);
    {
      absl::StatusOr<std::unique_ptr<Collective>> collective =
          ConnectCollectives(config, address, *store, store, epoch);
      absl::MutexLock l(&state->mu);
      if (state->shard == nullptr) return;  // shutting down
      if (collective.ok()) {
        state->shard->AttachCollective(std::move(*collective), store, epoch);
        SHERD_LOG(Info, "cluster formed: rank %d of %d", config.rank, config.world_size);
      } else {
        state->shard->MarkUnhealthy(
            absl::StrCat("cluster formation failed: ", collective.status().message()));
        if (epoch > 0) RetryInNextEpoch(*store, config.rank, epoch);
      }
    }
    // Then watch for replaced ranks: each raises the membership epoch, and
    // every rank rebuilds its collectives for it and rewinds.
    // The watch's own view of the store gives up at once when rank 0 does
    // not answer (it is shutting down, or lost), so that Stop never waits
    // more than one poll.
    std::shared_ptr<KvStore> watch =
        table->is_coordinator()
            ? store
            : std::make_shared<RemoteKvStore>(
                  coordinator, RemoteKvOptions{.unavailable_retry = absl::ZeroDuration()});
    // A restarted rank 0 (same address, empty store): this rank joins it
    // again, saying which epoch it was at; the cluster re-forms past every
    // such epoch and every rank rewinds, as for any replaced rank.
    auto rejoin_restarted_coordinator = [&]() -> bool {
      SHERD_LOG(Warning, "rank 0 at %s was restarted: joining it again (was at membership "
                "epoch %d)", coordinator, epoch);
      {
        absl::MutexLock l(&state->mu);
        if (state->shard == nullptr) return true;
        state->shard->MarkUnhealthy("rank 0 was restarted: the cluster is re-forming");
      }
      JoinOptions again = join;
      again.rejoining = true;
      again.epoch = epoch;
      int64_t formed = 0;
      absl::StatusOr<PeerList> peers =
          JoinCluster(coordinator, config.rank, config.world_size, address,
                      absl::Seconds(config.join_timeout_s), again, &formed);
      if (!peers.ok()) {
        SHERD_LOG(Warning, "joining the restarted rank 0: %s", peers.status().message());
        return false;
      }
      (void)table->Adopt(*peers, formed);
      epoch = formed;
      absl::StatusOr<std::unique_ptr<Collective>> collective =
          ConnectCollectives(config, address, *store, store, epoch);
      absl::MutexLock l(&state->mu);
      if (state->shard == nullptr) return true;
      if (!collective.ok()) {
        state->shard->MarkUnhealthy(absl::StrCat("rebuilding the collectives for epoch ", epoch,
                                                 ": ", collective.status().message()));
        RetryInNextEpoch(*store, config.rank, epoch);
        return true;
      }
      (void)state->shard->Rejoin(std::move(*collective), store, epoch);
      return true;
    };
    // Rank 0 unreachable: said once, after 5 s (at shutdown rank 0 often
    // closes a moment before the others do, which is no news).
    int unreachable = 0;
    std::string coordinator_id;            // rank 0's incarnation, as first read
    bool check_coordinator = !table->is_coordinator();
    int polls = 0;
    while (!stopping()) {
      // After rank 0 was unreachable, and every 10 polls: is it the same?
      if (!table->is_coordinator() && (check_coordinator || ++polls % 10 == 0)) {
        absl::StatusOr<std::string> id = watch->Get(kCoordinatorKey, absl::ZeroDuration());
        const bool missing = absl::IsDeadlineExceeded(id.status()) || absl::IsNotFound(id.status());
        if (id.ok() && coordinator_id.empty()) {
          coordinator_id = *id;
          check_coordinator = false;
        } else if ((id.ok() && *id != coordinator_id) || (missing && !coordinator_id.empty())) {
          if (rejoin_restarted_coordinator()) {
            coordinator_id.clear();  // the new one's, read next
            check_coordinator = true;
          } else {
            absl::SleepFor(absl::Seconds(1));
          }
          continue;
        } else if (id.ok()) {
          check_coordinator = false;
        }
      }
      absl::StatusOr<std::string> replaced = watch->Get(EpochKey(epoch + 1), absl::Seconds(1));
      if (absl::IsDeadlineExceeded(replaced.status())) continue;
      if (!replaced.ok()) {
        if (++unreachable == 5 && !stopping()) {
          SHERD_LOG(Warning, "cannot watch for replaced ranks: %s (rank 0 lost? restart it at "
                    "the same address)", replaced.status().message());
        }
        check_coordinator = true;
        absl::SleepFor(absl::Seconds(1));
        continue;
      }
      unreachable = 0;
      // Two replacements in a row: rebuild once, for the newest epoch.
      while (watch->Get(EpochKey(epoch + 2), absl::ZeroDuration()).ok()) {
        ++epoch;
        replaced = watch->Get(EpochKey(epoch + 1), absl::ZeroDuration());
      }
      ++epoch;
      if (!replaced.ok()) continue;
      if (!table->is_coordinator()) {
        // "<rank> <address>": the replacement's address, in this rank's table.
        std::vector<std::string> f = absl::StrSplit(*replaced, ' ');
        PeerList now = table->GetSnapshot().peers;
        int r = 0;
        if (f.size() == 2 && absl::SimpleAtoi(f[0], &r) && r >= 0 &&
            r < static_cast<int>(now.size())) {
          now[r].address = f[1];
        }
        (void)table->Adopt(now, epoch);
      }
      SHERD_LOG(Warning, "%s%s: rebuilding the collectives (membership epoch %d)",
                absl::StartsWith(*replaced, "rebuild ") ? "retry after a failed " : "rank ",
                *replaced, epoch);
      absl::StatusOr<std::unique_ptr<Collective>> collective =
          ConnectCollectives(config, address, *store, store, epoch);
      absl::MutexLock l(&state->mu);
      if (state->shard == nullptr) return;
      if (!collective.ok()) {
        state->shard->MarkUnhealthy(absl::StrCat("rebuilding the collectives for epoch ", epoch,
                                                 ": ", collective.status().message()));
        RetryInNextEpoch(*store, config.rank, epoch);
        continue;
      }
      (void)state->shard->Rejoin(std::move(*collective), store, epoch);
    }
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
