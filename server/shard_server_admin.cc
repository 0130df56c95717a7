// The read-only half of ShardServer: what sherdctl sees. Nothing here takes
// the step mutex, so inspection answers while a step is in flight (values
// read mid-step are live, not a snapshot).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "server/shard_server.h"

namespace sherd {
namespace {

v1::DType DTypeToProto(DType t) {
  switch (t) {
    case DType::kFloat32: return v1::DTYPE_FLOAT32;
    case DType::kBFloat16: return v1::DTYPE_BFLOAT16;
    case DType::kFloat16: return v1::DTYPE_FLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

void FillTensorInfo(const ModelState& m, int index, v1::TensorInfo* info) {
  const TensorPlacement& t = m.layout().tensors()[index];
  info->set_name(t.desc.name);
  for (int64_t d : t.desc.shape) info->add_shape(d);
  info->set_dtype(DTypeToProto(t.desc.dtype));
  info->set_param_group(m.spec().groups[t.desc.group].name);
  info->set_offset(t.offset);
  info->set_numel(t.numel);
}

absl::StatusOr<int> FindTensor(const ModelState& m, const std::string& name) {
  std::optional<int> idx = m.layout().Find(name);
  if (!idx) {
    return absl::NotFoundError(absl::StrCat("no tensor named '", name,
                                            "' in model '", m.spec().name, "'"));
  }
  return *idx;
}

}  // namespace

v1::StatusResponse ShardServer::Status() const {
  v1::StatusResponse r;
  r.set_rank(options_.rank);
  r.set_world_size(options_.world_size);
  r.set_version(SHERD_VERSION);
  r.set_uptime_s(absl::ToDoubleSeconds(absl::Now() - started_));
  r.set_inline_bytes_received(inline_bytes_received_.load(std::memory_order_relaxed));
  r.set_inline_bytes_sent(inline_bytes_sent_.load(std::memory_order_relaxed));
  r.set_device(options_.state_memory ? options_.state_memory->name() : "cpu");
  std::shared_ptr<ModelState> m = model();
  if (!healthy()) {
    r.set_health("NOT_SERVING");
  } else {
    r.set_health(m != nullptr ? "SERVING" : "NO_MODEL");
  }
  r.set_epoch(epoch_seen_.load(std::memory_order_relaxed));
  absl::MutexLock l(&stats_mu_);
  r.set_address(address_);
  r.set_unhealthy_reason(unhealthy_reason_);
  r.set_restored_from(restored_from_);
  r.set_collectives(collectives_);
  if (m != nullptr) {
    v1::ModelSummary* s = r.mutable_model();
    s->set_name(m->spec().name);
    s->set_tensors(m->layout().tensors().size());
    s->set_parameters(m->layout().parameters());
    s->set_padded_elements(m->layout().total());
    s->set_param_groups(m->spec().groups.size());
    s->set_initialized(initialized_);
    r.set_owned_begin(m->owned().begin);
    r.set_owned_end(m->owned().end);
    r.set_state_bytes(ModelState::PrivateBytes(m->layout()));
    r.set_shared_bytes(ModelState::SharedBytes(m->layout()));
  }
  r.set_last_step(next_step_ - 1);
  r.set_steps_applied(steps_applied_);
  r.set_steps_skipped(steps_skipped_);
  if (!recent_.empty()) *r.mutable_last_step_result() = recent_.back();
  return r;
}

absl::StatusOr<v1::ListTensorsResponse> ShardServer::ListTensors() const {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  v1::ListTensorsResponse r;
  for (size_t i = 0; i < m->layout().tensors().size(); ++i) {
    FillTensorInfo(*m, static_cast<int>(i), r.add_tensors());
  }
  return r;
}

absl::StatusOr<v1::WhereResponse> ShardServer::Where(
    const v1::WhereRequest& req) const {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  ASSIGN_OR_RETURN(int idx, FindTensor(*m, req.name()));
  v1::WhereResponse r;
  FillTensorInfo(*m, idx, r.mutable_tensor());
  for (const Piece& p : m->layout().Where(idx)) {
    v1::Placement* pl = r.add_placements();
    pl->set_rank(p.rank);
    pl->set_tensor_begin(p.tensor_begin);
    pl->set_tensor_end(p.tensor_end);
    pl->set_flat_begin(p.flat_begin);
  }
  return r;
}

absl::StatusOr<v1::InspectResponse> ShardServer::Inspect(
    const v1::InspectRequest& req) const {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelState> m, RequireModel());
  ASSIGN_OR_RETURN(int idx, FindTensor(*m, req.name()));
  const TensorPlacement& t = m->layout().tensors()[idx];
  if (req.begin() < 0 || req.count() < 0 || req.begin() > t.numel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "range starting at ", req.begin(), " is outside tensor '", t.desc.name,
        "' of ", t.numel, " elements"));
  }
  // begin <= numel here, so numel - begin cannot overflow; begin + count can.
  const int64_t end = req.count() == 0 || req.count() >= t.numel - req.begin()
                          ? t.numel
                          : req.begin() + req.count();
  // The part of [begin, end) this rank owns (a contiguous range, since the
  // tensor is contiguous in the flat layout and slices are contiguous).
  const Range owned = m->owned();
  const int64_t flat_b = std::max(t.offset + req.begin(), owned.begin);
  const int64_t flat_e = std::min(t.offset + end, owned.end);
  v1::InspectResponse r;
  r.set_rank(options_.rank);
  if (flat_b >= flat_e) {
    r.set_begin(0);
    r.set_end(0);
    return r;
  }
  r.set_begin(flat_b - t.offset);
  r.set_end(flat_e - t.offset);
  const float* src = nullptr;
  const int64_t rel = flat_b - owned.begin;
  switch (req.state()) {
    case v1::STATE_PARAM: src = m->master() + rel; break;
    case v1::STATE_GRAD: src = m->grads() + flat_b; break;
    case v1::STATE_EXP_AVG: src = m->exp_avg() + rel; break;
    case v1::STATE_EXP_AVG_SQ: src = m->exp_avg_sq() + rel; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown state ", static_cast<int>(req.state())));
  }
  const int64_t n = flat_e - flat_b;
  std::vector<float> host;  // device state is read through a host copy
  if (m->on_device()) {
    host.resize(n);
    RETURN_IF_ERROR(m->Copy(host.data(), src, n));
    src = host.data();
  }
  RangeStats s = ComputeStats(src, n);
  v1::Stats* ps = r.mutable_stats();
  ps->set_count(s.count);
  ps->set_min(s.finite ? s.min : 0);
  ps->set_max(s.finite ? s.max : 0);
  ps->set_mean(s.mean());
  ps->set_l2_norm(s.l2());
  ps->set_nan_count(s.nan);
  ps->set_inf_count(s.inf);
  if (req.values()) {
    int64_t k = std::min<int64_t>(n, req.max_values() > 0 ? req.max_values() : 1000);
    r.mutable_values()->Add(src, src + k);
  }
  return r;
}

}  // namespace sherd
