#include "server/shard_server.h"

#include <cstring>
#include <stdexcept>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/checkpoint/directory.h"
#include "server/state/shm_names.h"
#include "server/step/step_pipeline.h"

namespace sherd {
namespace {

constexpr size_t kRecentSteps = 16;

absl::StatusOr<DType> DTypeFromProto(v1::DType t, const std::string& tensor) {
  switch (t) {
    case v1::DTYPE_FLOAT32:
      return DType::kFloat32;
    case v1::DTYPE_BFLOAT16:
    case v1::DTYPE_FLOAT16:
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", tensor, "': only float32 params are supported so far"));
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", tensor, "' has unknown dtype ", static_cast<int>(t)));
  }
}

absl::StatusOr<ParamGroupConfig> GroupFromProto(const v1::ParamGroup& g) {
  ParamGroupConfig c;
  c.name = g.name();
  if (g.lr_scale() != 0) c.lr_scale = g.lr_scale();
  if (g.beta1() != 0) c.beta1 = g.beta1();
  if (g.beta2() != 0) c.beta2 = g.beta2();
  if (g.eps() != 0) c.eps = g.eps();
  if (g.has_weight_decay()) c.weight_decay = g.weight_decay();
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("param group '", c.name, "': ", what));
  };
  if (!(c.lr_scale > 0) || !std::isfinite(c.lr_scale)) return bad("lr_scale must be > 0");
  if (!(c.beta1 >= 0 && c.beta1 < 1)) return bad("beta1 must be in [0, 1)");
  if (!(c.beta2 >= 0 && c.beta2 < 1)) return bad("beta2 must be in [0, 1)");
  if (!(c.eps > 0) || !std::isfinite(c.eps)) return bad("eps must be > 0");
  if (!(c.weight_decay >= 0) || !std::isfinite(c.weight_decay)) {
    return bad("weight_decay must be >= 0");
  }
  return c;
}

absl::StatusOr<ModelSpec> SpecFromProto(const v1::RegisterRequest& req) {
  ModelSpec spec;
  spec.name = req.model_name();
  if (spec.name.empty()) return absl::InvalidArgumentError("model_name is empty");
  absl::flat_hash_map<std::string, int> group_index;
  spec.groups.push_back(ParamGroupConfig{.name = "default"});
  group_index["default"] = 0;
  group_index[""] = 0;
  bool seen_default = false;
  for (const v1::ParamGroup& g : req.groups()) {
    ASSIGN_OR_RETURN(ParamGroupConfig c, GroupFromProto(g));
    if (c.name.empty()) return absl::InvalidArgumentError("param group without a name");
    if (c.name == "default") {
      if (seen_default) {
        return absl::InvalidArgumentError("duplicate param group 'default'");
      }
      seen_default = true;
      spec.groups[0] = c;
      continue;
    }
    if (!group_index.emplace(c.name, spec.groups.size()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate param group '", c.name, "'"));
    }
    spec.groups.push_back(c);
  }
  for (const v1::TensorSpec& t : req.tensors()) {
    TensorDesc d;
    d.name = t.name();
    d.shape.assign(t.shape().begin(), t.shape().end());
    ASSIGN_OR_RETURN(d.dtype, DTypeFromProto(t.dtype(), t.name()));
    auto it = group_index.find(t.param_group());
    if (it == group_index.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.name(), "' names unknown param group '",
          t.param_group(), "'"));
    }
    d.group = it->second;
    spec.tensors.push_back(std::move(d));
  }
  return spec;
}

// A step's per-group hyperparameters, by group index. Values are checked
// by ValidateStepArgs; names here.
absl::StatusOr<std::vector<std::optional<AdamWHyper>>> GroupOverridesFromProto(
    const v1::StepRequest& req, const ModelSpec& spec) {
  std::vector<std::optional<AdamWHyper>> out;
  if (req.groups().empty()) return out;
  out.resize(spec.groups.size());
  for (const v1::GroupStepParams& g : req.groups()) {
    const std::string name = g.name().empty() ? "default" : g.name();
    size_t i = 0;
    while (i < spec.groups.size() && spec.groups[i].name != name) ++i;
    if (i == spec.groups.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "step names param group '", name, "', which the model does not have"));
    }
    if (out[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("step names param group '", name, "' twice"));
    }
    out[i] = AdamWHyper{.lr = g.lr(), .beta1 = g.beta1(), .beta2 = g.beta2(),
                        .eps = g.eps(), .weight_decay = g.weight_decay()};
  }
  return out;
}

}  // namespace

ShardServer::ShardServer(ServerOptions options,
                         std::unique_ptr<Collective> collective)
    : options_(std::move(options)),
      started_(absl::Now()),
      collective_(std::move(collective)),
      runner_(options_.step_runner ? options_.step_runner
                                   : CreateCpuStepRunner(options_.optimizer_threads)) {
  if (!options_.checkpoint.root.empty()) {
    checkpointer_ = std::make_unique<Checkpointer>(options_.checkpoint, options_.rank,
                                                   options_.world_size);
  }
}

absl::Status ShardServer::PrepareCheckpoints() {
  return checkpointer_ ? checkpointer_->Prepare() : absl::OkStatus();
}

absl::Status ShardServer::StartCheckpointLocked(const ModelState& m, int64_t step,
                                                const std::string& save_id) {
  if (checkpointer_ == nullptr) {
    return absl::FailedPreconditionError(
        "checkpoints are off: start the server with --checkpoint-dir");
  }
  std::map<std::string, int64_t> counters;
  {
    absl::MutexLock l(&stats_mu_);
    counters = {{"adam_step", adam_step_},
                {"steps_applied", steps_applied_},
                {"steps_skipped", steps_skipped_}};
  }
  return checkpointer_->Start(m, step, std::move(counters), save_id);
}

absl::StatusOr<v1::CheckpointResponse> ShardServer::Checkpoint(const std::string& save_id) {
  absl::MutexLock step_lock(&step_mu_);
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  int64_t step;
  {
    absl::MutexLock l(&stats_mu_);
    if (!initialized_) {
      return absl::FailedPreconditionError("nothing to save: params are not initialized");
    }
    step = next_step_ - 1;
  }
  RETURN_IF_ERROR(StartCheckpointLocked(
      *m, step, save_id.empty() ? absl::StrCat("t", step, "-", SaveIdSuffix()) : save_id));
  v1::CheckpointResponse r;
  r.set_step(step);
  return r;
}

bool ShardServer::WaitForCheckpoint(absl::Duration timeout) {
  return checkpointer_ == nullptr || checkpointer_->WaitIdle(timeout);
}

absl::StatusOr<v1::CheckpointRestoreResponse> ShardServer::RestoreCheckpoint(
    const v1::CheckpointRestoreRequest& req) {
  absl::MutexLock step_lock(&step_mu_);
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  if (checkpointer_ == nullptr) {
    return absl::FailedPreconditionError(
        "checkpoints are off: start the server with --checkpoint-dir");
  }
  const std::string& txn = req.txn();
  if (!IsIdToken(txn)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "restore txn '", txn, "' must be up to 64 characters of letters, digits, '_' and '-'"));
  }
  const bool ours = restore_.has_value() && restore_->id == txn;
  v1::CheckpointRestoreResponse resp;
  auto answer = [&]() {
    if (restore_) {
      resp.set_step(restore_->state.step);
      resp.set_name(restore_->state.name);
    }
    absl::MutexLock l(&stats_mu_);
    resp.set_next_step(next_step_);
    return resp;
  };
  switch (req.phase()) {
    case v1::CheckpointRestoreRequest::PREPARE: {
      if (checkpointer_->status().in_flight) {
        return absl::FailedPreconditionError("a checkpoint save is in flight");
      }
      if (restore_) {
        SHERD_LOG(Warning, "restore %s: replaced by restore %s (%s)", restore_->id, txn,
                  restore_->committed ? "committed, not finished" : "prepared");
      }
      restore_.reset();
      ASSIGN_OR_RETURN(std::optional<RestoredState> loaded,
                       checkpointer_->Load(*m, req.name().empty() ? "newest" : req.name()));
      if (!loaded) return absl::NotFoundError("no checkpoint to restore");
      restore_ = RestoreTxn{.id = txn, .state = *std::move(loaded)};
      return answer();
    }
    case v1::CheckpointRestoreRequest::COMMIT: {
      if (!ours) {
        return absl::FailedPreconditionError(absl::StrCat(
            "nothing prepared to commit for restore '", txn, "'",
            restore_ ? absl::StrCat(" (restore '", restore_->id, "' is prepared here)") : ""));
      }
      if (restore_->committed) return answer();  // a retry
      RestoreTxn& t = *restore_;
      if (absl::Status f = Failpoint("restore-commit", options_.rank); !f.ok()) return f;
      {
        absl::MutexLock l(&stats_mu_);
        t.initialized = initialized_;
        t.next_step = next_step_;
        t.adam_step = adam_step_;
        t.steps_applied = steps_applied_;
        t.steps_skipped = steps_skipped_;
        t.restored_from = restored_from_;
        t.recent = recent_;
      }
      t.rewound_to = rewound_to_;
      if (absl::Status s = Checkpointer::Exchange(t.state, *m); !s.ok()) {
        MarkUnhealthy(absl::StrCat("restore of ", t.state.name, ": ", s.message()));
        return s;
      }
      t.committed = true;
      AdoptCounters(t.state);
      SHERD_LOG(Info, "restore %s: committed %s, next step %d", txn, t.state.name,
                t.state.step + 1);
      return answer();
    }
    case v1::CheckpointRestoreRequest::ABORT: {
      if (!ours) {  // another restore's, or none: nothing to undo
        absl::MutexLock l(&stats_mu_);
        resp.set_next_step(next_step_);
        return resp;
      }
      if (restore_->committed) {
        RestoreTxn& t = *restore_;
        if (absl::Status s = Checkpointer::Exchange(t.state, *m); !s.ok()) {
          MarkUnhealthy(absl::StrCat("rollback of restore ", txn, ": ", s.message()));
          return s;
        }
        {
          absl::MutexLock l(&stats_mu_);
          initialized_ = t.initialized;
          next_step_ = t.next_step;
          adam_step_ = t.adam_step;
          steps_applied_ = t.steps_applied;
          steps_skipped_ = t.steps_skipped;
          restored_from_ = t.restored_from;
          recent_ = t.recent;
        }
        rewound_to_ = t.rewound_to;
        resp.set_rolled_back(true);
        SHERD_LOG(Warning, "restore %s: rolled back; next step %d again", txn, t.next_step);
      }
      answer();
      restore_.reset();
      return resp;
    }
    case v1::CheckpointRestoreRequest::FINISH:
      if (!ours || !restore_->committed) {
        return absl::FailedPreconditionError(
            absl::StrCat("restore '", txn, "' is not committed on this rank"));
      }
      answer();
      restore_.reset();
      return resp;
    default:
      return absl::InvalidArgumentError("unknown restore phase");
  }
}

void ShardServer::AdoptCounters(const RestoredState& r) {
  auto counter = [&](const std::string& key) -> int64_t {
    auto it = r.counters.find(key);
    return it == r.counters.end() ? 0 : it->second;
  };
  rewound_to_ = r.step;
  absl::MutexLock l(&stats_mu_);
  initialized_ = true;
  next_step_ = r.step + 1;
  adam_step_ = counter("adam_step");
  steps_applied_ = counter("steps_applied");
  steps_skipped_ = counter("steps_skipped");
  restored_from_ = r.name;
  recent_.clear();  // responses of steps that no longer happened
}

void ShardServer::LeaveRestoreBehind(const ModelState& m) {
  if (restore_ && restore_->committed) restore_.reset();  // finished by this step
  if (rewound_to_ < 0) return;
  const int64_t from = rewound_to_;
  rewound_to_ = -1;
  if (checkpointer_ == nullptr || options_.rank != 0) return;
  absl::StatusOr<std::vector<std::string>> moved =
      SetAsideNewerThan(checkpointer_->options().root, from, m.spec());
  if (!moved.ok()) {
    SHERD_LOG(Warning, "checkpoints newer than the restored step %d: %s", from,
              moved.status().message());
    return;
  }
  for (const std::string& name : *moved) {
    SHERD_LOG(Warning, "training goes on from step %d: set aside %s (a checkpoint of the "
              "timeline rewound away from)", from, name);
  }
}

v1::CheckpointStatusResponse ShardServer::CheckpointStatus() const {
  v1::CheckpointStatusResponse r;
  r.set_enabled(checkpointer_ != nullptr);
  {
    absl::MutexLock l(&stats_mu_);
    r.set_restored_from(restored_from_);
  }
  if (checkpointer_ == nullptr) return r;
  Checkpointer::Status s = checkpointer_->status();
  r.set_root(checkpointer_->options().root);
  r.set_in_flight(s.in_flight);
  r.set_step(s.step);
  r.set_bytes_written(s.bytes_written);
  r.set_bytes_total(s.bytes_total);
  r.set_last_committed_step(s.last_committed_step);
  r.set_last_committed(s.last_committed);
  r.set_last_error(s.last_error);
  return r;
}

ShardServer::~ShardServer() = default;

void ShardServer::AttachCollective(std::unique_ptr<Collective> collective,
                                   std::shared_ptr<KvStore> store, int64_t epoch) {
  absl::MutexLock l(&step_mu_);
  InstallLocked(std::move(collective), std::move(store), epoch);
}

void ShardServer::InstallLocked(std::unique_ptr<Collective> collective,
                                std::shared_ptr<KvStore> store, int64_t epoch) {
  collective_ = std::move(collective);
  if (collective_ != nullptr) {
    absl::MutexLock l(&stats_mu_);
    collectives_ = collective_->Describe();
  }
  epoch_ = epoch;
  epoch_seen_.store(epoch, std::memory_order_relaxed);
  last_round_ = 0;
  if (store && epoch > 0) {
    store = std::make_shared<PrefixedKvStore>(std::move(store), absl::StrCat("e", epoch, "/"));
  }
  if (store && options_.world_size > 1) {
    agreement_ = std::make_unique<StepAgreement>(store, options_.rank, options_.world_size,
                                                 options_.agreement_timeout);
  }
  if (checkpointer_ && store) checkpointer_->SetReportStore(std::move(store));
}

std::string ShardServer::SaveIdSuffix() const {
  return epoch_ > 0 ? absl::StrCat("e", epoch_, "-", last_round_) : absl::StrCat(last_round_);
}

absl::Status ShardServer::Rejoin(std::unique_ptr<Collective> collective,
                                 std::shared_ptr<KvStore> store, int64_t epoch) {
  {
    absl::MutexLock l(&step_mu_);
    InstallLocked(std::move(collective), std::move(store), epoch);
    if (restore_) {
      SHERD_LOG(Warning, "restore %s: dropped, the cluster was rebuilt", restore_->id);
      restore_.reset();
    }
    std::shared_ptr<ModelState> m = model();
    if (m != nullptr) {
      // Every rank rewinds to the newest complete checkpoint, chosen once
      // for the epoch; without one, training starts over.
      std::optional<RestoredState> loaded;
      if (checkpointer_ != nullptr) {
        absl::StatusOr<std::optional<RestoredState>> r = checkpointer_->LoadAtRegister(
            *m, Fingerprint(model_description_), "newest");
        if (!r.ok()) {
          const absl::Status s(r.status().code(),
                               absl::StrCat("rewind after the cluster was rebuilt (epoch ", epoch,
                                            "): ", r.status().message()));
          MarkUnhealthy(std::string(s.message()));
          return s;
        }
        loaded = *std::move(r);
      }
      if (loaded) {
        if (absl::Status s = Checkpointer::Apply(*loaded, *m); !s.ok()) {
          MarkUnhealthy(absl::StrCat("rewind to ", loaded->name, ": ", s.message()));
          return s;
        }
        AdoptCounters(*loaded);
        SHERD_LOG(Warning, "cluster rebuilt (membership epoch %d): rewound to %s, next step %d",
                  epoch, loaded->name, loaded->step + 1);
      } else {
        absl::MutexLock s(&stats_mu_);
        initialized_ = false;
        next_step_ = 1;
        adam_step_ = steps_applied_ = steps_skipped_ = 0;
        restored_from_.clear();
        recent_.clear();
        SHERD_LOG(Warning, "cluster rebuilt (membership epoch %d) with no checkpoint to rewind "
                  "to: training starts over (trainers call InitParams again)", epoch);
      }
    }
  }
  if (!healthy_.exchange(true) && options_.on_health_change) options_.on_health_change(true);
  absl::MutexLock l(&stats_mu_);
  unhealthy_reason_.clear();
  return absl::OkStatus();
}

void ShardServer::MarkUnhealthy(std::string reason) {
  SHERD_LOG(Error, "unhealthy: %s", reason);
  if (healthy_.exchange(false) && options_.on_health_change) {
    options_.on_health_change(false);
  }
  absl::MutexLock l(&stats_mu_);
  unhealthy_reason_ = std::move(reason);
}

std::shared_ptr<ModelState> ShardServer::model() const {
  absl::MutexLock l(&model_mu_);
  return model_;
}

absl::StatusOr<std::shared_ptr<ModelState>> ShardServer::RequireModel() const {
  std::shared_ptr<ModelState> m = model();
  if (m == nullptr) {
    return absl::FailedPreconditionError("no model is registered on this server");
  }
  return m;
}

absl::StatusOr<v1::RegisterResponse> ShardServer::Register(
    const v1::RegisterRequest& req) {
  ASSIGN_OR_RETURN(ModelSpec spec, SpecFromProto(req));
  ASSIGN_OR_RETURN(Layout layout,
                   Layout::Build(spec.tensors, options_.world_size));
  // With more than one rank, what a new model restores is the cluster's
  // choice, made through rank 0's store: wait for the cluster to form
  // (outside the step lock, which AttachCollective takes).
  if (checkpointer_ != nullptr && model() == nullptr &&
      !checkpointer_->WaitForStore(options_.agreement_timeout)) {
    return absl::UnavailableError(absl::StrCat(
        "the cluster has not formed within ", absl::FormatDuration(options_.agreement_timeout),
        "; with checkpoints on, Register waits for it, because all ranks restore one "
        "checkpoint chosen for the whole cluster (sherdctl status shows which ranks joined)"));
  }
  absl::MutexLock step_lock(&step_mu_);
  std::shared_ptr<ModelState> m = model();
  bool reattached = false;
  if (m != nullptr) {
    if (m->spec().name != spec.name || !m->layout().SameModel(layout) ||
        m->spec().groups != spec.groups) {
      return absl::FailedPreconditionError(absl::StrCat(
          "a different model ('", m->spec().name,
          "') is already registered on this server; restart the server to "
          "train another model"));
    }
    reattached = true;
  } else {
    const int64_t need =
        ModelState::SharedBytes(layout) + ModelState::PrivateBytes(layout);
    // The limit is on host memory; device state is bounded by the device
    // (an allocation that does not fit is RESOURCE_EXHAUSTED, naming it).
    if (options_.memory_limit_bytes > 0 && need > options_.memory_limit_bytes &&
        options_.state_memory == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "model '", spec.name, "' needs ", need, " bytes on this server (",
          layout.parameters(), " parameters), over the memory limit of ",
          options_.memory_limit_bytes, " bytes"));
    }
    std::string prefix = options_.shm_prefix.empty()
                             ? DefaultShmPrefix(options_.rank)
                             : options_.shm_prefix;
    absl::StatusOr<std::unique_ptr<ModelState>> made = ModelState::Create(
        std::move(spec), std::move(layout), options_.rank, prefix, options_.state_memory);
    if (absl::IsAlreadyExists(made.status()) && !options_.shm_prefix.empty()) {
      // Default names are swept at start; a chosen prefix is the operator's.
      return absl::AlreadyExistsError(absl::StrCat(
          made.status().message(), ": another server runs with --shm-prefix ", prefix,
          ", or one that was killed left its buffers; if none runs, remove /dev/shm",
          prefix, ".params and .grads"));
    }
    ASSIGN_OR_RETURN(m, std::move(made));
    if (checkpointer_ != nullptr) {
      // A failed restore registers nothing: the state is never a mix.
      ASSIGN_OR_RETURN(std::optional<RestoredState> restored,
                       checkpointer_->LoadAtRegister(
                           *m, Fingerprint(DescribeModel(m->spec())),
                           // After a rank was replaced, the cluster resumes
                           // from its newest checkpoint, whatever --restore
                           // said at the first start.
                           epoch_ > 0 ? "newest" : options_.checkpoint.restore));
      if (restored) {
        RETURN_IF_ERROR(Checkpointer::Apply(*restored, *m));
        AdoptCounters(*restored);
      }
    }
    model_description_ = DescribeModel(m->spec());
    absl::MutexLock l(&model_mu_);
    model_ = m;
    SHERD_LOG(Info, "registered model '%s': %d tensors, %d parameters, %d bytes on %s",
              m->spec().name, m->layout().tensors().size(),
              m->layout().parameters(), need, m->device_name());
  }
  v1::RegisterResponse resp;
  resp.set_reattached(reattached);
  {
    absl::MutexLock l(&stats_mu_);
    resp.set_initialized(initialized_);
    resp.set_next_step(next_step_);
    resp.set_adam_step(adam_step_);
  }
  resp.set_rank(options_.rank);
  resp.set_world_size(options_.world_size);
  resp.set_alignment(m->layout().alignment());
  resp.set_device(m->device_name());
  auto fill = [&](const ShmRegion& r, const std::string& ipc_handle,
                  v1::SharedBuffer* b) {
    b->set_elements(m->layout().total());
    if (m->on_device()) {
      b->set_cuda_ipc_handle(ipc_handle);
      b->set_cuda_device(m->memory()->device());
      b->set_bytes(m->layout().total() * static_cast<int64_t>(sizeof(float)));
    } else {
      b->set_shm_name(r.name());
      b->set_bytes(static_cast<int64_t>(r.size()));
    }
  };
  fill(m->params_region(), m->params_handle(), resp.mutable_params());
  fill(m->grads_region(), m->grads_handle(), resp.mutable_grads());
  if (!Failpoint("library-thread-throws", options_.rank).ok()) {
    // Test-only: what Gloo's I/O thread does when a check fails on it.
    std::thread([] { throw std::runtime_error("failpoint library-thread-throws"); }).detach();
  }
  return resp;
}

absl::StatusOr<v1::InitParamsResponse> ShardServer::InitParams(
    const v1::InitParamsRequest& req) {
  absl::MutexLock step_lock(&step_mu_);
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  absl::MutexLock l(&stats_mu_);
  if (initialized_ && !req.force()) {
    return absl::FailedPreconditionError(
        "params are already initialized; pass force to reset the optimizer "
        "state");
  }
  if (req.adam_step() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("adam_step must be >= 0, got ", req.adam_step()));
  }
  RETURN_IF_ERROR(m->ResetOptimizerState());
  initialized_ = true;
  adam_step_ = req.adam_step();
  v1::InitParamsResponse resp;
  resp.set_next_step(next_step_);
  resp.set_adam_step(adam_step_);
  return resp;
}

absl::StatusOr<StepArgs> ShardServer::PrepareStep(const v1::StepRequest& req,
                                                 const ModelState& m) {
  if (!healthy_.load()) {
    absl::MutexLock l(&stats_mu_);
    // Until a lost rank is replaced (every rank then rewinds and serves
    // again) or the cluster restarts: not UNAVAILABLE, which clients retry
    // as if the cluster were still forming.
    return absl::FailedPreconditionError(absl::StrCat(
        "shard server ", options_.rank, " is out of service (", unhealthy_reason_,
        "); restart the lost rank (same --rank) or the cluster"));
  }
  StepArgs args;
  {
    absl::MutexLock l(&stats_mu_);
    if (!initialized_) {
      return absl::FailedPreconditionError(
          "params are not initialized: call InitParams after writing the "
          "initial values");
    }
    if (req.step() != next_step_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step ", req.step(), " is out of order: expected step ", next_step_,
          req.step() < next_step_ ? " (it is too old to replay)" : ""));
    }
    args.adam_step = adam_step_ + 1;
  }
  args.lr = req.lr();
  args.grad_scale = req.grad_scale() == 0 ? 1.0f : req.grad_scale();
  args.max_grad_norm = req.max_grad_norm();
  ASSIGN_OR_RETURN(args.group_overrides, GroupOverridesFromProto(req, m.spec()));
  RETURN_IF_ERROR(ValidateStepArgs(args));
  return args;
}

absl::StatusOr<v1::StepResponse> ShardServer::Step(const v1::StepRequest& req) {
  absl::MutexLock step_lock(&step_mu_);
  std::shared_ptr<ModelState> m = model();
  {
    // A retry of a step this rank has taken answers what it answered then,
    // without the other ranks (they may not retry it).
    absl::MutexLock l(&stats_mu_);
    for (const v1::StepResponse& r : recent_) {
      if (r.step() == req.step() && req.step() != next_step_) {
        v1::StepResponse replay = r;
        replay.set_replayed(true);
        return replay;
      }
    }
  }
  absl::StatusOr<StepArgs> args =
      m == nullptr ? RequireModel().status() : PrepareStep(req, *m);
  if (!args.ok() && agreement_ == nullptr) return args.status();
  if (collective_ == nullptr) {
    return absl::UnavailableError(
        "the cluster is still forming: not every shard server has joined");
  }
  double agreement_ms = 0;
  if (agreement_ != nullptr) {
    // Every rank, refusing or not, takes part, so that the others learn the
    // reason at once instead of waiting for it.
    v1::StepHeader h;
    h.set_step(req.step());
    {
      absl::MutexLock l(&stats_mu_);
      h.set_next_step(next_step_);
      h.set_adam_step(adam_step_);
    }
    h.set_lr(req.lr());
    h.set_grad_scale(req.grad_scale() == 0 ? 1.0f : req.grad_scale());
    h.set_max_grad_norm(req.max_grad_norm());
    *h.mutable_groups() = req.groups();
    if (!args.ok()) {
      h.set_refusal(std::string(args.status().message()));
      h.set_refusal_code(static_cast<int>(args.status().code()));
    }
    const absl::Time t0 = absl::Now();
    RETURN_IF_ERROR(agreement_->Agree(std::move(h), m ? model_description_ : ""));
    agreement_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    last_round_ = agreement_->round();
  }
  if (!args.ok()) return args.status();
  LeaveRestoreBehind(*m);
  absl::StatusOr<StepOutcome> out = runner_->Run(*m, *collective_, *args);
  if (!out.ok()) {
    if (absl::IsUnavailable(out.status())) {
      MarkUnhealthy(absl::StrCat("step ", req.step(), ": ", out.status().message()));
      return absl::AbortedError(absl::StrCat(
          "step ", req.step(), " failed in the collective, so no step was applied (master, "
          "moments and this rank's slice of P are as before; other ranks' slices of P may "
          "hold new values until the rewind): ",
          out.status().message(), "; shard server ", options_.rank,
          " is now out of service until the lost rank is restarted (every rank then "
          "rewinds to the newest checkpoint) or the cluster restarts"));
    }
    return out.status();
  }
  v1::StepResponse resp;
  resp.set_step(req.step());
  resp.set_applied(out->applied);
  resp.set_skipped(!out->applied);
  resp.set_skip_reason(out->skip_reason);
  resp.set_grad_norm(out->grad_norm);
  resp.set_clip_coef(out->clip_coef);
  v1::StepTimings* t = resp.mutable_timings();
  t->set_reduce_scatter_ms(out->reduce_scatter_ms);
  t->set_norm_ms(out->norm_ms);
  t->set_optimizer_ms(out->optimizer_ms);
  t->set_all_gather_ms(out->all_gather_ms);
  t->set_total_ms(out->total_ms);
  t->set_agreement_ms(agreement_ms);
  {
    absl::MutexLock l(&stats_mu_);
    ++next_step_;
    if (out->applied) {
      ++adam_step_;
      ++steps_applied_;
    } else {
      ++steps_skipped_;
      SHERD_LOG(Warning, "step %d skipped: %s", req.step(), out->skip_reason);
    }
    recent_.push_back(resp);
    if (recent_.size() > kRecentSteps) recent_.pop_front();
    collectives_ = collective_->Describe();  // the path is chosen at the first step
  }
  const int every = options_.checkpoint.every;
  if (checkpointer_ && every > 0 && req.step() % every == 0) {
    // Every K steps means every K steps: when the previous save is still
    // writing (storage slower than K steps of training), this step waits
    // for it instead of dropping a checkpoint. Every rank decides the same
    // way, so all of them save this step.
    if (Checkpointer::Status prev = checkpointer_->status(); prev.in_flight) {
      const absl::Time t0 = absl::Now();
      // Under the step lock: with peers, never longer than they wait for
      // this rank's next step.
      const absl::Duration bound =
          options_.world_size > 1
              ? std::min(options_.checkpoint.report_timeout, options_.agreement_timeout / 2)
              : options_.checkpoint.report_timeout;
      const bool idle = checkpointer_->WaitIdle(bound);
      const double waited = absl::ToDoubleSeconds(absl::Now() - t0);
      // A wait worth a warning: training visibly paused for storage.
      const bool notable = !idle || waited >= 1.0;
      Log(notable ? LogLevel::kWarning : LogLevel::kDebug,
          "checkpoint at step %d waited %.1f s for the save of step %d%s: "
          "saving takes longer than %d step(s) of training",
          req.step(), waited, prev.step, idle ? "" : " and gave up", every);
    }
    absl::Status s = StartCheckpointLocked(*m, req.step(),
                                           absl::StrCat("k", req.step(), "-", SaveIdSuffix()));
    if (!s.ok()) SHERD_LOG(Warning, "checkpoint at step %d: %s", req.step(), s.message());
  }
  return resp;
}

absl::StatusOr<float*> ShardServer::BufferFor(const ModelState& m,
                                              v1::BufferKind kind) const {
  // The optimizer state covers the owned slice only; returned shifted so
  // that flat-layout offsets index it (callers check the range).
  const int64_t owned_begin = m.owned().begin;
  switch (kind) {
    case v1::BUFFER_PARAMS:
      return m.params();
    case v1::BUFFER_GRADS:
      return m.grads();
    case v1::BUFFER_MASTER:
      return m.master() - owned_begin;
    case v1::BUFFER_EXP_AVG:
      return m.exp_avg() - owned_begin;
    case v1::BUFFER_EXP_AVG_SQ:
      return m.exp_avg_sq() - owned_begin;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown buffer kind ", static_cast<int>(kind)));
  }
}

Range ShardServer::ValidRange(const ModelState& m, v1::BufferKind kind) {
  if (kind == v1::BUFFER_PARAMS || kind == v1::BUFFER_GRADS) {
    return Range{0, m.layout().total()};
  }
  return m.owned();
}

absl::Status ShardServer::CheckRange(const ModelState& m, v1::BufferKind kind,
                                     int64_t offset, int64_t count) {
  const Range r = ValidRange(m, kind);
  if (offset < r.begin || count < 0 || offset > r.end || count > r.end - offset) {
    const bool whole = kind == v1::BUFFER_PARAMS || kind == v1::BUFFER_GRADS;
    return absl::InvalidArgumentError(absl::StrCat(
        "range of ", count, " elements at ", offset, " is outside ",
        whole ? "the buffer of " : "this rank's owned slice [",
        whole ? absl::StrCat(r.end, " elements")
              : absl::StrCat(r.begin, ", ", r.end, ") of the optimizer state")));
  }
  return absl::OkStatus();
}

absl::Status ShardServer::CheckChunk(const v1::DataChunk& chunk) const {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  RETURN_IF_ERROR(BufferFor(*m, chunk.buffer()).status());
  const std::string& data = chunk.data();
  if (data.size() % sizeof(float) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk of ", data.size(), " bytes is not a whole number of floats"));
  }
  return CheckRange(*m, chunk.buffer(), chunk.offset(),
                    static_cast<int64_t>(data.size() / sizeof(float)));
}

absl::Status ShardServer::WriteChunks(const std::vector<v1::DataChunk>& chunks) {
  for (const v1::DataChunk& c : chunks) RETURN_IF_ERROR(CheckChunk(c));
  for (const v1::DataChunk& c : chunks) RETURN_IF_ERROR(WriteChunk(c));
  return absl::OkStatus();
}

absl::Status ShardServer::WriteChunk(const v1::DataChunk& chunk) {
  RETURN_IF_ERROR(CheckChunk(chunk));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  ASSIGN_OR_RETURN(float* base, BufferFor(*m, chunk.buffer()));
  const std::string& data = chunk.data();
  const int64_t n = static_cast<int64_t>(data.size() / sizeof(float));
  RETURN_IF_ERROR(m->Copy(base + chunk.offset(),
                          reinterpret_cast<const float*>(data.data()), n));
  inline_bytes_received_.fetch_add(static_cast<int64_t>(data.size()), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status ShardServer::ReadRange(
    const v1::FetchRequest& req,
    const std::function<bool(const v1::DataChunk&)>& sink) {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  ASSIGN_OR_RETURN(float* base, BufferFor(*m, req.buffer()));
  const Range valid = ValidRange(*m, req.buffer());
  int64_t count = req.count() == 0 ? valid.end - req.offset() : req.count();
  RETURN_IF_ERROR(CheckRange(*m, req.buffer(), req.offset(), count));
  int64_t chunk = req.chunk_elements() > 0 ? req.chunk_elements()
                                           : options_.fetch_chunk_elements;
  // A chunk's message (data plus a few bytes of framing) stays under gRPC's
  // default 4 MiB receive limit, so a client with default settings reads it.
  constexpr int64_t kMaxChunkElements = ((4 << 20) - 1024) / sizeof(float);
  chunk = std::min<int64_t>({chunk, options_.fetch_chunk_elements * 4, kMaxChunkElements});
  v1::DataChunk out;
  out.set_buffer(req.buffer());
  for (int64_t off = req.offset(); off < req.offset() + count; off += chunk) {
    int64_t n = std::min(chunk, req.offset() + count - off);
    out.set_offset(off);
    if (m->on_device()) {
      out.mutable_data()->resize(n * sizeof(float));
      RETURN_IF_ERROR(m->Copy(reinterpret_cast<float*>(out.mutable_data()->data()),
                              base + off, n));
    } else {
      out.set_data(reinterpret_cast<const char*>(base + off), n * sizeof(float));
    }
    if (!sink(out)) return absl::CancelledError("fetch cancelled by the client");
    inline_bytes_sent_.fetch_add(n * static_cast<int64_t>(sizeof(float)),
                                 std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

}  // namespace sherd
