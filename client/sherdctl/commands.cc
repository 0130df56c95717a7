#include "client/sherdctl/commands.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/sherdctl/table.h"
#include "common/grpc_status.h"
#include "common/stats.h"
#include "sherd/v1/admin.grpc.pb.h"

namespace sherd::ctl {
namespace {

class Admin {
 public:
  explicit Admin(const GlobalOptions& g) : g_(g) {
    channel_ = grpc::CreateChannel(g.server, grpc::InsecureChannelCredentials());
    stub_ = v1::Admin::NewStub(channel_);
  }

  template <typename Req, typename Resp, typename Fn>
  absl::Status Call(Fn fn, const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(g_.timeout_s * 1000)));
    grpc::Status s = (stub_.get()->*fn)(&ctx, req, resp);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
        s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::UnavailableError(absl::StrCat(
          "cannot reach the shard server at ", g_.server, ": ", s.error_message(),
          " (set --server or SHERD_SERVER)"));
    }
    return FromGrpcStatus(s);
  }

 private:
  const GlobalOptions& g_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Admin::Stub> stub_;
};

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

int RunStatus(const GlobalOptions& g) {
  Admin admin(g);
  v1::StatusResponse r;
  absl::Status s = admin.Call(&v1::Admin::Stub::Status, v1::StatusRequest(), &r);
  if (!s.ok()) return Fail(s);
  if (g.json) return PrintJson(r);
  if (r.has_model()) {
    const v1::ModelSummary& m = r.model();
    std::printf("model %s: %lld tensors, %s parameters, %lld param groups, %s\n",
                m.name().c_str(), static_cast<long long>(m.tensors()),
                HumanCount(m.parameters()).c_str(),
                static_cast<long long>(m.param_groups()),
                m.initialized() ? "initialized" : "NOT initialized");
  } else {
    std::printf("no model registered\n");
  }
  Table t({"RANK", "ADDRESS", "HEALTH", "STEP", "APPLIED", "SKIPPED", "OWNED",
           "STATE", "SHARED", "LAST STEP"});
  const v1::StepTimings& lt = r.last_step_result().timings();
  std::string last = r.has_last_step_result()
      ? absl::StrFormat("%.1f ms (rs %.1f, norm %.1f, opt %.1f, ag %.1f)",
                        lt.total_ms(), lt.reduce_scatter_ms(), lt.norm_ms(),
                        lt.optimizer_ms(), lt.all_gather_ms())
      : "-";
  t.Add({absl::StrCat(r.rank(), "/", r.world_size()), r.address(), r.health(),
         absl::StrCat(r.last_step()), absl::StrCat(r.steps_applied()),
         absl::StrCat(r.steps_skipped()),
         absl::StrCat("[", r.owned_begin(), ", ", r.owned_end(), ")"),
         HumanBytes(r.state_bytes()), HumanBytes(r.shared_bytes()), last});
  std::fputs(t.Render().c_str(), stdout);
  return 0;
}

int RunTensors(const GlobalOptions& g) {
  Admin admin(g);
  v1::ListTensorsResponse r;
  absl::Status s =
      admin.Call(&v1::Admin::Stub::ListTensors, v1::ListTensorsRequest(), &r);
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
  Admin admin(g);
  v1::WhereRequest req;
  req.set_name(name);
  v1::WhereResponse r;
  absl::Status s = admin.Call(&v1::Admin::Stub::Where, req, &r);
  if (!s.ok()) return Fail(s);
  if (g.json) return PrintJson(r);
  std::printf("%s %s, %lld elements at flat offset %lld\n", r.tensor().name().c_str(),
              Shape(r.tensor()).c_str(), static_cast<long long>(r.tensor().numel()),
              static_cast<long long>(r.tensor().offset()));
  Table t({"RANK", "ELEMENTS", "COUNT", "FLAT"});
  for (const v1::Placement& p : r.placements()) {
    t.Add({absl::StrCat(p.rank()),
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
  Admin admin(g);
  v1::InspectRequest req;
  req.set_name(o.name);
  req.set_state(kind);
  req.set_begin(o.begin);
  req.set_count(o.count);
  req.set_values(o.values);
  req.set_max_values(o.max_values);
  v1::InspectResponse r;
  absl::Status s = admin.Call(&v1::Admin::Stub::Inspect, req, &r);
  if (!s.ok()) return Fail(s);
  if (g.json) return PrintJson(r);
  const v1::Stats& st = r.stats();
  std::printf("%s %s elements [%lld, %lld) on rank %d\n", o.name.c_str(),
              o.state.c_str(), static_cast<long long>(r.begin()),
              static_cast<long long>(r.end()), r.rank());
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
