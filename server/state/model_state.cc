#include "server/state/model_state.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sherd {

int64_t ModelState::SharedBytes(const Layout& layout) {
  return 2 * layout.total() * static_cast<int64_t>(sizeof(float));
}

int64_t ModelState::PrivateBytes(const Layout& layout) {
  const int64_t buffers = layout.world_size() > 1 ? 5 : 3;
  return buffers * layout.slice_size() * static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<std::unique_ptr<ModelState>> ModelState::Create(
    ModelSpec spec, Layout layout, int rank, const std::string& shm_prefix,
    std::shared_ptr<StateMemory> memory) {
  std::unique_ptr<ModelState> m(new ModelState());
  m->spec_ = std::move(spec);
  m->layout_ = std::move(layout);
  m->rank_ = rank;
  const size_t bytes = m->layout_.total() * sizeof(float);
  const int64_t slice = m->layout_.slice_size();
  const int sets = m->layout_.world_size() > 1 ? 2 : 1;
  if (memory != nullptr) {
    m->memory_ = std::move(memory);
    auto alloc = [&](size_t b) -> absl::StatusOr<float*> {
      absl::StatusOr<void*> p = m->memory_->Allocate(b == 0 ? sizeof(float) : b);
      if (!p.ok()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "cannot allocate ", SharedBytes(m->layout_) + PrivateBytes(m->layout_),
            " bytes of model state on ", m->memory_->name(), ": ", p.status().message()));
      }
      m->allocations_.push_back(*p);
      return static_cast<float*>(*p);
    };
    ASSIGN_OR_RETURN(m->params_ptr_, alloc(bytes));
    ASSIGN_OR_RETURN(m->grads_ptr_, alloc(bytes));
    ASSIGN_OR_RETURN(m->master_ptr_, alloc(slice * sizeof(float)));
    for (int i = 0; i < sets; ++i) {
      ASSIGN_OR_RETURN(m->exp_avg_ptr_[i], alloc(slice * sizeof(float)));
      ASSIGN_OR_RETURN(m->exp_avg_sq_ptr_[i], alloc(slice * sizeof(float)));
    }
    ASSIGN_OR_RETURN(m->params_handle_, m->memory_->ExportHandle(m->params_ptr_));
    ASSIGN_OR_RETURN(m->grads_handle_, m->memory_->ExportHandle(m->grads_ptr_));
  } else {
    ASSIGN_OR_RETURN(m->params_,
                     ShmRegion::Create(shm_prefix + ".params", bytes));
    ASSIGN_OR_RETURN(m->grads_, ShmRegion::Create(shm_prefix + ".grads", bytes));
    bool ok = m->master_.Allocate(slice);
    for (int i = 0; i < sets; ++i) {
      ok = ok && m->exp_avg_[i].Allocate(slice) && m->exp_avg_sq_[i].Allocate(slice);
    }
    if (!ok) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", PrivateBytes(m->layout_),
                       " bytes of optimizer state"));
    }
    m->params_ptr_ = static_cast<float*>(m->params_.data());
    m->grads_ptr_ = static_cast<float*>(m->grads_.data());
    m->master_ptr_ = m->master_.data();
    for (int i = 0; i < sets; ++i) {
      m->exp_avg_ptr_[i] = m->exp_avg_[i].data();
      m->exp_avg_sq_ptr_[i] = m->exp_avg_sq_[i].data();
    }
  }
  m->runs_ = m->layout_.GroupRuns(rank);
  return m;
}

ModelState::~ModelState() {
  for (void* p : allocations_) memory_->Release(p);
}

std::string ModelState::device_name() const {
  return memory_ ? memory_->name() : "cpu";
}

absl::Status ModelState::Copy(float* dst, const float* src, int64_t n) const {
  if (n <= 0) return absl::OkStatus();
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  if (memory_) return memory_->Copy(dst, src, bytes);
  std::memcpy(dst, src, bytes);
  return absl::OkStatus();
}

absl::Status ModelState::Zero(float* dst, int64_t n) const {
  if (n <= 0) return absl::OkStatus();
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  if (memory_) return memory_->Zero(dst, bytes);
  std::memset(dst, 0, bytes);
  return absl::OkStatus();
}

absl::Status ModelState::ResetOptimizerState() const {
  const int64_t n = layout_.slice_size();
  RETURN_IF_ERROR(Copy(master(), params() + owned().begin, n));
  RETURN_IF_ERROR(Zero(exp_avg(), n));
  return Zero(exp_avg_sq(), n);
}

std::vector<AdamWSegment> ModelState::Segments(
    float lr, const std::vector<std::optional<AdamWHyper>>& overrides) const {
  std::vector<AdamWSegment> segs;
  segs.reserve(runs_.size());
  for (const GroupRun& r : runs_) {
    if (static_cast<size_t>(r.group) < overrides.size() && overrides[r.group]) {
      segs.push_back({r.begin, r.end, *overrides[r.group]});
      continue;
    }
    const ParamGroupConfig& g = spec_.groups[r.group];
    AdamWHyper h;
    h.lr = lr * g.lr_scale;
    h.beta1 = g.beta1;
    h.beta2 = g.beta2;
    h.eps = g.eps;
    h.weight_decay = g.weight_decay;
    segs.push_back({r.begin, r.end, h});
  }
  return segs;
}

}  // namespace sherd
