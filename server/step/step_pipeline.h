// The step pipeline: one optimizer step on one shard server.
//
//   trainer r                    shard server r                    all ranks
//   backward writes G  ------>   1 reduce-scatter G -> g_r  <---- collective ---->
//   Step(s)                      2 |g| (local sum of squares, non-finite count)
//                                  all-reduce -> global norm, skip decision
//                                3 AdamW on the owned slice (p_r, m_r, v_r, g_r),
//                                  mean over ranks, unscale and clipping folded
//                                  into one gradient multiplier
//                                4 the same pass writes p_r into P[r-slice]
//                                5 all-gather P     <---------- collective ---->
//   forward reads P  <------     StepOutcome
//
// Every rank takes the same skip decision because it is made from all-reduced
// values. With more than one rank, steps 3-4 write the new state to staging
// (P's and G's own buffers) and commit it only after step 5 succeeds, so a
// peer lost at any point leaves every survivor's state as it was. The pipeline holds no state of its own; the caller serializes
// steps on one model.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>
#include <string>

#include "absl/status/statusor.h"
#include "server/collective/collective.h"
#include "server/optimizer/adamw.h"
#include "server/state/model_state.h"

namespace sherd {

struct StepArgs {
  float lr = 0;
  float grad_scale = 1;     // gradients are divided by it
  float max_grad_norm = 0;  // 0: no clipping
  int64_t adam_step = 1;    // 1-based count of applied steps, for bias correction
  // Per-step hyperparameters by param group index (empty: none); a group
  // with a value uses it instead of lr * lr_scale and its registered values.
  std::vector<std::optional<AdamWHyper>> group_overrides = {};
};

struct StepOutcome {
  bool applied = false;
  std::string skip_reason;  // empty when applied
  double grad_norm = 0;
  double clip_coef = 1;
  double reduce_scatter_ms = 0;
  double norm_ms = 0;
  double optimizer_ms = 0;
  double all_gather_ms = 0;
  double total_ms = 0;
};

// Validates args (INVALID_ARGUMENT for a non-finite or negative lr, scale or
// max norm, a grad_scale whose reciprocal overflows, or out-of-range group
// overrides) before touching any state.
absl::Status ValidateStepArgs(const StepArgs& args);

// Runs one step on host state. A collective failure returns UNAVAILABLE.
absl::StatusOr<StepOutcome> RunStep(ModelState& model, Collective& collective,
                                    AdamW& optimizer, const StepArgs& args);

// How a server steps its model: RunStep for host state, or the GPU pipeline
// (server/gpu/gpu_backend.h) for device state. Same contract as RunStep;
// the caller serializes calls.
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  virtual absl::StatusOr<StepOutcome> Run(ModelState& model,
                                          Collective& collective,
                                          const StepArgs& args) = 0;
};

// RunStep with its own AdamW of `threads` threads. FAILED_PRECONDITION for
// device state.
std::unique_ptr<StepRunner> CreateCpuStepRunner(int threads);

}  // namespace sherd
