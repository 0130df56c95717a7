// AdamW over a flat fp32 slice: the optimizer stage of the step pipeline.
//
// Contract: the caller owns every buffer; the optimizer keeps no pointers
// between calls and allocates nothing per step. One call updates a list of
// segments of the owned slice, each with its own hyperparameters (param
// groups), in ONE fused pass per element: read g, p, m, v; write p, m, v and,
// when requested, the param copy for the all-gather (p_out).
//
// Math (identical to torch.optim.AdamW, decoupled weight decay):
//   g'  = g * grad_multiplier            (mean over ranks, unscale, clipping)
//   p  *= 1 - lr * weight_decay
//   m   = beta1 * m + (1 - beta1) * g'
//   v   = beta2 * v + (1 - beta2) * g'^2
//   p  -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// Precision: the per-step constants (bias corrections, step size
// lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t), lr * weight_decay, 1 - beta)
// are computed once per Apply() in double and rounded to float; the
// per-element work is float32 with correctly rounded sqrt and division,
// evaluated as m += (1-beta1)(g'-m), v += (1-beta2)(g'^2-v),
// p -= lr*wd*p + step_size*m/denom, so that each stored value takes a single
// significant rounding per step (server/optimizer/adamw_kernel.h says why).
// bf16/fp16 grads are widened exactly; a bf16 p_out is the updated fp32
// master rounded to nearest even (NaN stays NaN), an fp32 p_out is the
// master itself.
//
// Where the instruction-set paths differ bitwise: the AVX2 and AVX-512 paths
// use FMA (one rounding for a*b+c) for the m, v and p updates, for g'^2 - v
// and for the denominator sqrt(v) / sqrt(1 - beta2^t) + eps; the scalar path
// rounds the product and the sum separately (built with -ffp-contract=off,
// the same on every platform). So scalar and SIMD results differ by an ulp
// here and there (tests/optimizer checks them against float64 within 1e-6
// relative after 100 steps). AVX2 and AVX-512 run the same operation
// sequence, tails included, and agree bit for bit; within one path the
// result is independent of the thread count and of chunk and segment
// boundaries.
//
// Memory: an Apply() over 1 Mi elements or more writes p_out with streaming
// (non-temporal) stores where it is vector-aligned: measured faster (see
// adamw.cc), and it leaves p_out in memory rather than in cache. Everything
// written is visible to the caller when Apply() returns.
//
// Threads: Apply() splits the work over `threads` workers of an internal pool
// created once at construction; Apply() itself must not be called
// concurrently on one AdamW object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"

namespace sherd {

struct AdamWHyper {
  float lr = 1e-3f;  // effective lr for this segment (step lr * group scale)
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
};

// One contiguous range of the owned slice, in elements relative to the
// start of the slice buffers passed to Apply().
struct AdamWSegment {
  int64_t begin = 0;
  int64_t end = 0;
  AdamWHyper hyper;
};

enum class GradType { kFloat32, kBFloat16, kFloat16 };
enum class ParamOutType { kNone, kFloat32, kBFloat16 };

struct AdamWBuffers {
  const void* grad = nullptr;  // GradType elements
  float* param = nullptr;      // fp32 master
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  void* param_out = nullptr;   // ParamOutType elements, or nullptr
  GradType grad_type = GradType::kFloat32;
  ParamOutType param_out_type = ParamOutType::kNone;
  // Out-of-place update: when set, the new param / moments go here and the
  // inputs above are only read (the step pipeline stages a multi-rank step
  // this way, so a failed all-gather leaves the state untouched). Each may
  // alias its own input or the gradient element for element.
  float* param_dst = nullptr;
  float* exp_avg_dst = nullptr;
  float* exp_avg_sq_dst = nullptr;
};

// Which instruction-set path runs the kernel.
enum class Isa { kScalar, kAvx2, kAvx512 };
std::string_view IsaName(Isa isa);
// Best path this CPU supports (checked at run time).
Isa BestIsa();
bool IsaSupported(Isa isa);

class AdamW {
 public:
  // threads >= 1. isa defaults to BestIsa(); an unsupported one falls back
  // to the best supported.
  explicit AdamW(int threads = 1);
  AdamW(int threads, Isa isa);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  Isa isa() const;
  int threads() const;

  // step is the 1-based step count t used for bias correction.
  // Segments with end <= begin are skipped. Bounds are the caller's
  // contract (the layout computes them); Apply() does not check them.
  void Apply(const AdamWBuffers& buf, std::span<const AdamWSegment> segments,
             int64_t step, float grad_multiplier);

  // Runs fn(worker) for worker in [0, threads()) on the optimizer's pool
  // (worker 0 on the calling thread), for the step's other passes over the
  // slice (the gradient norm) so they use the same cores without a second
  // pool. Same threading rules as Apply().
  void ParallelFor(absl::FunctionRef<void(int worker)> fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sherd
