#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/cuda_mapping.h"
#include "common/grpc_status.h"
#include "common/shm_region.h"
#include "common/status_macros.h"
#include "sherd/v1/admin.grpc.pb.h"
#include "sherd/v1/trainer.grpc.pb.h"

namespace sherd {

struct Client::Impl {
  ClientOptions options;
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Trainer::Stub> stub;
  std::unique_ptr<v1::Admin::Stub> admin;
  bool registered = false;
  Layout layout;
  RegisterInfo info;
  ShmRegion params_shm, grads_shm;
  void* params_ipc = nullptr;  // GPU state: mapped device buffers
  void* grads_ipc = nullptr;
  int cuda_device = 0;
  std::vector<float> params_local, grads_local;  // inline mode
  float* params = nullptr;
  float* grads = nullptr;
  int64_t total = 0;
  int64_t next_step = 1;

  void SetDeadline(grpc::ClientContext& ctx) const {
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.deadline));
  }
  absl::Status RequireRegistered() const {
    if (!registered) return absl::FailedPreconditionError("call Register first");
    return absl::OkStatus();
  }
  absl::Status Push(v1::BufferKind kind, std::span<const float> data, int64_t offset);
  absl::Status Fetch(v1::BufferKind kind, std::span<float> out, int64_t offset);
  absl::StatusOr<StepResult> Step(const StepOptions& o);
  absl::Status MapDeviceBuffers(const v1::RegisterResponse& resp);
  void UnmapDeviceBuffers() {
    client_internal::CloseCudaBuffer(params_ipc, cuda_device);
    client_internal::CloseCudaBuffer(grads_ipc, cuda_device);
    params_ipc = grads_ipc = nullptr;
  }
  ~Impl() { UnmapDeviceBuffers(); }
};

absl::Status Client::Impl::MapDeviceBuffers(const v1::RegisterResponse& resp) {
  cuda_device = resp.params().cuda_device();
  absl::StatusOr<void*> p =
      client_internal::OpenCudaBuffer(resp.params().cuda_ipc_handle(), cuda_device);
  if (!p.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot map the server's GPU buffers on cuda:", cuda_device,
        " (is the server on another host? use use_shared_memory = false): ",
        p.status().message()));
  }
  params_ipc = *p;
  absl::StatusOr<void*> g =
      client_internal::OpenCudaBuffer(resp.grads().cuda_ipc_handle(), cuda_device);
  if (!g.ok()) {
    UnmapDeviceBuffers();
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot map the server's GPU grads buffer: ", g.status().message()));
  }
  grads_ipc = *g;
  params = static_cast<float*>(params_ipc);
  grads = static_cast<float*>(grads_ipc);
  info.shared_memory = true;
  info.device_buffers = true;
  return absl::OkStatus();
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const std::string& address, ClientOptions options) {
  if (address.empty()) return absl::InvalidArgumentError("empty server address");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->address = address;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  impl->channel = grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args);
  if (!impl->channel->WaitForConnected(
          absl::ToChronoTime(absl::Now() + options.deadline))) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the shard server at ", address, " within ",
        absl::FormatDuration(options.deadline)));
  }
  impl->stub = v1::Trainer::NewStub(impl->channel);
  impl->admin = v1::Admin::NewStub(impl->channel);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

absl::StatusOr<RegisterInfo> Client::Register(const ModelDef& model) {
  Impl& d = *impl_;
  v1::RegisterRequest req;
  req.set_model_name(model.name);
  for (const GroupDef& g : model.groups) {
    v1::ParamGroup* pg = req.add_groups();
    pg->set_name(g.name);
    pg->set_lr_scale(g.lr_scale);
    pg->set_beta1(g.beta1);
    pg->set_beta2(g.beta2);
    pg->set_eps(g.eps);
    pg->set_weight_decay(g.weight_decay);
    pg->set_has_weight_decay(true);
  }
  std::vector<TensorDesc> descs;
  for (const TensorDef& t : model.tensors) {
    v1::TensorSpec* ts = req.add_tensors();
    ts->set_name(t.name);
    for (int64_t s : t.shape) ts->add_shape(s);
    ts->set_dtype(v1::DTYPE_FLOAT32);
    ts->set_param_group(t.group);
    descs.push_back({t.name, t.shape, DType::kFloat32, 0});
  }
  v1::RegisterResponse resp;
  grpc::ClientContext ctx;
  d.SetDeadline(ctx);
  RETURN_IF_ERROR(FromGrpcStatus(d.stub->Register(&ctx, req, &resp)));
  ASSIGN_OR_RETURN(d.layout, Layout::Build(std::move(descs), resp.world_size(),
                                           resp.alignment()));
  d.total = d.layout.total();
  if (d.total != resp.params().elements()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layout mismatch: this client computes ", d.total,
        " elements, the server ", resp.params().elements()));
  }
  d.params_shm.Reset();
  d.grads_shm.Reset();
  d.UnmapDeviceBuffers();
  d.info.shared_memory = false;
  d.info.device_buffers = false;
  d.info.device = resp.device().empty() ? "cpu" : resp.device();
  const bool device_state = !resp.params().cuda_ipc_handle().empty();
  // GPU state has no shm name: a trainer that does not map it (a CPU
  // trainer) falls through to host views and inline transfers.
  if (d.options.use_shared_memory && device_state && d.options.map_device_buffers) {
    RETURN_IF_ERROR(d.MapDeviceBuffers(resp));
  } else if (d.options.use_shared_memory && !resp.params().shm_name().empty()) {
    auto p = ShmRegion::Open(resp.params().shm_name(), resp.params().bytes());
    auto g = ShmRegion::Open(resp.grads().shm_name(), resp.grads().bytes());
    if (p.ok() && g.ok()) {
      d.params_shm = std::move(*p);
      d.grads_shm = std::move(*g);
      d.params = static_cast<float*>(d.params_shm.data());
      d.grads = static_cast<float*>(d.grads_shm.data());
      d.info.shared_memory = true;
    } else {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot map the server's shared memory (is it on another host? use "
          "use_shared_memory = false): ",
          (p.ok() ? g.status() : p.status()).message()));
    }
  }
  if (!d.info.shared_memory) {
    d.params_local.assign(d.total, 0.0f);
    d.grads_local.assign(d.total, 0.0f);
    d.params = d.params_local.data();
    d.grads = d.grads_local.data();
  }
  d.info.reattached = resp.reattached();
  d.info.initialized = resp.initialized();
  d.info.next_step = resp.next_step();
  d.info.adam_step = resp.adam_step();
  d.info.rank = resp.rank();
  d.info.world_size = resp.world_size();
  d.next_step = resp.next_step();
  d.registered = true;
  if (!d.info.shared_memory && resp.initialized()) {
    RETURN_IF_ERROR(d.Fetch(v1::BUFFER_PARAMS, params(), 0));
  }
  return d.info;
}

absl::Status Client::InitParams(bool force, int64_t adam_step) {
  Impl& d = *impl_;
  RETURN_IF_ERROR(d.RequireRegistered());
  if (!d.info.shared_memory) {
    RETURN_IF_ERROR(d.Push(v1::BUFFER_PARAMS, params(), 0));
  }
  v1::InitParamsRequest req;
  req.set_force(force);
  req.set_adam_step(adam_step);
  v1::InitParamsResponse resp;
  grpc::ClientContext ctx;
  d.SetDeadline(ctx);
  RETURN_IF_ERROR(FromGrpcStatus(d.stub->InitParams(&ctx, req, &resp)));
  d.next_step = resp.next_step();
  return absl::OkStatus();
}

absl::StatusOr<StepResult> Client::Impl::Step(const StepOptions& o) {
  RETURN_IF_ERROR(RequireRegistered());
  if (!info.shared_memory) {
    RETURN_IF_ERROR(Push(v1::BUFFER_GRADS, {grads, static_cast<size_t>(total)}, 0));
  }
  if (info.device_buffers) {
    // The server must not read G before the trainer's kernels wrote it.
    RETURN_IF_ERROR(client_internal::SynchronizeCuda(o.cuda_stream, cuda_device));
  }
  v1::StepRequest req;
  req.set_step(next_step);
  req.set_lr(o.lr);
  req.set_grad_scale(o.grad_scale);
  req.set_max_grad_norm(o.max_grad_norm);
  for (const GroupStepOptions& g : o.groups) {
    v1::GroupStepParams* p = req.add_groups();
    p->set_name(g.name);
    p->set_lr(g.lr);
    p->set_beta1(g.beta1);
    p->set_beta2(g.beta2);
    p->set_eps(g.eps);
    p->set_weight_decay(g.weight_decay);
  }
  v1::StepResponse resp;
  absl::Duration backoff = options.retry_backoff;
  int attempt = 0;
  for (;; ++attempt) {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    absl::Status s = FromGrpcStatus(stub->Step(&ctx, req, &resp));
    if (s.ok()) break;
    if (!absl::IsUnavailable(s) || attempt >= options.max_retries) {
      return absl::Status(s.code(), absl::StrCat("step ", next_step, ": ",
                                                 s.message()));
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, options.max_retry_backoff);
  }
  ++next_step;
  if (!info.shared_memory && resp.applied()) {
    RETURN_IF_ERROR(Fetch(v1::BUFFER_PARAMS, {params, static_cast<size_t>(total)}, 0));
  }
  StepResult r;
  r.step = resp.step();
  r.applied = resp.applied();
  r.skip_reason = resp.skip_reason();
  r.grad_norm = resp.grad_norm();
  r.clip_coef = resp.clip_coef();
  r.replayed = resp.replayed();
  r.retries = attempt;
  r.server_ms = resp.timings().total_ms();
  r.reduce_scatter_ms = resp.timings().reduce_scatter_ms();
  r.norm_ms = resp.timings().norm_ms();
  r.optimizer_ms = resp.timings().optimizer_ms();
  r.all_gather_ms = resp.timings().all_gather_ms();
  r.agreement_ms = resp.timings().agreement_ms();
  return r;
}

absl::StatusOr<StepResult> Client::Step(const StepOptions& options) {
  return impl_->Step(options);
}

std::future<absl::StatusOr<StepResult>> Client::StepAsync(
    const StepOptions& options) {
  return std::async(std::launch::async,
                    [this, options] { return impl_->Step(options); });
}

absl::StatusOr<int64_t> Client::Checkpoint() {
  Impl& d = *impl_;
  RETURN_IF_ERROR(d.RequireRegistered());
  grpc::ClientContext ctx;
  d.SetDeadline(ctx);
  v1::CheckpointResponse resp;
  RETURN_IF_ERROR(FromGrpcStatus(d.stub->Checkpoint(&ctx, v1::CheckpointRequest(), &resp)));
  return resp.step();
}

absl::StatusOr<CheckpointProgress> Client::CheckpointStatus() {
  Impl& d = *impl_;
  grpc::ClientContext ctx;
  d.SetDeadline(ctx);
  v1::CheckpointStatusResponse resp;
  RETURN_IF_ERROR(FromGrpcStatus(
      d.admin->CheckpointStatus(&ctx, v1::CheckpointStatusRequest(), &resp)));
  return CheckpointProgress{.enabled = resp.enabled(),
                            .in_flight = resp.in_flight(),
                            .step = resp.step(),
                            .last_committed_step = resp.last_committed_step(),
                            .last_committed = resp.last_committed(),
                            .last_error = resp.last_error(),
                            .restored_from = resp.restored_from()};
}

absl::StatusOr<ServerHealth> Client::Health() {
  Impl& d = *impl_;
  grpc::ClientContext ctx;
  d.SetDeadline(ctx);
  v1::StatusResponse resp;
  RETURN_IF_ERROR(FromGrpcStatus(d.admin->Status(&ctx, v1::StatusRequest(), &resp)));
  return ServerHealth{.health = resp.health(),
                      .reason = resp.unhealthy_reason(),
                      .epoch = resp.epoch(),
                      .last_step = resp.last_step(),
                      .restored_from = resp.restored_from()};
}

absl::Status Client::Impl::Push(v1::BufferKind kind, std::span<const float> data,
                                int64_t offset) {
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  v1::PushResponse resp;
  auto writer = stub->Push(&ctx, &resp);
  v1::DataChunk chunk;
  chunk.set_buffer(kind);
  const int64_t n = static_cast<int64_t>(data.size());
  for (int64_t i = 0; i < n; i += options.chunk_elements) {
    int64_t len = std::min(options.chunk_elements, n - i);
    chunk.set_offset(offset + i);
    chunk.set_data(reinterpret_cast<const char*>(data.data() + i),
                   len * sizeof(float));
    if (!writer->Write(chunk)) break;  // the server ended the stream early
  }
  writer->WritesDone();
  return FromGrpcStatus(writer->Finish());
}

absl::Status Client::Impl::Fetch(v1::BufferKind kind, std::span<float> out,
                                 int64_t offset) {
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  v1::FetchRequest req;
  req.set_buffer(kind);
  req.set_offset(offset);
  req.set_count(static_cast<int64_t>(out.size()));
  req.set_chunk_elements(options.chunk_elements);
  if (out.empty()) return absl::OkStatus();
  auto reader = stub->Fetch(&ctx, req);
  v1::DataChunk chunk;
  int64_t received = 0;
  while (reader->Read(&chunk)) {
    const int64_t rel = chunk.offset() - offset;
    const int64_t n = static_cast<int64_t>(chunk.data().size() / sizeof(float));
    if (rel < 0 || rel + n > static_cast<int64_t>(out.size())) {
      ctx.TryCancel();
      return absl::DataLossError("server sent a chunk outside the requested range");
    }
    std::memcpy(out.data() + rel, chunk.data().data(), n * sizeof(float));
    received += n;
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (received != static_cast<int64_t>(out.size())) {
    return absl::DataLossError(absl::StrCat("fetched ", received, " of ",
                                            out.size(), " elements"));
  }
  return absl::OkStatus();
}

absl::Status Client::PushGrads(std::span<const float> g, int64_t offset) {
  return impl_->Push(v1::BUFFER_GRADS, g, offset);
}
absl::Status Client::PushParams(std::span<const float> p, int64_t offset) {
  return impl_->Push(v1::BUFFER_PARAMS, p, offset);
}
absl::Status Client::FetchParams(std::span<float> out, int64_t offset) {
  return impl_->Fetch(v1::BUFFER_PARAMS, out, offset);
}
absl::Status Client::FetchGrads(std::span<float> out, int64_t offset) {
  return impl_->Fetch(v1::BUFFER_GRADS, out, offset);
}

static v1::BufferKind StateKind(Client::State s) {
  switch (s) {
    case Client::State::kMaster: return v1::BUFFER_MASTER;
    case Client::State::kExpAvg: return v1::BUFFER_EXP_AVG;
    case Client::State::kExpAvgSq: return v1::BUFFER_EXP_AVG_SQ;
  }
  return v1::BUFFER_UNSPECIFIED;
}
absl::Status Client::FetchState(State which, std::span<float> out, int64_t offset) {
  return impl_->Fetch(StateKind(which), out, offset);
}
absl::Status Client::PushState(State which, std::span<const float> data,
                               int64_t offset) {
  return impl_->Push(StateKind(which), data, offset);
}

const Layout& Client::layout() const { return impl_->layout; }
std::span<float> Client::params() {
  return {impl_->params, static_cast<size_t>(impl_->total)};
}
std::span<float> Client::grads() {
  return {impl_->grads, static_cast<size_t>(impl_->total)};
}

static std::span<float> View(const Layout& l, float* base, const std::string& n) {
  std::optional<int> i = l.Find(n);
  if (!i || base == nullptr) return {};
  const TensorPlacement& t = l.tensors()[*i];
  return {base + t.offset, static_cast<size_t>(t.numel)};
}
std::span<float> Client::Param(const std::string& name) {
  return View(impl_->layout, impl_->params, name);
}
std::span<float> Client::Grad(const std::string& name) {
  return View(impl_->layout, impl_->grads, name);
}
int64_t Client::next_step() const { return impl_->next_step; }
bool Client::shared_memory() const { return impl_->info.shared_memory; }

}  // namespace sherd
