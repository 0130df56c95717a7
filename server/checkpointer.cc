#include "server/checkpointer.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/checkpoint/directory.h"
#include "server/checkpoint/manifest.h"
#include "server/checkpoint/reader.h"
#include "server/checkpoint/writer.h"

namespace sherd {
namespace {

constexpr char kErrorPrefix[] = "ERR:";

std::string ReportKey(const std::string& save_id, int rank) {
  return absl::StrCat("ckpt/", save_id, "/shard/", rank);
}

// Every rank writes into the same temporary directory of a save; its name
// is a pure function of the step and the save id, so no one has to hand it
// out.
std::string TempDir(const std::string& root, int64_t step, const std::string& save_id) {
  return absl::StrCat(root, "/", kTempPrefix, step, "-", save_id);
}

absl::Status CheckSaveId(const std::string& id) {
  if (!id.empty() && IsIdToken(id)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "save id '", id, "' must be 1 to 64 characters of letters, digits, '_' and '-'"));
}

absl::Status MakeDir(const std::string& path) {
  if (mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::InternalError(absl::StrCat("mkdir ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

bool IsIdToken(absl::string_view id) {
  return id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
           return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
         });
}

Checkpointer::Checkpointer(CheckpointOptions options, int rank, int world_size)
    : options_(std::move(options)), rank_(rank), world_size_(world_size) {}

Checkpointer::~Checkpointer() = default;

absl::Status Checkpointer::Prepare() {
  // The root and any missing parents, as `mkdir -p`.
  std::error_code ec;
  std::filesystem::create_directories(options_.root, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot make the checkpoint directory ", options_.root, ": ", ec.message()));
  }
  if (rank_ != 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<std::string> removed, CleanLeftovers(options_.root));
  for (const std::string& r : removed) SHERD_LOG(Info, "removed leftover %s", r);
  return absl::OkStatus();
}

void Checkpointer::SetReportStore(std::shared_ptr<KvStore> store) {
  absl::MutexLock l(&mu_);
  store_ = std::move(store);
}

void Checkpointer::ReportFailure(const std::string& save_id, const absl::Status& error) {
  std::shared_ptr<KvStore> store;
  {
    absl::MutexLock l(&mu_);
    store = store_;
  }
  if (rank_ == 0 || store == nullptr) return;
  absl::Status sent =
      store->Set(ReportKey(save_id, rank_), absl::StrCat(kErrorPrefix, error.message()));
  if (!sent.ok()) SHERD_LOG(Warning, "checkpoint %s: cannot report: %s", save_id, sent.message());
}

void Checkpointer::EraseReports(const std::string& save_id) {
  std::shared_ptr<KvStore> store;
  std::vector<std::string> ids = {save_id};
  {
    absl::MutexLock l(&mu_);
    store = store_;
    ids.insert(ids.end(), abandoned_.begin(), abandoned_.end());
    abandoned_.clear();
  }
  if (store == nullptr) return;
  for (const std::string& id : ids) {
    for (int r = 1; r < world_size_; ++r) store->Erase(ReportKey(id, r)).IgnoreError();
  }
}

absl::Status Checkpointer::Start(const ModelState& model, int64_t step,
                                 std::map<std::string, int64_t> counters,
                                 const std::string& save_id) {
  RETURN_IF_ERROR(CheckSaveId(save_id));
  absl::Status refused;
  {
    absl::MutexLock l(&mu_);
    if (committing_ || saver_.progress().in_flight) {
      refused = absl::FailedPreconditionError(
          absl::StrCat("a checkpoint save (step ", step_, ") is still in flight"));
    } else if (world_size_ > 1 && store_ == nullptr) {
      return absl::UnavailableError("the cluster has not formed yet");
    } else {
      committing_ = true;
      step_ = step;
      last_error_.clear();
    }
  }
  if (!refused.ok()) {
    ReportFailure(save_id, refused);  // rank 0 must not wait for this shard
    if (rank_ == 0) {
      // The others may still report this save; their reports are erased
      // with the next save's.
      absl::MutexLock l(&mu_);
      abandoned_.push_back(save_id);
    }
    return refused;
  }
  std::string dir = TempDir(options_.root, step, save_id);
  absl::Status s = MakeDir(dir);
  if (s.ok()) {
    ModelSpec spec = model.spec();
    s = saver_.Start(
        dir, rank_, world_size_, model.owned(), step, model.master(),
        model.exp_avg(), model.exp_avg_sq(),
        [this, spec, step, save_id, dir, counters](const absl::StatusOr<ShardInfo>& shard) {
          Finish(spec, step, save_id, dir, counters, shard);
        },
        {}, [&model](float* dst, const float* src, int64_t n) {
          return model.Copy(dst, src, n);
        });
  }
  if (!s.ok()) {
    {
      absl::MutexLock l(&mu_);
      committing_ = false;
      last_error_ = std::string(s.message());
    }
    ReportFailure(save_id, s);
  }
  return s;
}

void Checkpointer::Finish(const ModelSpec& spec, int64_t step, const std::string& save_id,
                          std::string dir, std::map<std::string, int64_t> counters,
                          const absl::StatusOr<ShardInfo>& shard) {
  absl::Status result;
  if (rank_ != 0) {
    std::shared_ptr<KvStore> store;
    {
      absl::MutexLock l(&mu_);
      store = store_;
    }
    result = shard.status();
    std::string report = shard.ok() ? EncodeShardInfo(*shard)
                                    : absl::StrCat(kErrorPrefix, shard.status().message());
    absl::Status sent = store->Set(ReportKey(save_id, rank_), report);
    if (result.ok()) result = sent;
  } else if (!shard.ok()) {
    result = shard.status();
    (void)AbortCheckpoint(dir);
    EraseReports(save_id);
  } else {
    result = Commit(spec, step, save_id, dir, std::move(counters), *shard);
    EraseReports(save_id);
  }
  absl::MutexLock l(&mu_);
  committing_ = false;
  if (!result.ok()) {
    last_error_ = std::string(result.message());
    SHERD_LOG(Error, "checkpoint at step %d failed: %s", step, last_error_);
  } else if (rank_ == 0) {
    last_committed_step_ = step;
  }
}

absl::Status Checkpointer::Commit(const ModelSpec& spec, int64_t step,
                                  const std::string& save_id, const std::string& dir,
                                  std::map<std::string, int64_t> counters,
                                  ShardInfo own) {
  std::vector<ShardInfo> shards(world_size_);
  shards[0] = std::move(own);
  std::shared_ptr<KvStore> store;
  {
    absl::MutexLock l(&mu_);
    store = store_;
  }
  const absl::Time report_deadline = absl::Now() + options_.report_timeout;
  for (int r = 1; r < world_size_; ++r) {
    // Waited for in slices: when the cluster is rebuilt (a rank replaced:
    // SetReportStore with the new epoch's store), the reports of this save
    // will never come, and the wait ends at once.
    absl::StatusOr<std::string> report;
    for (;;) {
      const absl::Duration left = report_deadline - absl::Now();
      report = store->Get(ReportKey(save_id, r),
                          std::clamp(left, absl::ZeroDuration(), absl::Seconds(1)));
      if (!absl::IsDeadlineExceeded(report.status()) || left <= absl::Seconds(1)) break;
      absl::MutexLock l(&mu_);
      if (store_ != store) {
        report = absl::AbortedError("the cluster was rebuilt (a rank was replaced) during this save");
        break;
      }
    }
    absl::Status s = report.status();
    if (s.ok() && absl::StartsWith(*report, kErrorPrefix)) {
      s = absl::UnavailableError(absl::StrCat("rank ", r, ": ", report->substr(4)));
    }
    if (s.ok()) {
      absl::StatusOr<ShardInfo> info = DecodeShardInfo(*report);
      s = info.status();
      if (s.ok()) shards[r] = std::move(*info);
    }
    if (!s.ok()) {
      (void)AbortCheckpoint(dir);
      return absl::Status(s.code(), absl::StrCat("checkpoint at step ", step,
                                                 " not committed: ", s.message()));
    }
  }
  ASSIGN_OR_RETURN(Manifest manifest,
                   BuildManifest(spec, world_size_, step, std::move(counters), std::move(shards)));
  ASSIGN_OR_RETURN(std::string path, CommitCheckpoint(options_.root, dir, manifest));
  SHERD_LOG(Info, "checkpoint committed: %s", path);
  {
    absl::MutexLock l(&mu_);
    last_committed_ = path.substr(path.rfind('/') + 1);
  }
  if (options_.keep > 0) {
    auto removed = ApplyRetention(options_.root, options_.keep);
    if (!removed.ok()) SHERD_LOG(Warning, "retention: %s", removed.status().message());
  }
  return absl::OkStatus();
}

bool Checkpointer::WaitIdle(absl::Duration timeout) {
  {
    absl::MutexLock l(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !committing_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&idle), timeout)) return false;
  }
  // committing_ clears inside the saver's done callback; the saver itself
  // is free a moment later, and only then does Start accept a new save.
  (void)saver_.Wait();
  return true;
}

Checkpointer::Status Checkpointer::status() const {
  Status s;
  SnapshotSaver::Progress p = saver_.progress();
  absl::MutexLock l(&mu_);
  s.in_flight = committing_;
  s.step = step_;
  s.bytes_written = p.bytes_written;
  s.bytes_total = p.bytes_total;
  s.last_committed_step = last_committed_step_;
  s.last_committed = last_committed_;
  s.last_error = last_error_;
  return s;
}

absl::StatusOr<std::optional<RestoredState>> Checkpointer::Load(const ModelState& model,
                                                                const std::string& which) {
  if (which == "none") return std::optional<RestoredState>();
  absl::StatusOr<CheckpointReader> reader;
  if (which == "newest") {
    absl::StatusOr<LoadableCheckpoint> found = FindNewestLoadable(options_.root, model.spec());
    if (absl::IsNotFound(found.status())) return std::optional<RestoredState>();
    if (!found.ok()) return found.status();
    for (const absl::Status& skipped : found->skipped) {
      SHERD_LOG(Warning, "skipped checkpoint: %s", skipped.message());
    }
    reader = std::move(found->reader);
  } else {
    if (which.find('/') != std::string::npos || which.rfind("ckpt-", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", which, "' is not a checkpoint name (ckpt-...), newest or none"));
    }
    reader = CheckpointReader::Open(absl::StrCat(options_.root, "/", which));
    if (!reader.ok()) return reader.status();
    RETURN_IF_ERROR(reader->Verify());
  }
  RETURN_IF_ERROR(reader->CheckModel(model.spec()));
  RestoredState r;
  const int64_t slice = model.layout().slice_size();
  r.master.assign(slice, 0.0f);
  r.exp_avg.assign(slice, 0.0f);
  r.exp_avg_sq.assign(slice, 0.0f);
  r.params.assign(model.layout().total(), 0.0f);
  RETURN_IF_ERROR(reader->LoadSlice(model.layout(), model.rank(), r.master.data(),
                                    r.exp_avg.data(), r.exp_avg_sq.data()));
  // The trainer's full params, straight from the files: no collective needed.
  const Range saved_all{0, std::min(model.layout().total(), reader->manifest().layout.total())};
  RETURN_IF_ERROR(reader->LoadRange(saved_all, r.params.data(), nullptr, nullptr));
  r.step = reader->manifest().step;
  r.counters = reader->manifest().counters;
  std::string dir = reader->manifest_path();
  dir = dir.substr(0, dir.rfind('/'));
  r.name = dir.substr(dir.rfind('/') + 1);
  SHERD_LOG(Info, "loaded %s (saved on %d ranks) for rank %d of %d", r.name,
            reader->manifest().world_size, rank_, world_size_);
  return std::optional<RestoredState>(std::move(r));
}

bool Checkpointer::WaitForStore(absl::Duration timeout) {
  if (world_size_ == 1) return true;
  absl::MutexLock l(&mu_);
  auto formed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return store_ != nullptr; };
  return mu_.AwaitWithTimeout(absl::Condition(&formed), timeout);
}

absl::StatusOr<std::optional<RestoredState>> Checkpointer::LoadAtRegister(
    const ModelState& model, uint64_t fingerprint, const std::string& which) {
  std::shared_ptr<KvStore> store;
  {
    absl::MutexLock l(&mu_);
    store = store_;
  }
  if (world_size_ == 1) return Load(model, which);
  if (store == nullptr) return absl::UnavailableError("the cluster has not formed yet");
  constexpr char kChoiceKey[] = "restore/choice";
  const std::string fp = absl::StrCat(absl::Hex(fingerprint, absl::kZeroPad16));
  // The value: "<checkpoint name or none> <model fingerprint> <rank>".
  auto follow = [&](const std::string& value) -> absl::StatusOr<std::optional<RestoredState>> {
    std::vector<std::string> f = absl::StrSplit(value, ' ');
    if (f.size() != 3) return absl::InternalError(absl::StrCat("bad restore choice '", value, "'"));
    if (f[1] != fp) {
      return absl::FailedPreconditionError(absl::StrCat(
          "rank ", f[2], " registered another model (its restore choice is for model ", f[1],
          ", this one is ", fp, "): every rank must register the same model"));
    }
    absl::StatusOr<std::optional<RestoredState>> r = Load(model, f[0]);
    if (!r.ok()) {
      return absl::Status(r.status().code(),
                          absl::StrCat("restore of ", f[0], ", chosen for the whole cluster by rank ",
                                       f[2], ": ", r.status().message(),
                                       " (no rank falls back to another checkpoint: start every "
                                       "server with --restore NAME, an older one, or none)"));
    }
    SHERD_LOG(Info, "restore: %s, chosen for the cluster by rank %s", f[0], f[2]);
    return r;
  };
  absl::StatusOr<std::string> chosen = store->Get(kChoiceKey, absl::ZeroDuration());
  if (chosen.ok()) return follow(*chosen);
  if (!absl::IsDeadlineExceeded(chosen.status())) return chosen.status();
  // Nobody chose yet: resolve --restore here (an error records nothing, so
  // the next rank tries for itself), then race to record it.
  ASSIGN_OR_RETURN(std::optional<RestoredState> mine, Load(model, which));
  const std::string value = absl::StrCat(mine ? mine->name : "none", " ", fp, " ", rank_);
  ASSIGN_OR_RETURN(std::string winner, store->SetIfAbsent(kChoiceKey, value));
  if (winner == value) {
    SHERD_LOG(Info, "restore: %s, chosen for the cluster", mine ? mine->name : "none");
    return mine;
  }
  if (mine && absl::StartsWith(winner, mine->name + " " + fp + " ")) return mine;
  return follow(winner);  // another rank chose first
}

absl::Status Checkpointer::Apply(const RestoredState& s, ModelState& model) {
  auto put = [&](float* dst, const std::vector<float>& src) {
    return model.Copy(dst, src.data(), static_cast<int64_t>(src.size()));
  };
  RETURN_IF_ERROR(put(model.master(), s.master));
  RETURN_IF_ERROR(put(model.exp_avg(), s.exp_avg));
  RETURN_IF_ERROR(put(model.exp_avg_sq(), s.exp_avg_sq));
  return put(model.params(), s.params);
}

}  // namespace sherd

namespace sherd {

absl::Status Checkpointer::Exchange(RestoredState& s, ModelState& model) {
  auto exchange = [&](float* live, std::vector<float>& kept) -> absl::Status {
    const int64_t n = static_cast<int64_t>(kept.size());
    if (!model.on_device()) {
      std::swap_ranges(kept.begin(), kept.end(), live);
      return absl::OkStatus();
    }
    constexpr int64_t kChunk = int64_t{1} << 20;
    std::vector<float> staging(static_cast<size_t>(std::min(n, kChunk)));
    for (int64_t off = 0; off < n; off += kChunk) {
      const int64_t k = std::min(kChunk, n - off);
      RETURN_IF_ERROR(model.Copy(staging.data(), live + off, k));
      RETURN_IF_ERROR(model.Copy(live + off, kept.data() + off, k));
      std::copy_n(staging.data(), k, kept.data() + off);
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(exchange(model.master(), s.master));
  RETURN_IF_ERROR(exchange(model.exp_avg(), s.exp_avg));
  RETURN_IF_ERROR(exchange(model.exp_avg_sq(), s.exp_avg_sq));
  return exchange(model.params(), s.params);
}

}  // namespace sherd
