// The GPU backend (see gpu_backend.h): device memory through the CUDA
// runtime helpers of cuda_kernels/device.h, and the step of
// cuda_kernels/optimizer_step.h driven through the NCCL backend's stream.
#include "server/gpu/gpu_backend.h"

#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda_kernels/device.h"
#include "cuda_kernels/optimizer_step.h"
#include "server/collective/nccl/nccl_collective.h"

namespace sherd {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

class CudaStateMemory final : public StateMemory {
 public:
  explicit CudaStateMemory(int device) : device_(device) {}

  std::string name() const override { return absl::StrCat("cuda:", device_); }
  int device() const override { return device_; }

  absl::StatusOr<void*> Allocate(size_t bytes) override {
    RETURN_IF_ERROR(CudaSetDevice(device_));
    ASSIGN_OR_RETURN(void* p, DeviceAlloc(bytes));
    absl::Status s = Zero(p, bytes);
    if (!s.ok()) {
      DeviceFree(p).IgnoreError();
      return s;
    }
    return p;
  }

  void Release(void* ptr) override {
    if (CudaSetDevice(device_).ok()) DeviceFree(ptr).IgnoreError();
  }

  absl::Status Copy(void* dst, const void* src, size_t bytes) override {
    RETURN_IF_ERROR(CudaSetDevice(device_));
    return ::sherd::Copy(dst, src, bytes);
  }

  absl::Status Zero(void* dst, size_t bytes) override {
    RETURN_IF_ERROR(CudaSetDevice(device_));
    RETURN_IF_ERROR(MemsetAsync(dst, 0, bytes, nullptr));
    return StreamSynchronize(nullptr);
  }

  absl::StatusOr<std::string> ExportHandle(void* base) override {
    RETURN_IF_ERROR(CudaSetDevice(device_));
    ASSIGN_OR_RETURN(CudaIpcHandle h, ExportIpcHandle(base));
    return std::string(h.bytes.data(), h.bytes.size());
  }

 private:
  const int device_;
};

// The step of server/step/step_pipeline.cc on device state. Same stages,
// same numerics (the kernels reproduce the CPU optimizer's roundings), same
// all-or-nothing rule for W > 1: AdamW writes the new params into P's own
// slice and the moments into the second set; the master copy and the flip
// happen only after the all-gather succeeded.
class GpuStepRunner final : public StepRunner {
 public:
  GpuStepRunner(int device, std::unique_ptr<CudaOptimizerStep> step,
                CudaStream stream)
      : device_(device), step_(std::move(step)), stream_(std::move(stream)) {}

  absl::StatusOr<StepOutcome> Run(ModelState& model, Collective& collective,
                                  const StepArgs& args) override {
    RETURN_IF_ERROR(ValidateStepArgs(args));
    if (!model.on_device() || model.memory()->device() != device_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the model's state is on ", model.device_name(),
          " but this server steps on cuda:", device_));
    }
    const int world = collective.world_size();
    auto* nccl = dynamic_cast<internal::NcclCollective*>(&collective);
    if (world > 1 && nccl == nullptr) {
      return absl::FailedPreconditionError(
          "device state on more than one rank needs the NCCL backend");
    }
    RETURN_IF_ERROR(CudaSetDevice(device_));
    // Kernels go on the collectives' stream, so each stage is ordered after
    // the previous one without extra synchronization.
    void* stream = nccl != nullptr ? nccl->stream() : stream_.get();
    const int64_t slice = model.layout().slice_size();
    float* owned_grads = model.grads() + model.owned().begin;
    float* owned_params = model.params() + model.owned().begin;
    StepOutcome out;
    const auto t_start = Clock::now();

    // 1. Reduce-scatter G (returns once the stream passed it).
    auto t = Clock::now();
    if (world > 1) RETURN_IF_ERROR(nccl->ReduceScatter(model.grads(), slice));
    out.reduce_scatter_ms = MsSince(t);

    // 2. Local sum of squares and non-finite count, all-reduced in place on
    //    the device.
    t = Clock::now();
    RETURN_IF_ERROR(step_->Summarize(owned_grads, GradType::kFloat32, slice, stream));
    if (world > 1) {
      RETURN_IF_ERROR(nccl->AllReduceDevice(step_->device_stats(), 2));
    } else {
      RETURN_IF_ERROR(StreamSynchronize(stream));
    }
    out.norm_ms = MsSince(t);

    // 3 + 4. Norm, skip and clip decided on the device; AdamW in one pass.
    t = Clock::now();
    AdamWBuffers buf;
    buf.grad = owned_grads;
    buf.grad_type = GradType::kFloat32;
    buf.param = model.master();
    buf.exp_avg = model.exp_avg();
    buf.exp_avg_sq = model.exp_avg_sq();
    if (world == 1) {
      buf.param_out = owned_params;
      buf.param_out_type = ParamOutType::kFloat32;
    } else {
      buf.param_dst = owned_params;
      buf.exp_avg_dst = model.next_exp_avg();
      buf.exp_avg_sq_dst = model.next_exp_avg_sq();
    }
    CudaStepArgs cargs;
    cargs.grad_scale = args.grad_scale;
    cargs.max_grad_norm = args.max_grad_norm;
    cargs.world_size = world;
    cargs.adam_step = args.adam_step;
    const std::vector<AdamWSegment> segs = model.Segments(args.lr, args.group_overrides);
    RETURN_IF_ERROR(step_->Apply(buf, segs, cargs, stream));
    ASSIGN_OR_RETURN(CudaStepReport report, step_->ReadReport(stream));
    out.optimizer_ms = MsSince(t);
    out.grad_norm = report.grad_norm;
    out.clip_coef = report.clip_coef;
    if (!report.applied) {
      // Every rank decided the same from the same all-reduced sums, and the
      // kernel wrote nothing.
      out.skip_reason = absl::StrCat(static_cast<int64_t>(report.non_finite),
                                     " non-finite gradient values");
      out.grad_norm = std::numeric_limits<double>::quiet_NaN();
      out.total_ms = MsSince(t_start);
      return out;
    }
    if (world > 1) {
      // 5. All-gather P, then commit the staged state.
      t = Clock::now();
      RETURN_IF_ERROR(nccl->AllGather(model.params(), slice));
      out.all_gather_ms = MsSince(t);
      t = Clock::now();
      RETURN_IF_ERROR(CopyAsync(model.master(), owned_params,
                                static_cast<size_t>(slice) * sizeof(float), stream));
      RETURN_IF_ERROR(StreamSynchronize(stream));
      model.FlipMoments();
      out.optimizer_ms += MsSince(t);
    }
    out.applied = true;
    out.total_ms = MsSince(t_start);
    return out;
  }

 private:
  const int device_;
  std::unique_ptr<CudaOptimizerStep> step_;
  CudaStream stream_;  // used when there is no NCCL communicator (W = 1)
};

}  // namespace

std::string GpuUnavailableReason() {
  std::string why = NoCudaDeviceReason();
  return why.empty() ? why : absl::StrCat("no usable CUDA device: ", why);
}

int VisibleGpuCount() {
  absl::StatusOr<int> n = CudaDeviceCount();
  return n.ok() ? *n : 0;
}

absl::StatusOr<GpuBackend> CreateGpuBackend(int device) {
  if (std::string why = GpuUnavailableReason(); !why.empty()) {
    return absl::FailedPreconditionError(why);
  }
  const int count = VisibleGpuCount();
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CUDA device ", device, " is not visible (this process sees ", count,
        count == 1 ? " device)" : " devices)"));
  }
  RETURN_IF_ERROR(CudaSetDevice(device));
  ASSIGN_OR_RETURN(std::unique_ptr<CudaOptimizerStep> step, CudaOptimizerStep::Create());
  ASSIGN_OR_RETURN(CudaStream stream, CudaStream::Create());
  GpuBackend b;
  b.memory = std::make_shared<CudaStateMemory>(device);
  b.runner = std::make_shared<GpuStepRunner>(device, std::move(step), std::move(stream));
  return b;
}

}  // namespace sherd
