#include "client/sherdctl/checkpoint_commands.h"

#include <unistd.h>

#include <cstdio>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/sherdctl/cluster.h"
#include "client/sherdctl/table.h"
#include "server/checkpoint/directory.h"
#include "server/checkpoint/reader.h"
#include "server/checkpoint/tools.h"

namespace sherd::ctl {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "sherdctl: %s\n", std::string(s.message()).c_str());
  return 1;
}

// NAME may be a checkpoint name under --dir or a path.
std::string CheckpointPath(const CheckpointOptions& o) {
  if (o.name.find('/') != std::string::npos || o.dir.empty()) return o.name;
  return o.dir + "/" + o.name;
}

void Progress(const char* what, int64_t done, int64_t total) {
  if (!isatty(fileno(stderr)) || total <= 0) return;
  int pct = static_cast<int>(100 * done / total);
  std::fprintf(stderr, "\r%s %3d%% [%-40s] %s / %s", what, pct,
               std::string(pct * 40 / 100, '#').c_str(), HumanBytes(done).c_str(),
               HumanBytes(total).c_str());
  if (done >= total) std::fprintf(stderr, "\n");
}

}  // namespace

int RunCheckpointSave(const GlobalOptions& g, const CheckpointOptions& o) {
  auto cluster = Cluster::Discover(g);
  if (!cluster.ok()) return Fail(cluster.status());
  // Every rank must be at the same step before any save starts: a save
  // started on rank 0 and refused on another would leave rank 0 waiting for
  // a shard that never comes.
  int64_t last = -1;
  int last_rank = 0;
  for (const RankEndpoint& e : cluster->ranks()) {
    v1::StatusResponse st;
    absl::Status s = cluster->Call(cluster->Admin(e.rank), e.address,
                                   &v1::Admin::Stub::Status, v1::StatusRequest(), &st);
    if (!s.ok()) return Fail(absl::Status(s.code(), absl::StrCat("rank ", e.rank, ": ", s.message())));
    if (last >= 0 && st.last_step() != last) {
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          "ranks are at different steps (rank ", last_rank, " at step ", last, ", rank ",
          e.rank, " at step ", st.last_step(), "); nothing was saved: save between "
          "steps, when every trainer has finished the same step")));
    }
    last = st.last_step();
    last_rank = e.rank;
  }
  // One id for this save on every rank: rank 0 collects exactly its shards.
  absl::BitGen gen;
  v1::CheckpointRequest save;
  save.set_save_id(absl::StrFormat("ctl-%016x", absl::Uniform<uint64_t>(gen)));
  int64_t step = -1;
  // Every rank saves its own slice; rank 0 commits once all have written.
  for (const RankEndpoint& e : cluster->ranks()) {
    v1::Admin::Stub* stub = cluster->Admin(e.rank);
    if (stub == nullptr) return Fail(absl::UnavailableError(absl::StrCat("rank ", e.rank, " has not joined")));
    v1::CheckpointResponse r;
    absl::Status s = cluster->Call(stub, e.address, &v1::Admin::Stub::CheckpointSave,
                                   save, &r);
    if (!s.ok()) return Fail(absl::Status(s.code(), absl::StrCat("rank ", e.rank, ": ", s.message())));
    if (step >= 0 && r.step() != step) {
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          "ranks are at different steps (", step, " and ", r.step(),
          "): save between steps, when every trainer has finished the same step")));
    }
    step = r.step();
  }
  std::printf("saving step %lld on %d rank(s)\n", static_cast<long long>(step), cluster->world_size());
  if (!o.wait) return 0;
  // Progress: the sum of every rank's bytes; done when rank 0 has committed.
  for (;;) {
    int64_t done = 0, total = 0;
    v1::CheckpointStatusResponse r0;
    for (const RankEndpoint& e : cluster->ranks()) {
      v1::CheckpointStatusResponse r;
      absl::Status s = cluster->Call(cluster->Admin(e.rank), e.address,
                                     &v1::Admin::Stub::CheckpointStatus,
                                     v1::CheckpointStatusRequest(), &r);
      if (!s.ok()) return Fail(s);
      if (!r.in_flight() && !r.last_error().empty() && r.step() == step) {
        return Fail(absl::DataLossError(absl::StrCat("rank ", e.rank, ": ", r.last_error())));
      }
      done += r.bytes_written();
      total += r.bytes_total();
      if (e.rank == 0) r0 = r;
    }
    Progress("writing", done, total);
    if (!r0.in_flight() && r0.last_committed_step() == step) {
      std::printf("committed %s in %s\n", r0.last_committed().c_str(), r0.root().c_str());
      return 0;
    }
    absl::SleepFor(absl::Milliseconds(200));  // polling a remote progress counter
  }
}

int RunCheckpointStatus(const GlobalOptions& g) {
  auto cluster = Cluster::Discover(g);
  if (!cluster.ok()) return Fail(cluster.status());
  Table t({"RANK", "ENABLED", "IN FLIGHT", "STEP", "WRITTEN", "LAST COMMITTED", "RESTORED FROM", "ERROR"});
  for (const RankEndpoint& e : cluster->ranks()) {
    v1::CheckpointStatusResponse r;
    absl::Status s = cluster->Call(cluster->Admin(e.rank), e.address,
                                   &v1::Admin::Stub::CheckpointStatus,
                                   v1::CheckpointStatusRequest(), &r);
    if (!s.ok()) {
      t.Add({absl::StrCat(e.rank), "-", "-", "-", "-", "-", "-", std::string(s.message())});
      continue;
    }
    t.Add({absl::StrCat(e.rank), r.enabled() ? r.root() : "no", r.in_flight() ? "yes" : "no",
           absl::StrCat(r.step()),
           absl::StrCat(HumanBytes(r.bytes_written()), " / ", HumanBytes(r.bytes_total())),
           r.last_committed().empty() ? "-" : r.last_committed(),
           r.restored_from().empty() ? "-" : r.restored_from(),
           r.last_error().empty() ? "-" : r.last_error()});
  }
  std::fputs(t.Render().c_str(), stdout);
  return 0;
}

int RunCheckpointRestore(const GlobalOptions& g, const CheckpointOptions& o) {
  auto cluster = Cluster::Discover(g);
  if (!cluster.ok()) return Fail(cluster.status());
  // One transaction id through every phase on every rank
  // (v1::CheckpointRestoreRequest).
  absl::BitGen gen;
  const std::string txn = absl::StrFormat("rst-%016x", absl::Uniform<uint64_t>(gen));
  std::string name = o.name;
  auto call = [&](int rank, v1::CheckpointRestoreRequest::Phase phase,
                  v1::CheckpointRestoreResponse* r) {
    v1::CheckpointRestoreRequest req;
    req.set_name(name);
    req.set_phase(phase);
    req.set_txn(txn);
    v1::Admin::Stub* stub = cluster->Admin(rank);
    if (stub == nullptr) return absl::UnavailableError(absl::StrCat("rank ", rank, " has not joined"));
    return cluster->Call(stub, cluster->ranks()[rank].address,
                         &v1::Admin::Stub::CheckpointRestore, req, r);
  };
  auto abort_all = [&](std::vector<int>* rolled_back, std::vector<std::string>* failed) {
    for (const RankEndpoint& a : cluster->ranks()) {
      v1::CheckpointRestoreResponse r;
      absl::Status s = call(a.rank, v1::CheckpointRestoreRequest::ABORT, &r);
      if (!s.ok() && failed) failed->push_back(absl::StrCat("rank ", a.rank, ": ", s.message()));
      if (s.ok() && r.rolled_back() && rolled_back) rolled_back->push_back(a.rank);
    }
  };
  // Phase 1, PREPARE: read and verify into memory. Rank 0 resolves the name
  // ("newest"); every other rank prepares exactly that checkpoint. Any
  // failure aborts everywhere, so no rank applies what the others did not.
  v1::CheckpointRestoreResponse r;
  for (const RankEndpoint& e : cluster->ranks()) {
    if (isatty(fileno(stderr))) {  // reading a checkpoint takes a while
      std::fprintf(stderr, "\rpreparing %s on rank %d of %d", name.empty() ? "newest" : name.c_str(),
                   e.rank, cluster->world_size());
    }
    absl::Status s = call(e.rank, v1::CheckpointRestoreRequest::PREPARE, &r);
    if (!s.ok()) {
      if (isatty(fileno(stderr))) std::fprintf(stderr, "\n");
      abort_all(nullptr, nullptr);
      return Fail(absl::Status(s.code(), absl::StrCat("rank ", e.rank, ": ", s.message(),
                                                      " (nothing was restored)")));
    }
    name = r.name();
  }
  if (isatty(fileno(stderr))) std::fprintf(stderr, "\n");
  // Phase 2, COMMIT: each rank exchanges the staged state with its live
  // one. A transient failure is retried (the commit is completed); any
  // other failure rolls back every rank that committed.
  for (const RankEndpoint& e : cluster->ranks()) {
    absl::Status s;
    int tries = 0;
    for (absl::Duration backoff = absl::Milliseconds(200);; backoff *= 2) {
      s = call(e.rank, v1::CheckpointRestoreRequest::COMMIT, &r);
      ++tries;
      const bool transient = absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s);
      if (s.ok() || !transient || tries == 4) break;
      std::fprintf(stderr, "rank %d: commit failed (%s), retrying\n", e.rank,
                   std::string(s.message()).c_str());
      absl::SleepFor(backoff);
    }
    if (s.ok()) {
      if (tries > 1) {
        std::printf("rank %d: commit completed after %d tries\n", e.rank, tries);
      }
      continue;
    }
    std::vector<int> rolled_back;
    std::vector<std::string> failed;
    abort_all(&rolled_back, &failed);
    const std::string why = absl::StrCat("rank ", e.rank, ": commit of ", name,
                                         " failed: ", s.message());
    if (failed.empty()) {
      return Fail(absl::Status(s.code(), absl::StrCat(
          why, "; rolled back ", rolled_back.size(), " rank(s) that had committed (",
          rolled_back.empty() ? "none" : absl::StrJoin(rolled_back, ", "),
          "): every rank is where it was before, nothing was restored")));
    }
    return Fail(absl::Status(s.code(), absl::StrCat(
        why, "; the rollback failed too (", absl::StrJoin(failed, "; "),
        "), so the ranks may be at different steps; every step is refused until they "
        "agree: run sherdctl checkpoint restore again")));
  }
  // Phase 3, FINISH: every rank committed; each drops the state it kept for
  // a rollback (a step finishes it too, so a failure here costs memory only
  // until then).
  for (const RankEndpoint& e : cluster->ranks()) {
    v1::CheckpointRestoreResponse ignored;
    absl::Status s = call(e.rank, v1::CheckpointRestoreRequest::FINISH, &ignored);
    if (!s.ok()) {
      std::fprintf(stderr, "sherdctl: warning: rank %d: %s\n", e.rank,
                   std::string(s.message()).c_str());
    }
  }
  std::printf("restored %s (step %lld) on %d rank(s); trainers re-register to continue at step %lld\n",
              r.name().c_str(), static_cast<long long>(r.step()), cluster->world_size(),
              static_cast<long long>(r.step() + 1));
  return 0;
}

int RunCheckpointList(const GlobalOptions& g, const CheckpointOptions& o) {
  if (o.dir.empty()) return Fail(absl::InvalidArgumentError("--dir is required"));
  auto list = ListCheckpoints(o.dir, {.verify = true});
  if (!list.ok()) return Fail(list.status());
  Table t({"NAME", "STEP", "TIME", "WORLD", "SIZE", "VERIFIED", "STATUS"});
  for (const CheckpointInfo& c : *list) {
    t.Add({c.name, absl::StrCat(c.step), absl::FormatTime("%Y-%m-%d %H:%M:%S", c.time, absl::UTCTimeZone()),
           absl::StrCat(c.world_size), HumanBytes(c.bytes), c.verified ? "yes" : "no",
           c.status.ok() ? "ok" : std::string(c.status.message())});
  }
  std::fputs(t.Render().c_str(), stdout);
  if (list->empty()) std::printf("no committed checkpoints in %s\n", o.dir.c_str());
  return 0;
}

int RunCheckpointVerify(const GlobalOptions& g, const CheckpointOptions& o) {
  std::string path = CheckpointPath(o);
  absl::Status s = VerifyCheckpoint(path, [](int64_t done, int64_t total) {
    Progress("verifying", done, total);
  });
  if (!s.ok()) return Fail(s);
  std::printf("%s: every checksum verified\n", path.c_str());
  return 0;
}

int RunCheckpointInspect(const GlobalOptions& g, const CheckpointOptions& o) {
  StateArray state;
  if (o.state == "param") state = StateArray::kParam;
  else if (o.state == "exp_avg") state = StateArray::kExpAvg;
  else if (o.state == "exp_avg_sq") state = StateArray::kExpAvgSq;
  else return Fail(absl::InvalidArgumentError("--state must be param, exp_avg or exp_avg_sq"));
  auto r = InspectTensor(CheckpointPath(o), o.tensor, state);
  if (!r.ok()) return Fail(r.status());
  std::printf("%s [%s] %s at step %lld\n", r->name.c_str(), absl::StrJoin(r->shape, ", ").c_str(),
              o.state.c_str(), static_cast<long long>(r->step));
  Table t({"COUNT", "MIN", "MAX", "MEAN", "L2", "NAN", "INF"});
  const RangeStats& s = r->stats;
  t.Add({absl::StrCat(s.count), absl::StrFormat("%.6g", s.finite ? s.min : 0),
         absl::StrFormat("%.6g", s.finite ? s.max : 0), absl::StrFormat("%.6g", s.mean()),
         absl::StrFormat("%.6g", s.l2()), absl::StrCat(s.nan), absl::StrCat(s.inf)});
  std::fputs(t.Render().c_str(), stdout);
  return 0;
}

int RunCheckpointExport(const GlobalOptions& g, const CheckpointOptions& o) {
  auto r = ExportSafetensors(CheckpointPath(o), o.out);
  if (!r.ok()) return Fail(r.status());
  std::printf("wrote %s: %lld tensors, %s (safetensors, F32)\n", o.out.c_str(),
              static_cast<long long>(r->tensors), HumanBytes(r->bytes).c_str());
  return 0;
}

}  // namespace sherd::ctl
