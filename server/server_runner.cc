#include "server/server_runner.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "server/cluster_formation.h"
#include "server/collective/single_rank.h"
#include "server/gpu/gpu_backend.h"
#include "server/rendezvous/coordinator.h"
#include "server/rendezvous/peer_client.h"
#include "server/service/admin_service.h"
#include "server/service/trainer_service.h"
#include "server/shard_server.h"
#include "server/state/shm_names.h"

namespace sherd {
namespace {

constexpr absl::Duration kShutdownGrace = absl::Seconds(10);

// Replaces a requested port 0 by the one gRPC bound.
std::string BoundAddress(const std::string& listen, int port) {
  if (absl::StartsWith(listen, "unix:")) return listen;
  size_t colon = listen.rfind(':');
  return absl::StrCat(listen.substr(0, colon), ":", port);
}

}  // namespace

absl::StatusOr<GpuBackend> ResolveDevice(ServerConfig& config) {
  if (config.device == "auto") {
    std::string why = GpuUnavailableReason();
    config.device = why.empty() ? "cuda" : "cpu";
    if (!why.empty()) SHERD_LOG(Debug, "--device auto: cpu (%s)", why);
  }
  if (config.device != "cuda") return GpuBackend{};
  if (config.cuda_device < 0) {
    config.cuda_device = config.rank % std::max(1, VisibleGpuCount());
  }
  absl::StatusOr<GpuBackend> b = CreateGpuBackend(config.cuda_device);
  if (!b.ok()) {
    return absl::Status(b.status().code(),
                        absl::StrCat("--device cuda: ", b.status().message()));
  }
  return b;
}

namespace {

// An exception thrown on a thread that is not ours (Gloo's I/O loop checks
// its peers' messages with exceptions) ends the process in std::terminate.
// Say what was thrown, and take this server's shared-memory segments along
// (a trainer that maps them keeps its mapping; the names go), instead of
// leaving them for the next start to find.
[[noreturn]] void OnTerminate() {
  std::string what = "no exception in flight";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
      what = "an exception of unknown type";
    }
  }
  SHERD_LOG(Error, "fatal: uncaught exception (%s), most likely on a collective library's thread; "
            "removing this server's shared memory and aborting", what);
  (void)RemoveStaleSegments("/dev/shm", getpid());
  std::abort();
}

}  // namespace

absl::Status RunServer(const ServerConfig& given) {
  ServerConfig config = given;
  std::set_terminate(OnTerminate);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A peer or client that goes away must fail a write, not kill the server.
  signal(SIGPIPE, SIG_IGN);
  // A file-size limit reached while saving a checkpoint must fail the save
  // (EFBIG), not kill the server.
  signal(SIGXFSZ, SIG_IGN);

  SetLogPrefix(absl::StrCat("server r", config.rank));
  if (config.log_level == "debug") SetLogLevel(LogLevel::kDebug);
  if (config.log_level == "warning") SetLogLevel(LogLevel::kWarning);
  if (config.log_level == "error") SetLogLevel(LogLevel::kError);

  if (config.world_size > 1 && absl::StartsWith(config.listen, "unix:") &&
      config.advertise_address.empty()) {
    return absl::InvalidArgumentError(
        "a multi-rank server needs a TCP address: --listen host:port or "
        "--advertise-address");
  }

  absl::StatusOr<GpuBackend> gpu = ResolveDevice(config);
  if (!gpu.ok()) return gpu.status();

  if (config.shm_prefix.empty()) {
    // Segments of servers that were killed (ours, if this is a restarted
    // container with the same pid): their memory, and a name we may need.
    StaleSegments stale = RemoveStaleSegments("/dev/shm", getpid());
    if (stale.removed > 0) {
      SHERD_LOG(Info, "removed %d shared-memory segments (%d MiB) left by servers that died",
                stale.removed, stale.bytes >> 20);
    }
  }

  ServerOptions opts;
  opts.state_memory = gpu->memory;
  opts.step_runner = gpu->runner;
  opts.rank = config.rank;
  opts.world_size = config.world_size;
  opts.memory_limit_bytes = config.memory_limit_bytes;
  opts.optimizer_threads = config.optimizer_threads;
  opts.shm_prefix = config.shm_prefix;
  opts.checkpoint.root = config.checkpoint_dir;
  opts.checkpoint.every = config.checkpoint_every;
  opts.checkpoint.keep = config.checkpoint_keep;
  opts.checkpoint.restore = config.restore;
  opts.agreement_timeout = absl::Seconds(config.collective_timeout_s);
  // The standard health service follows the shard server's health once
  // the gRPC server exists.
  auto health = std::make_shared<std::atomic<grpc::HealthCheckServiceInterface*>>(nullptr);
  opts.on_health_change = [health](bool serving) {
    if (grpc::HealthCheckServiceInterface* h = health->load()) h->SetServingStatus(serving);
  };
  // One rank needs no cluster; more get their collective once formed.
  auto shard = std::make_unique<ShardServer>(
      opts, config.world_size == 1 ? CreateSingleRankCollective() : nullptr);
  if (absl::Status s = shard->PrepareCheckpoints(); !s.ok()) return s;
  Inflight inflight;
  TrainerService trainer(*shard, inflight);
  AdminService admin(*shard, inflight);
  auto table = std::make_shared<PeerTable>(config.rank, config.world_size,
                                           config.cluster_id);
  PeerService peer(*table, inflight);
  if (config.rank == 0) {
    // A join for a rank of the complete cluster from another server
    // replaces that rank only if its old address no longer answers as it.
    table->SetLivenessProbe([](const std::string& old_address, int rank) {
      std::unique_ptr<v1::Peer::StubInterface> stub = NewPeerStub(old_address);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      v1::GetPeersResponse resp;
      return stub->GetPeers(&ctx, v1::GetPeersRequest(), &resp).ok() && resp.rank() == rank;
    });
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  // Sync-server threads poll their queues with this timeout; the default
  // makes Shutdown wait seconds for idle pollers to notice.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::CQ_TIMEOUT_MSEC, 200);
  builder.RegisterService(&trainer);
  builder.RegisterService(&admin);
  builder.RegisterService(&peer);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (port == 0 && !absl::StartsWith(config.listen, "unix:"))) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", config.listen));
  }
  std::string address = config.advertise_address.empty()
                            ? BoundAddress(config.listen, port)
                            : config.advertise_address;
  shard->SetAddress(address);  // Status shows what clients dial
  health->store(server->GetHealthCheckService());
  server->GetHealthCheckService()->SetServingStatus(shard->healthy());
  SHERD_LOG(Info, "listening on %s (rank %d of %d, state on %s, memory limit %d bytes, %d optimizer threads)",
            address, config.rank, config.world_size,
            gpu->memory ? gpu->memory->name() : "cpu",
            config.memory_limit_bytes, config.optimizer_threads);
  if (config.address_file == "-") {
    std::printf("listening on %s\n", address.c_str());
    std::fflush(stdout);
  } else if (!config.address_file.empty()) {
    std::string tmp = config.address_file + ".tmp";
    { std::ofstream(tmp) << address << "\n"; }
    std::rename(tmp.c_str(), config.address_file.c_str());
  }

  std::unique_ptr<ClusterFormation> formation;
  if (config.world_size > 1) {
    formation = std::make_unique<ClusterFormation>(config, address, table, *shard);
    formation->Start();
  }

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    SHERD_LOG(Info, "signal %d: shutting down", sig);
    server->GetHealthCheckService()->SetServingStatus(false);
    // A save in flight finishes first: its reports need the peer service.
    if (!shard->WaitForCheckpoint(absl::Minutes(5))) {
      SHERD_LOG(Warning, "abandoning a checkpoint save still in flight");
    }
    if (formation) formation->Stop();
    table->Close();  // wakes peers blocked in Join or KvGet on this rank
    int left = inflight.Drain(absl::Now() + kShutdownGrace);
    if (left > 0) SHERD_LOG(Warning, "cancelling %d calls still in flight", left);
    server->Shutdown(std::chrono::system_clock::now());
  });
  server->Wait();
  waiter.join();
  health->store(nullptr);
  SHERD_LOG(Debug, "serving stopped");
  server.reset();
  SHERD_LOG(Debug, "server destroyed");
  shard.reset();  // unlinks the shared memory
  SHERD_LOG(Info, "stopped");
  return absl::OkStatus();
}

}  // namespace sherd
