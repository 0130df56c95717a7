#include "client/sherdctl/commands.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/sherdctl/cluster.h"
#include "client/sherdctl/table.h"
#include "common/grpc_status.h"
#include "common/stats.h"
#include "sherd/v1/admin.grpc.pb.h"

namespace sherd::ctl {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "sherdctl: %s\n", std::string(s.message()).c_str());
  return 1;
}

int PrintJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  std::fputs(out.c_str(), stdout);
  return 0;
}

std::string Shape(const v1::TensorInfo& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

}  // namespace

std::string StepSummary(const v1::StatusResponse& r) {
  if (!r.has_last_step_result()) return "-";
  const v1::StepTimings& t = r.last_step_result().timings();
  return absl::StrFormat("%.1f ms (rs %.1f, norm %.1f, opt %.1f, ag %.1f)",
                         t.total_ms(), t.reduce_scatter_ms(), t.norm_ms(),
                         t.optimizer_ms(), t.all_gather_ms());
}

int RunStatus(const GlobalOptions& g) {
  auto cluster = Cluster::Discover(g);
  if (!cluster.ok()) return Fail(cluster.status());
  std::vector<v1::StatusResponse> replies(cluster->world_size());
  std::vector<absl::Status> errors(cluster->world_size());
  const v1::StatusResponse* model_source = nullptr;
  for (const RankEndpoint& e : cluster->ranks()) {
    v1::Admin::Stub* stub = cluster->Admin(e.rank);
    if (stub == nullptr) {
      errors[e.rank] = absl::UnavailableError("has not joined the cluster");
      continue;
    }
    errors[e.rank] = cluster->Call(stub, e.address, &v1::Admin::Stub::Status,
                                   v1::StatusRequest(), &replies[e.rank]);
    if (errors[e.rank].ok() && replies[e.rank].has_model() && !model_source) {
      model_source = &replies[e.rank];
    }
  }
  if (g.json) {
    std::string out = "[\n";
    for (size_t r = 0; r < replies.size(); ++r) {
      if (!errors[r].ok()) {
        replies[r].set_rank(static_cast<int>(r));
        replies[r].set_health("UNREACHABLE");
        replies[r].set_unhealthy_reason(std::string(errors[r].message()));
      }
      std::string one;
      google::protobuf::util::JsonPrintOptions o;
      o.preserve_proto_field_names = true;
      (void)google::protobuf::util::MessageToJsonString(replies[r], &one, o);
      out += "  " + one + (r + 1 < replies.size() ? ",\n" : "\n");
    }
    std::fputs((out + "]\n").c_str(), stdout);
    return 0;
  }
  if (model_source != nullptr) {
    const v1::ModelSummary& m = model_source->model();
    std::printf("model %s: %lld tensors, %s parameters, %lld param groups, %s\n",
                m.name().c_str(), static_cast<long long>(m.tensors()),
                HumanCount(m.parameters()).c_str(),
                static_cast<long long>(m.param_groups()),
                m.initialized() ? "initialized" : "NOT initialized");
  } else {
    std::printf("no model registered\n");
  }
  Table t({"RANK", "ADDRESS", "HEALTH", "DEVICE", "STEP", "APPLIED", "SKIPPED",
           "OWNED", "STATE", "SHARED", "LAST STEP"});
  int bad = 0;
  for (const RankEndpoint& e : cluster->ranks()) {
    const v1::StatusResponse& r = replies[e.rank];
    std::string rank = absl::StrCat(e.rank, "/", cluster->world_size());
    if (!errors[e.rank].ok()) {
      ++bad;
      t.Add({rank, e.address.empty() ? "-" : e.address,
             e.address.empty() ? "MISSING" : "UNREACHABLE", "-", "-", "-", "-",
             "-", "-", "-", std::string(errors[e.rank].message())});
      continue;
    }
    std::string health = r.health();
    if (!r.unhealthy_reason().empty()) health += " (" + r.unhealthy_reason() + ")";
    if (r.health() != "SERVING" && r.health() != "NO_MODEL") ++bad;
    t.Add({rank, e.address, health, r.device().empty() ? "cpu" : r.device(),
           absl::StrCat(r.last_step()),
           absl::StrCat(r.steps_applied()), absl::StrCat(r.steps_skipped()),
           absl::StrCat("[", r.owned_begin(), ", ", r.owned_end(), ")"),
           HumanBytes(r.state_bytes()), HumanBytes(r.shared_bytes()),
           StepSummary(r)});
  }
  std::fputs(t.Render().c_str(), stdout);
  int64_t in = 0, out = 0;
  for (size_t r = 0; r < replies.size(); ++r) {
    if (!errors[r].ok()) continue;
    in += replies[r].inline_bytes_received();
    out += replies[r].inline_bytes_sent();
  }
  std::printf("inline data plane: %s received, %s sent (shared-memory trainers copy nothing)\n",
              HumanBytes(in).c_str(), HumanBytes(out).c_str());
  // How the ranks' collectives move data (chosen at the first step).
  std::map<std::string, std::vector<std::string>> paths;
  for (size_t r = 0; r < replies.size(); ++r) {
    if (errors[r].ok() && !replies[r].collectives().empty()) {
      paths[replies[r].collectives()].push_back(absl::StrCat(r));
    }
  }
  for (const auto& [path, ranks] : paths) {
    std::printf("collectives%s: %s\n",
                paths.size() == 1 ? ""
                                  : absl::StrCat(" on rank(s) ", absl::StrJoin(ranks, ", ")).c_str(),
                path.c_str());
  }
  int64_t epoch = 0;
  std::string rewound;
  for (size_t r = 0; r < replies.size(); ++r) {
    if (!errors[r].ok()) continue;
    epoch = std::max(epoch, replies[r].epoch());
    if (rewound.empty()) rewound = replies[r].restored_from();
  }
  if (epoch > 0) {
    std::printf("membership epoch %lld: ranks were replaced and the cluster rewound%s\n",
                static_cast<long long>(epoch),
                rewound.empty() ? " (no checkpoint: training started over)"
                                : absl::StrCat(" to ", rewound).c_str());
  }
  for (size_t r = 0; r < replies.size(); ++r) {
    if (errors[r].ok() && replies[r].epoch() != epoch) {
      std::printf("rank %zu is still at membership epoch %lld (rebuilding its collectives)\n", r,
                  static_cast<long long>(replies[r].epoch()));
    }
  }
  if (bad > 0) std::printf("%d of %d ranks not serving\n", bad, cluster->world_size());
  return 0;
}

int RunTensors(const GlobalOptions& g) {
  auto cluster = Cluster::Discover(g);
  if (!cluster.ok()) return Fail(cluster.status());
  v1::ListTensorsResponse r;
  absl::Status s = cluster->Call(cluster->Entry(), g.server,
                                 &v1::Admin::Stub::ListTensors,
                                 v1::ListTensorsRequest(), &r);
  if (!s.ok()) return Fail(s);
  if (g.json) return PrintJson(r);
  Table t({"NAME", "SHAPE", "NUMEL", "GROUP", "OFFSET"});
  for (const v1::TensorInfo& ti : r.tensors()) {
    t.Add({ti.name(), Shape(ti), absl::StrCat(ti.numel()), ti.param_group(),
           absl::StrCat(ti.offset())});
  }
  std::fputs(t.Render().c_str(), stdout);
  return 0;
}

int RunWhere(const GlobalOptions& g, const std::string& name) {
  auto cluster = Cluster::Discover(g);
  if (!cluster.ok()) return Fail(cluster.status());
  v1::WhereRequest req;
  req.set_name(name);
  v1::WhereResponse r;
  absl::Status s = cluster->Call(cluster->Entry(), g.server,
                                 &v1::Admin::Stub::Where, req, &r);
  if (!s.ok()) return Fail(s);
  if (g.json) return PrintJson(r);
  std::printf("%s %s, %lld elements at flat offset %lld\n", r.tensor().name().c_str(),
              Shape(r.tensor()).c_str(), static_cast<long long>(r.tensor().numel()),
              static_cast<long long>(r.tensor().offset()));
  Table t({"RANK", "ADDRESS", "ELEMENTS", "COUNT", "FLAT"});
  for (const v1::Placement& p : r.placements()) {
    const auto& ranks = cluster->ranks();
    std::string addr = p.rank() < static_cast<int>(ranks.size()) ? ranks[p.rank()].address : "";
    t.Add({absl::StrCat(p.rank()), addr.empty() ? "-" : addr,
           absl::StrCat("[", p.tensor_begin(), ", ", p.tensor_end(), ")"),
           absl::StrCat(p.tensor_end() - p.tensor_begin()),
           absl::StrCat("[", p.flat_begin(), ", ",
                        p.flat_begin() + p.tensor_end() - p.tensor_begin(), ")")});
  }
  std::fputs(t.Render().c_str(), stdout);
  return 0;
}

int RunInspect(const GlobalOptions& g, const InspectOptions& o) {
  v1::StateKind kind;
  if (o.state == "param") kind = v1::STATE_PARAM;
  else if (o.state == "grad") kind = v1::STATE_GRAD;
  else if (o.state == "exp_avg") kind = v1::STATE_EXP_AVG;
  else if (o.state == "exp_avg_sq") kind = v1::STATE_EXP_AVG_SQ;
  else return Fail(absl::InvalidArgumentError("unknown --state " + o.state));
  auto cluster = Cluster::Discover(g);
  if (!cluster.ok()) return Fail(cluster.status());
  v1::WhereRequest wreq;
  wreq.set_name(o.name);
  v1::WhereResponse where;
  absl::Status s = cluster->Call(cluster->Entry(), g.server,
                                 &v1::Admin::Stub::Where, wreq, &where);
  if (!s.ok()) return Fail(s);
  const int64_t numel = where.tensor().numel();
  if (o.begin > numel) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--begin ", o.begin, " is past the end of ", o.name, " (", numel,
        " elements)")));
  }
  const int64_t end = o.count == 0 ? numel : std::min(numel, o.begin + o.count);
  // Ask each owner for its part of [begin, end), point to point, and merge.
  v1::InspectResponse r;
  r.set_rank(-1);
  r.set_begin(o.begin);
  r.set_end(end);
  RangeStats merged;
  for (const v1::Placement& p : where.placements()) {
    const int64_t b = std::max(o.begin, p.tensor_begin());
    const int64_t e = std::min(end, p.tensor_end());
    if (b >= e) continue;
    v1::Admin::Stub* stub = cluster->Admin(p.rank());
    if (stub == nullptr) {
      return Fail(absl::UnavailableError(absl::StrCat(
          "rank ", p.rank(), " (owner of elements [", b, ", ", e,
          ")) has not joined the cluster")));
    }
    v1::InspectRequest req;
    req.set_name(o.name);
    req.set_state(kind);
    req.set_begin(b);
    req.set_count(e - b);
    req.set_values(o.values);
    req.set_max_values(std::max<int64_t>(0, o.max_values - r.values_size()));
    v1::InspectResponse part;
    s = cluster->Call(stub, cluster->ranks()[p.rank()].address,
                      &v1::Admin::Stub::Inspect, req, &part);
    if (!s.ok()) {
      return Fail(absl::Status(s.code(), absl::StrCat("rank ", p.rank(), ": ", s.message())));
    }
    const v1::Stats& ps = part.stats();
    RangeStats rs;
    rs.count = ps.count();
    rs.nan = ps.nan_count();
    rs.inf = ps.inf_count();
    rs.finite = ps.count() - ps.nan_count() - ps.inf_count();
    if (rs.finite > 0) {
      rs.min = ps.min();
      rs.max = ps.max();
    }
    rs.sum = ps.mean() * rs.finite;
    rs.sum_sq = ps.l2_norm() * ps.l2_norm();
    merged.Merge(rs);
    if (o.values) {
      for (float v : part.values()) {
        if (r.values_size() >= o.max_values) break;
        r.add_values(v);
      }
    }
  }
  v1::Stats* st_out = r.mutable_stats();
  st_out->set_count(merged.count);
  st_out->set_min(merged.finite ? merged.min : 0);
  st_out->set_max(merged.finite ? merged.max : 0);
  st_out->set_mean(merged.mean());
  st_out->set_l2_norm(merged.l2());
  st_out->set_nan_count(merged.nan);
  st_out->set_inf_count(merged.inf);
  if (g.json) return PrintJson(r);
  const v1::Stats& st = r.stats();
  std::printf("%s %s elements [%lld, %lld) from %d rank(s)\n", o.name.c_str(),
              o.state.c_str(), static_cast<long long>(r.begin()),
              static_cast<long long>(r.end()), where.placements_size());
  Table t({"COUNT", "MIN", "MAX", "MEAN", "L2", "NAN", "INF"});
  t.Add({absl::StrCat(st.count()), absl::StrFormat("%.6g", st.min()),
         absl::StrFormat("%.6g", st.max()), absl::StrFormat("%.6g", st.mean()),
         absl::StrFormat("%.6g", st.l2_norm()), absl::StrCat(st.nan_count()),
         absl::StrCat(st.inf_count())});
  std::fputs(t.Render().c_str(), stdout);
  if (o.values) {
    std::vector<std::string> v;
    for (float x : r.values()) v.push_back(absl::StrFormat("%.8g", x));
    std::printf("values[%lld..]: %s\n", static_cast<long long>(r.begin()),
                absl::StrJoin(v, " ").c_str());
  }
  return 0;
}

}  // namespace sherd::ctl
