// GPU optimizer benchmark: prints one JSON object (see docs/gpu.md).
//
//  1. The AdamW kernel alone (fp32 p, g, m, v: 28 B/param) on one flat
//     segment and on 64 segments, against a device-to-device copy of the
//     same 28 B/param (14 read + 14 written) measured in the same run: the
//     copy is the floor, the ratio says how close the kernel gets to it.
//  2. The whole optimizer step of one shard (unscale, global-norm summary,
//     non-finite skip, clip, AdamW, bf16 param copy):
//       fused     CudaOptimizerStep: 2 passes (4 + 30 B/param), decision on
//                 the device, no host round trip;
//       separate  the same work as a framework sequences it, one pass per
//                 stage (8 + 4 + 8 + 28 + 6 = 54 B/param) with the host
//                 reading the norm to decide skip/clip (like GradScaler's
//                 found_inf check); "separate_kernels" is the same passes
//                 without the host round trip.
// Times are medians of CUDA-event intervals on one stream. Run on the GPU
// machine beside ../shared/anchors/gpu_anchor.py (scripts/device_check.sh).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cuda_kernels/adamw_cuda.h"
#include "cuda_kernels/cuda_status.h"
#include "cuda_kernels/device.h"
#include "cuda_kernels/grad_ops.h"
#include "cuda_kernels/optimizer_step.h"

namespace sherd {
namespace {

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::printf("{\"error\": \"%s: %s\"}\n", what,
                std::string(s.message()).c_str());
    std::exit(1);
  }
}

template <class T>
T Value(absl::StatusOr<T> v, const char* what) {
  Check(v.status(), what);
  return *std::move(v);
}

// Median milliseconds of fn() between two events on `stream`.
double TimeMs(cudaStream_t stream, int iters, const std::function<void()>& fn) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) fn();  // warm up
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    cudaEventRecord(start, stream);
    fn();
    cudaEventRecord(stop, stream);
    Check(CudaStatus(cudaEventSynchronize(stop), "event"), "timing");
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

std::vector<AdamWSegment> Segments(int64_t n, int count) {
  std::vector<AdamWSegment> s;
  AdamWHyper decay{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f};
  AdamWHyper no_decay{1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f};
  for (int i = 0; i < count; ++i) {
    s.push_back({n * i / count, n * (i + 1) / count, i % 2 ? no_decay : decay});
  }
  return s;
}

std::string Field(const char* k, double v) {
  return absl::StrCat("\"", k, "\": ", v);
}

std::string RunSize(int64_t mi, int iters, cudaStream_t stream) {
  const int64_t n = mi << 20;
  void* s = stream;
  auto alloc = [&](size_t bytes) {
    void* p = Value(DeviceAlloc(bytes), "alloc");
    // 0x3c3c3c3c = 0.0115f: finite, positive (v must be), stays finite.
    Check(MemsetAsync(p, 0x3c, bytes, s), "memset");
    return p;
  };
  float* p = static_cast<float*>(alloc(n * 4));
  float* g = static_cast<float*>(alloc(n * 4));
  float* m = static_cast<float*>(alloc(n * 4));
  float* v = static_cast<float*>(alloc(n * 4));
  void* out = alloc(n * 2);
  void* copy_src = alloc(n * 14);
  void* copy_dst = alloc(n * 14);
  Check(StreamSynchronize(s), "setup");

  auto adamw = Value(CudaAdamW::Create(), "CudaAdamW");
  auto step = Value(CudaOptimizerStep::Create(), "CudaOptimizerStep");
  auto summary = Value(CudaGradSummary::Create(), "CudaGradSummary");
  const std::vector<AdamWSegment> flat = Segments(n, 1), seg64 = Segments(n, 64);
  AdamWBuffers buf;
  buf.grad = g;
  buf.param = p;
  buf.exp_avg = m;
  buf.exp_avg_sq = v;
  AdamWBuffers with_out = buf;
  with_out.param_out = out;
  with_out.param_out_type = ParamOutType::kBFloat16;
  int64_t t = 1;

  const double copy_ms = TimeMs(stream, iters, [&] {
    cudaMemcpyAsync(copy_dst, copy_src, n * 14, cudaMemcpyDeviceToDevice,
                    stream);
  });
  const double flat_ms = TimeMs(stream, iters, [&] {
    Check(adamw->Apply(buf, flat, t++, 1.0f, s), "adamw");
  });
  const double seg64_ms = TimeMs(stream, iters, [&] {
    Check(adamw->Apply(buf, seg64, t++, 1.0f, s), "adamw");
  });
  const double seg64_out_ms = TimeMs(stream, iters, [&] {
    Check(adamw->Apply(with_out, seg64, t++, 1.0f, s), "adamw");
  });

  // The whole step. grad_scale 1 and no clipping keep g constant across
  // iterations, but every pass of the separate flow still runs (a framework
  // multiplies by the unscale factor and the clip coefficient regardless).
  CudaStepArgs args;
  args.grad_scale = 1;
  args.max_grad_norm = 1e30f;
  const double fused_ms = TimeMs(stream, iters, [&] {
    args.adam_step = t++;
    Check(step->Run(with_out, n, seg64, args, s), "fused step");
  });
  auto separate = [&](bool host_round_trip) {
    Check(LaunchScaleCast(g, GradType::kFloat32, g, GradType::kFloat32, n,
                          1.0f / args.grad_scale, s), "unscale");
    Check(summary->Launch(g, GradType::kFloat32, n, s), "norm");
    float clip = 1.0f;
    if (host_round_trip) {
      const CudaGradStats st = Value(summary->Read(s), "read norm");
      if (st.non_finite > 0) return;  // skip
      const double norm = std::sqrt(st.sum_sq);  // already unscaled
      if (norm > args.max_grad_norm) {
        clip = static_cast<float>(args.max_grad_norm / (norm + 1e-6));
      }
    }
    Check(LaunchScaleCast(g, GradType::kFloat32, g, GradType::kFloat32, n,
                          clip, s), "clip");
    Check(adamw->Apply(buf, seg64, t++, 1.0f, s), "adamw");
    Check(LaunchScaleCast(p, GradType::kFloat32, out, GradType::kBFloat16, n,
                          1.0f, s), "bf16 copy");
  };
  const double separate_ms = TimeMs(stream, iters, [&] { separate(true); });
  const double separate_kernels_ms =
      TimeMs(stream, iters, [&] { separate(false); });

  for (void* x : {static_cast<void*>(p), static_cast<void*>(g),
                  static_cast<void*>(m), static_cast<void*>(v), out, copy_src,
                  copy_dst}) {
    Check(DeviceFree(x), "free");
  }

  const double copy_gbps = 28.0 * n / (copy_ms * 1e-3) / 1e9;
  auto gbps = [&](double bytes_per_param, double ms) {
    return bytes_per_param * n / (ms * 1e-3) / 1e9;
  };
  std::vector<std::string> f = {
      Field("params_mi", mi),
      Field("copy_28B_ms", copy_ms),
      Field("copy_GBps", copy_gbps),
      Field("adamw_flat_ms", flat_ms),
      Field("adamw_flat_GBps", gbps(28, flat_ms)),
      Field("adamw_flat_vs_copy", copy_ms / flat_ms),
      Field("adamw_64seg_ms", seg64_ms),
      Field("adamw_64seg_GBps", gbps(28, seg64_ms)),
      Field("adamw_64seg_vs_copy", copy_ms / seg64_ms),
      Field("adamw_64seg_bf16out_ms", seg64_out_ms),
      Field("adamw_64seg_bf16out_GBps_30B", gbps(30, seg64_out_ms)),
      Field("step_fused_ms", fused_ms),
      Field("step_fused_floor_ms_34B", copy_ms * 34 / 28),
      Field("step_separate_ms", separate_ms),
      Field("step_separate_kernels_ms", separate_kernels_ms),
      Field("step_separate_floor_ms_54B", copy_ms * 54 / 28),
      Field("step_fused_speedup_vs_separate", separate_ms / fused_ms),
      Field("step_fused_speedup_vs_separate_kernels",
            separate_kernels_ms / fused_ms),
  };
  return absl::StrCat("{", absl::StrJoin(f, ", "), "}");
}

int Main(int argc, char** argv) {
  std::vector<int64_t> sizes = {16, 256};
  int iters = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--iters=", 0) == 0) iters = std::atoi(a.c_str() + 8);
    if (a.rfind("--mi=", 0) == 0) sizes = {std::atoll(a.c_str() + 5)};
  }
  const std::string why = NoCudaDeviceReason();
  if (!why.empty()) {
    std::printf("{\"skipped\": \"no CUDA device visible: %s\"}\n", why.c_str());
    return 77;
  }
  Check(CudaSetDevice(0), "device");
  cudaStream_t stream;
  Check(CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                   "stream"), "stream");
  std::vector<std::string> results;
  for (int64_t mi : sizes) results.push_back(RunSize(mi, iters, stream));
  std::printf(
      "{\"device\": \"%s\", \"sm_count\": %d, \"iters\": %d,\n"
      " \"bytes_per_param_adamw\": 28,\n \"results\": [\n  %s\n ]}\n",
      Value(CudaDeviceName(0), "name").c_str(),
      Value(CudaMultiprocessorCount(0), "sms"), iters,
      absl::StrJoin(results, ",\n  ").c_str());
  return 0;
}

}  // namespace
}  // namespace sherd

int main(int argc, char** argv) { return sherd::Main(argc, argv); }
