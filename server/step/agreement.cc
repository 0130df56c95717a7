#include "server/step/agreement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace sherd {
namespace {

std::string HeaderKey(int64_t round, int rank) {
  return absl::StrCat("step/", round, "/h/", rank);
}
std::string DecisionKey(int64_t round) { return absl::StrCat("step/", round, "/d"); }
std::string ModelKey(int rank) { return absl::StrCat("step/model/", rank); }

// How much longer than rank 0 the other ranks wait for a decision, so that
// rank 0 (which knows who is missing) normally decides.
absl::Duration Grace(absl::Duration timeout) {
  return std::clamp(timeout / 4, absl::Milliseconds(500), absl::Seconds(10));
}

// How long a rank that refuses a step waits for the others to hear it.
absl::Duration RefusalWait(absl::Duration timeout) {
  return std::min(timeout, absl::Seconds(1));
}

v1::StepDecision NoGo(absl::StatusCode code, std::string reason) {
  v1::StepDecision d;
  d.set_go(false);
  d.set_code(static_cast<int>(code));
  d.set_reason(std::move(reason));
  return d;
}

absl::StatusOr<v1::StepDecision> ParseDecision(const std::string& bytes) {
  v1::StepDecision d;
  if (!d.ParseFromString(bytes)) {
    return absl::InternalError("step agreement: unreadable decision in the store");
  }
  return d;
}

std::string Float(float v) { return absl::StrFormat("%.9g", v); }

std::string DescribeOverride(const v1::GroupStepParams& g) {
  return absl::StrCat("'", g.name(), "' lr ", Float(g.lr()), " betas (",
                      Float(g.beta1()), ", ", Float(g.beta2()), ") eps ",
                      Float(g.eps()), " weight_decay ", Float(g.weight_decay()));
}

std::string DescribeOverrides(const v1::StepHeader& h) {
  if (h.groups().empty()) return "none";
  std::vector<std::string> parts;
  for (const v1::GroupStepParams& g : h.groups()) parts.push_back(DescribeOverride(g));
  return absl::StrJoin(parts, "; ");
}

// The first line where two model descriptions differ, as a sentence.
std::string FirstDifference(const std::string& a, const std::string& b, int rank) {
  if (a.empty() || b.empty()) {
    return absl::StrCat("rank 0 and rank ", rank, " have different model fingerprints");
  }
  std::vector<std::string> la = absl::StrSplit(a, '\n', absl::SkipEmpty());
  std::vector<std::string> lb = absl::StrSplit(b, '\n', absl::SkipEmpty());
  for (size_t i = 0; i < std::max(la.size(), lb.size()); ++i) {
    const std::string x = i < la.size() ? la[i] : "nothing";
    const std::string y = i < lb.size() ? lb[i] : "nothing";
    if (x != y) {
      return absl::StrCat("rank 0 has ", x, ", rank ", rank, " has ", y);
    }
  }
  return absl::StrCat("rank 0 and rank ", rank, " have different model fingerprints");
}

}  // namespace

std::string DescribeModel(const ModelSpec& spec) {
  std::string out = absl::StrCat("model '", spec.name, "'\n");
  for (const ParamGroupConfig& g : spec.groups) {
    absl::StrAppend(&out, "param group '", g.name, "' lr_scale ", Float(g.lr_scale),
                    " betas (", Float(g.beta1), ", ", Float(g.beta2), ") eps ",
                    Float(g.eps), " weight_decay ", Float(g.weight_decay), "\n");
  }
  for (const TensorDesc& t : spec.tensors) {
    absl::StrAppend(&out, "tensor '", t.name, "' shape [", absl::StrJoin(t.shape, ", "),
                    "] ", DTypeName(t.dtype), " in group '",
                    t.group >= 0 && t.group < static_cast<int>(spec.groups.size())
                        ? spec.groups[t.group].name
                        : "?",
                    "'\n");
  }
  return out;
}

uint64_t Fingerprint(const std::string& description) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : description) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

v1::StepDecision Decide(const std::vector<std::optional<v1::StepHeader>>& headers,
                        absl::Duration timeout,
                        const std::function<std::string(int rank)>& description) {
  std::vector<int> missing;
  const v1::StepHeader* first = nullptr;
  for (size_t r = 0; r < headers.size(); ++r) {
    if (!headers[r]) {
      missing.push_back(static_cast<int>(r));
    } else if (first == nullptr) {
      first = &*headers[r];
    }
  }
  auto with_missing = [&](v1::StepDecision d) {
    for (int r : missing) d.add_missing(r);
    return d;
  };
  auto disagree = [](std::string what) {
    return NoGo(absl::StatusCode::kFailedPrecondition,
                absl::StrCat("the ranks disagree on the step: ", what, "; no rank applied it"));
  };
  if (missing.empty()) {
    for (size_t r = 1; r < headers.size(); ++r) {
      if (headers[r]->step() != first->step()) {
        return disagree(absl::StrCat("the trainers sent different steps: rank 0 got step ",
                                     first->step(), ", rank ", r, " got step ",
                                     headers[r]->step()));
      }
    }
  }
  // A refusal is the most precise reason, even with ranks missing.
  for (size_t r = 0; r < headers.size(); ++r) {
    if (headers[r] && !headers[r]->refusal().empty()) {
      const auto code = static_cast<absl::StatusCode>(headers[r]->refusal_code());
      return with_missing(NoGo(
          code == absl::StatusCode::kOk ? absl::StatusCode::kFailedPrecondition : code,
          absl::StrCat("rank ", r, " refused step ", headers[r]->step(), ": ",
                       headers[r]->refusal())));
    }
  }
  if (!missing.empty()) {
    return with_missing(NoGo(
        absl::StatusCode::kDeadlineExceeded,
        absl::StrCat(missing.size() == 1 ? "rank " : "ranks ", absl::StrJoin(missing, ", "),
                     " did not take part in step ", first ? first->step() : 0, " within ",
                     absl::FormatDuration(timeout),
                     " (its trainer did not call Step, or its server is gone); no rank "
                     "applied the step")));
  }
  const v1::StepHeader& h0 = *headers[0];
  for (size_t r = 1; r < headers.size(); ++r) {
    const v1::StepHeader& h = *headers[r];
    if (h.model_fingerprint() != h0.model_fingerprint()) {
      return disagree(absl::StrCat("the ranks registered different models: ",
                                   FirstDifference(description(0), description(r), r)));
    }
    if (h.next_step() != h0.next_step()) {
      return disagree(absl::StrCat("rank 0 expects step ", h0.next_step(), ", rank ", r,
                                   " expects step ", h.next_step()));
    }
    if (h.adam_step() != h0.adam_step()) {
      return disagree(absl::StrCat(
          "rank 0 has applied ", h0.adam_step(), " steps, rank ", r, " has applied ",
          h.adam_step(), " (their optimizer states come from different points; restore "
          "one checkpoint on every rank)"));
    }
    auto scalar = [&](const char* name, float a, float b) -> std::optional<v1::StepDecision> {
      if (a == b) return std::nullopt;
      return disagree(absl::StrCat(name, " is ", Float(a), " on rank 0 and ", Float(b),
                                   " on rank ", r));
    };
    if (auto d = scalar("lr", h0.lr(), h.lr())) return *d;
    if (auto d = scalar("grad_scale", h0.grad_scale(), h.grad_scale())) return *d;
    if (auto d = scalar("max_grad_norm", h0.max_grad_norm(), h.max_grad_norm())) return *d;
    const std::string g0 = DescribeOverrides(h0);
    const std::string g = DescribeOverrides(h);
    if (g0 != g) {
      return disagree(absl::StrCat("the param group settings differ: rank 0 has ", g0,
                                   "; rank ", r, " has ", g));
    }
  }
  v1::StepDecision go;
  go.set_go(true);
  return go;
}

StepAgreement::StepAgreement(std::shared_ptr<KvStore> store, int rank, int world_size,
                             absl::Duration timeout)
    : store_(std::move(store)), rank_(rank), world_size_(world_size), timeout_(timeout) {}

absl::Status StepAgreement::Agree(v1::StepHeader mine, const std::string& model_description) {
  mine.set_rank(rank_);
  if (!model_description.empty()) {
    const uint64_t fp = Fingerprint(model_description);
    mine.set_model_fingerprint(fp);
    if (fp != posted_model_) {
      RETURN_IF_ERROR(store_->Set(ModelKey(rank_), model_description));
      posted_model_ = fp;
    }
  }
  // Each pass decides one round; a rank passes over rounds given up before
  // it arrived. Their number is bounded by the rounds the others ran.
  for (;;) {
    bool absent = false;
    absl::StatusOr<v1::StepDecision> d =
        rank_ == 0 ? DecideAsCoordinator(mine, &absent) : AwaitDecision(mine, &absent);
    if (!d.ok()) {
      // The round stays open: a retry posts to it again.
      return absl::Status(d.status().code(),
                          absl::StrCat("step ", mine.step(), ": the ranks could not agree: ",
                                       d.status().message()));
    }
    const int64_t decided = round_++;
    if (absent) {
      SHERD_LOG(Debug, "step agreement: round %d was given up before this rank arrived",
                decided);
      continue;
    }
    if (d->go()) {
      if (rank_ == 0) EraseRoundsBefore(decided);
      return absl::OkStatus();
    }
    return absl::Status(static_cast<absl::StatusCode>(d->code()), d->reason());
  }
}

absl::StatusOr<v1::StepDecision> StepAgreement::DecideAsCoordinator(
    const v1::StepHeader& mine, bool* absent) {
  const std::string dkey = DecisionKey(round_);
  // Peers that waited past the timeout for this rank decided without it.
  absl::StatusOr<std::string> existing = store_->Get(dkey, absl::ZeroDuration());
  if (existing.ok()) {
    *absent = true;
    return ParseDecision(*existing);
  }
  if (!absl::IsDeadlineExceeded(existing.status())) return existing.status();

  std::vector<std::optional<v1::StepHeader>> headers(world_size_);
  headers[0] = mine;
  // Once the step is refused (here or by a peer), the others only need to
  // hear it: ranks that have not posted by then are listed as missing.
  bool refused = !mine.refusal().empty();
  absl::Time deadline = absl::Now() + (refused ? RefusalWait(timeout_) : timeout_);
  for (int r = 1; r < world_size_; ++r) {
    absl::StatusOr<std::string> got =
        store_->Get(HeaderKey(round_, r), std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (absl::IsDeadlineExceeded(got.status())) continue;
    if (!got.ok()) return got.status();
    v1::StepHeader h;
    if (!h.ParseFromString(*got)) {
      return absl::InternalError(absl::StrCat("unreadable step header from rank ", r));
    }
    if (!refused && !h.refusal().empty()) {
      refused = true;
      deadline = std::min(deadline, absl::Now() + RefusalWait(timeout_));
    }
    headers[r] = std::move(h);
  }
  const std::string own_description = [&]() -> std::string {
    absl::StatusOr<std::string> s = store_->Get(ModelKey(0), absl::ZeroDuration());
    return s.ok() ? *s : "";
  }();
  v1::StepDecision decision = Decide(headers, timeout_, [&](int r) -> std::string {
    if (r == 0) return own_description;
    absl::StatusOr<std::string> s = store_->Get(ModelKey(r), absl::ZeroDuration());
    return s.ok() ? *s : "";
  });
  ASSIGN_OR_RETURN(std::string stored,
                   store_->SetIfAbsent(dkey, decision.SerializeAsString()));
  // This round's headers are read; only its decision stays for the others.
  for (int r = 1; r < world_size_; ++r) store_->Erase(HeaderKey(round_, r)).IgnoreError();
  return ParseDecision(stored);
}

absl::StatusOr<v1::StepDecision> StepAgreement::AwaitDecision(const v1::StepHeader& mine,
                                                              bool* absent) {
  const std::string dkey = DecisionKey(round_);
  RETURN_IF_ERROR(store_->Set(HeaderKey(round_, rank_), mine.SerializeAsString()));
  const bool refused = !mine.refusal().empty();
  const absl::Duration wait = refused ? RefusalWait(timeout_) : timeout_ + Grace(timeout_);
  absl::StatusOr<std::string> got = store_->Get(dkey, wait);
  if (refused && absl::IsDeadlineExceeded(got.status())) {
    // Rank 0 has not decided: this rank's refusal decides the round. It
    // cannot see who else has posted, so every other rank is listed as
    // missing and passes over this round.
    const auto code = static_cast<absl::StatusCode>(mine.refusal_code());
    v1::StepDecision d = NoGo(code == absl::StatusCode::kOk ? absl::StatusCode::kFailedPrecondition
                                                           : code,
                              absl::StrCat("rank ", rank_, " refused step ", mine.step(),
                                           ": ", mine.refusal()));
    for (int r = 0; r < world_size_; ++r) {
      if (r != rank_) d.add_missing(r);
    }
    got = store_->SetIfAbsent(dkey, d.SerializeAsString());
  } else if (absl::IsDeadlineExceeded(got.status())) {
    v1::StepDecision d = NoGo(
        absl::StatusCode::kDeadlineExceeded,
        absl::StrCat("rank 0 did not take part in step ", mine.step(), " within ",
                     absl::FormatDuration(wait),
                     " (its trainer did not call Step, or it is stuck); no rank applied "
                     "the step"));
    d.add_missing(0);
    got = store_->SetIfAbsent(dkey, d.SerializeAsString());
  }
  if (!got.ok()) return got.status();
  ASSIGN_OR_RETURN(v1::StepDecision d, ParseDecision(*got));
  *absent = std::find(d.missing().begin(), d.missing().end(), rank_) != d.missing().end();
  return d;
}

void StepAgreement::EraseRoundsBefore(int64_t round) {
  for (; erased_below_ < round; ++erased_below_) {
    store_->Erase(DecisionKey(erased_below_)).IgnoreError();
    for (int r = 1; r < world_size_; ++r) {
      store_->Erase(HeaderKey(erased_below_, r)).IgnoreError();
    }
  }
}

}  // namespace sherd
