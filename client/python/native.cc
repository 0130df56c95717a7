// sherd._native: the Python binding of the C++ client (client/client.h).
// There is one client implementation; this file only converts. The torch
// layer (sherd/torch/) builds on it.
//
//   c = _native.Client("127.0.0.1:7070", deadline_s=60)
//   info = c.register("gpt", [("w", [4, 8], "default")], [{"name": "default"}])
//   p = c.params()          # numpy float32 view of the server's P (no copy)
//   c.init_params()
//   r = c.step(lr=1e-3)     # dict: applied, grad_norm, timings, ...
//
// Errors: every failed call raises sherd.errors.SherdError (a subclass per
// status code), built by sherd.errors.from_status.
// Threads: blocking calls release the GIL. A Client is not thread-safe.
// Views: params()/grads() keep the Client alive; they are invalid after a
// later register() (it maps the buffers again).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "client/client.h"

namespace nb = nanobind;

namespace sherd {
namespace {

[[noreturn]] void Raise(const absl::Status& s) {
  nb::object err = nb::module_::import_("sherd.errors")
                       .attr("from_status")(static_cast<int>(s.code()),
                                            std::string(s.message()));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
  throw nb::python_error();
}
void Check(const absl::Status& s) {
  if (!s.ok()) Raise(s);
}
template <class T>
T Check(absl::StatusOr<T> s) {
  if (!s.ok()) Raise(s.status());
  return *std::move(s);
}

// Runs a blocking client call without the GIL (errors are raised after,
// with it).
template <class F>
auto WithoutGil(F&& fn) -> decltype(fn()) {
  nb::gil_scoped_release release;
  return fn();
}

using Array = nb::ndarray<nb::numpy, float, nb::ndim<1>, nb::c_contig>;
using InArray = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutArray = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// A buffer by its Python name: P, G, or a kind of optimizer state.
enum class Whole { kParams, kGrads, kNone };
struct Buffer {
  Whole whole = Whole::kNone;
  Client::State state = Client::State::kMaster;
};
Buffer BufferFromName(const std::string& name) {
  if (name == "params") return {Whole::kParams};
  if (name == "grads") return {Whole::kGrads};
  if (name == "master") return {Whole::kNone, Client::State::kMaster};
  if (name == "exp_avg") return {Whole::kNone, Client::State::kExpAvg};
  if (name == "exp_avg_sq") return {Whole::kNone, Client::State::kExpAvgSq};
  throw nb::value_error(("unknown buffer '" + name +
                         "' (params, grads, master, exp_avg, exp_avg_sq)").c_str());
}

// The Python-visible client: owns a sherd::Client.
class PyClient {
 public:
  PyClient(const std::string& address, double deadline_s, bool use_shared_memory,
           int max_retries) {
    ClientOptions o;
    o.deadline = absl::Seconds(deadline_s);
    o.use_shared_memory = use_shared_memory;
    o.max_retries = max_retries;
    o.map_device_buffers = false;  // the torch layer is a CPU trainer so far
    client_ = Check(WithoutGil([&] { return Client::Connect(address, o); }));
  }

  nb::dict Register(const std::string& name,
                    const std::vector<std::tuple<std::string, std::vector<int64_t>,
                                                 std::string>>& tensors,
                    const std::vector<nb::dict>& groups) {
    ModelDef model{.name = name};
    for (const auto& [n, shape, group] : tensors) model.tensors.push_back({n, shape, group});
    for (const nb::dict& g : groups) {
      GroupDef d;
      d.name = nb::cast<std::string>(g["name"]);
      if (g.contains("lr_scale")) d.lr_scale = nb::cast<float>(g["lr_scale"]);
      if (g.contains("beta1")) d.beta1 = nb::cast<float>(g["beta1"]);
      if (g.contains("beta2")) d.beta2 = nb::cast<float>(g["beta2"]);
      if (g.contains("eps")) d.eps = nb::cast<float>(g["eps"]);
      if (g.contains("weight_decay")) d.weight_decay = nb::cast<float>(g["weight_decay"]);
      model.groups.push_back(std::move(d));
    }
    RegisterInfo info = Check(WithoutGil([&] { return client_->Register(model); }));
    nb::dict d;
    d["reattached"] = info.reattached;
    d["initialized"] = info.initialized;
    d["next_step"] = info.next_step;
    d["adam_step"] = info.adam_step;
    d["rank"] = info.rank;
    d["world_size"] = info.world_size;
    d["shared_memory"] = info.shared_memory;
    d["device"] = info.device;
    return d;
  }

  void InitParams(bool force, int64_t adam_step) {
    Check(WithoutGil([&] { return client_->InitParams(force, adam_step); }));
  }

  nb::dict Step(float lr, float grad_scale, float max_grad_norm,
                const std::vector<std::tuple<std::string, float, float, float, float,
                                             float>>& groups) {
    StepOptions o{.lr = lr, .grad_scale = grad_scale, .max_grad_norm = max_grad_norm};
    for (const auto& [name, glr, b1, b2, eps, wd] : groups) {
      o.groups.push_back({.name = name, .lr = glr, .beta1 = b1, .beta2 = b2,
                          .eps = eps, .weight_decay = wd});
    }
    StepResult res = Check(WithoutGil([&] { return client_->Step(o); }));
    nb::dict d;
    d["step"] = res.step;
    d["applied"] = res.applied;
    d["skip_reason"] = res.skip_reason;
    d["grad_norm"] = res.grad_norm;
    d["clip_coef"] = res.clip_coef;
    d["replayed"] = res.replayed;
    d["retries"] = res.retries;
    d["server_ms"] = res.server_ms;
    d["reduce_scatter_ms"] = res.reduce_scatter_ms;
    d["norm_ms"] = res.norm_ms;
    d["optimizer_ms"] = res.optimizer_ms;
    d["all_gather_ms"] = res.all_gather_ms;
    return d;
  }

  int64_t Checkpoint() {
    return Check(WithoutGil([&] { return client_->Checkpoint(); }));
  }

  nb::dict CheckpointStatus() {
    CheckpointProgress p = Check(WithoutGil([&] { return client_->CheckpointStatus(); }));
    nb::dict d;
    d["enabled"] = p.enabled;
    d["in_flight"] = p.in_flight;
    d["step"] = p.step;
    d["last_committed_step"] = p.last_committed_step;
    d["last_committed"] = p.last_committed;
    d["last_error"] = p.last_error;
    d["restored_from"] = p.restored_from;
    return d;
  }

  nb::dict Health() {
    ServerHealth h = Check(WithoutGil([&] { return client_->Health(); }));
    nb::dict d;
    d["health"] = h.health;
    d["reason"] = h.reason;
    d["epoch"] = h.epoch;
    d["last_step"] = h.last_step;
    d["restored_from"] = h.restored_from;
    return d;
  }

  void Push(const std::string& buffer, InArray data, int64_t offset) {
    std::span<const float> span(data.data(), data.shape(0));
    const Buffer b = BufferFromName(buffer);
    Check(WithoutGil([&] {
      return b.whole == Whole::kParams ? client_->PushParams(span, offset)
             : b.whole == Whole::kGrads ? client_->PushGrads(span, offset)
                                        : client_->PushState(b.state, span, offset);
    }));
  }

  void Fetch(const std::string& buffer, OutArray out, int64_t offset) {
    std::span<float> span(out.data(), out.shape(0));
    const Buffer b = BufferFromName(buffer);
    Check(WithoutGil([&] {
      return b.whole == Whole::kParams ? client_->FetchParams(span, offset)
             : b.whole == Whole::kGrads ? client_->FetchGrads(span, offset)
                                        : client_->FetchState(b.state, span, offset);
    }));
  }

  // A zero-copy view of P or G (shared memory, or the client's local copy
  // when the server is remote). Keeps `self` alive.
  Array View(nb::handle self, bool params) {
    std::span<float> s = params ? client_->params() : client_->grads();
    if (s.data() == nullptr) {
      Raise(absl::FailedPreconditionError("call register first"));
    }
    size_t shape[1] = {s.size()};
    return Array(s.data(), 1, shape, self);
  }

  // [(name, shape, offset, numel)] in layout order.
  std::vector<std::tuple<std::string, std::vector<int64_t>, int64_t, int64_t>> Layout()
      const {
    std::vector<std::tuple<std::string, std::vector<int64_t>, int64_t, int64_t>> out;
    for (const TensorPlacement& t : client_->layout().tensors()) {
      out.emplace_back(t.desc.name, t.desc.shape, t.offset, t.numel);
    }
    return out;
  }
  std::pair<int64_t, int64_t> Owned(int rank) const {
    Range r = client_->layout().Slice(rank);
    return {r.begin, r.end};
  }
  int64_t total() const { return client_->layout().total(); }
  int64_t next_step() const { return client_->next_step(); }
  bool shared_memory() const { return client_->shared_memory(); }

 private:
  std::unique_ptr<Client> client_;
};

}  // namespace
}  // namespace sherd

NB_MODULE(_native, m) {
  using sherd::PyClient;
  m.doc() = "sherd's C++ client (client/client.h), bound with nanobind";
  // The torch layer's parameters view the client's buffers until the
  // interpreter exits, so a Client alive at exit is expected, not a leak.
  nb::set_leak_warnings(false);
  nb::class_<PyClient>(m, "Client")
      .def(nb::init<const std::string&, double, bool, int>(), nb::arg("address"),
           nb::arg("deadline_s") = 60.0, nb::arg("use_shared_memory") = true,
           nb::arg("max_retries") = 5,
           "Connects to a shard server; raises Unavailable naming the address "
           "when none answers within deadline_s.")
      .def("register", &PyClient::Register, nb::arg("name"), nb::arg("tensors"),
           nb::arg("groups"),
           "Registers the model: tensors are (name, shape, group) in order; "
           "groups are dicts with name and optional lr_scale, beta1, beta2, "
           "eps, weight_decay. Returns the server's answer as a dict.")
      .def("init_params", &PyClient::InitParams, nb::arg("force") = false,
           nb::arg("adam_step") = 0,
           "P becomes the fp32 master copy; moments are zeroed; the optimizer "
           "continues from adam_step applied steps.")
      .def("step", &PyClient::Step, nb::arg("lr"), nb::arg("grad_scale") = 1.0f,
           nb::arg("max_grad_norm") = 0.0f,
           nb::arg("groups") = std::vector<std::tuple<std::string, float, float, float,
                                                      float, float>>{},
           "One optimizer step. groups: (name, lr, beta1, beta2, eps, "
           "weight_decay) per param group for this step.")
      .def("checkpoint", &PyClient::Checkpoint,
           "Asks this rank's server to save a checkpoint after its last step.")
      .def("checkpoint_status", &PyClient::CheckpointStatus,
           "This server's checkpoint progress as a dict (in_flight, step, "
           "last_committed_step, last_error, restored_from, ...).")
      .def("health", &PyClient::Health,
           "This server's health as a dict: health (SERVING, NOT_SERVING, "
           "NO_MODEL), reason, epoch (membership epoch), last_step, "
           "restored_from.")
      .def("push", &PyClient::Push, nb::arg("buffer"), nb::arg("data"),
           nb::arg("offset") = 0,
           "Writes float32 data into params, grads, master, exp_avg or "
           "exp_avg_sq at a flat-layout offset (the optimizer state only "
           "within this rank's owned slice).")
      .def("fetch", &PyClient::Fetch, nb::arg("buffer"), nb::arg("out"),
           nb::arg("offset") = 0, "Reads into `out`; the buffers as for push.")
      .def("params", [](nb::handle self) {
             return nb::cast<PyClient&>(self).View(self, true);
           }, "P as a float32 numpy view (shared memory: zero-copy).")
      .def("grads", [](nb::handle self) {
             return nb::cast<PyClient&>(self).View(self, false);
           }, "G as a float32 numpy view.")
      .def("layout", &PyClient::Layout,
           "[(name, shape, offset, numel)] of the flat layout, in order.")
      .def("owned", &PyClient::Owned, nb::arg("rank"),
           "(begin, end): the flat range rank `rank` owns.")
      .def_prop_ro("total", &PyClient::total)
      .def_prop_ro("next_step", &PyClient::next_step)
      .def_prop_ro("shared_memory", &PyClient::shared_memory);
}
