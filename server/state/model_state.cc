#include "server/state/model_state.h"

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
    ModelSpec spec, Layout layout, int rank, const std::string& shm_prefix) {
  std::unique_ptr<ModelState> m(new ModelState());
  m->spec_ = std::move(spec);
  m->layout_ = std::move(layout);
  m->rank_ = rank;
  const size_t bytes = m->layout_.total() * sizeof(float);
  ASSIGN_OR_RETURN(m->params_,
                   ShmRegion::Create(shm_prefix + ".params", bytes));
  ASSIGN_OR_RETURN(m->grads_, ShmRegion::Create(shm_prefix + ".grads", bytes));
  const int64_t slice = m->layout_.slice_size();
  const int sets = m->layout_.world_size() > 1 ? 2 : 1;
  bool ok = m->master_.Allocate(slice);
  for (int i = 0; i < sets; ++i) {
    ok = ok && m->exp_avg_[i].Allocate(slice) && m->exp_avg_sq_[i].Allocate(slice);
  }
  if (!ok) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", PrivateBytes(m->layout_),
                     " bytes of optimizer state"));
  }
  m->runs_ = m->layout_.GroupRuns(rank);
  return m;
}

std::vector<AdamWSegment> ModelState::Segments(float lr) const {
  std::vector<AdamWSegment> segs;
  segs.reserve(runs_.size());
  for (const GroupRun& r : runs_) {
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
