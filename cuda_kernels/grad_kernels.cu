// Gradient passes: the summary (sum of squares of the finite values and the
// count of non-finite ones, pass 1 of the step) and the scale-and-cast
// kernel (unscale, clip, dtype conversions, the bf16 param copy).
//
// The summary is deterministic: each thread accumulates its grid-stride
// elements in a fixed order, blocks reduce in a fixed tree, and the last
// block to finish adds the per-block partials in block order. The result
// depends only on the data and the grid size (fixed per device), so a
// restarted step reproduces its norm bit for bit, as the CPU path does.
// Squares are accumulated in double: exact products of floats, and a slice
// of 10^9 elements still sums without visible loss.
#include <cuda_runtime.h>

#include "cuda_kernels/internal/adamw_math.h"
#include "cuda_kernels/internal/element_io.cuh"
#include "cuda_kernels/internal/launch.h"

namespace sherd::cuda_internal {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxWarps = 256 / kWarp;

__device__ __forceinline__ void Accumulate(float x, double& sum,
                                           unsigned long long& bad) {
  const bool finite = IsFiniteBits(x);
  const double d = finite ? static_cast<double>(x) : 0.0;
  sum = __fma_rn(d, d, sum);
  bad += finite ? 0ull : 1ull;
}

// Sums (sum, bad) over the block in a fixed tree; the totals are valid in
// thread 0 only. Requires blockDim.x a multiple of 32, at most 256.
__device__ void BlockReduce(double& sum, unsigned long long& bad) {
  __shared__ double warp_sum[kMaxWarps];
  __shared__ unsigned long long warp_bad[kMaxWarps];
  for (int off = kWarp / 2; off > 0; off /= 2) {
    sum += __shfl_down_sync(0xffffffffu, sum, off);
    bad += __shfl_down_sync(0xffffffffu, bad, off);
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    warp_sum[warp] = sum;
    warp_bad[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    sum = 0;
    bad = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) {
      sum += warp_sum[w];
      bad += warp_bad[w];
    }
  }
  __syncthreads();  // warp_* may be reused by a second call
}

template <ElemType kGrad>
__global__ void __launch_bounds__(256) GradSummaryKernel(const SummaryLaunch a) {
  double sum = 0;
  unsigned long long bad = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                      threadIdx.x;
  const int64_t vecs = a.vectorized ? a.n / kVecWidth : 0;
  for (int64_t k = tid; k < vecs; k += stride) {
    float x[4];
    Io<kGrad>::Load4(a.grad, k * kVecWidth, x);
#pragma unroll
    for (int j = 0; j < 4; ++j) Accumulate(x[j], sum, bad);
  }
  for (int64_t i = vecs * kVecWidth + tid; i < a.n; i += stride) {
    Accumulate(Io<kGrad>::Load1(a.grad, i), sum, bad);
  }
  BlockReduce(sum, bad);

  SummaryScratch* s = a.scratch;
  __shared__ bool last;
  if (threadIdx.x == 0) {
    s->partial_sum[blockIdx.x] = sum;
    s->partial_bad[blockIdx.x] = bad;
    __threadfence();  // partials visible before the count says so
    last = atomicAdd(&s->blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  sum = 0;
  bad = 0;
  for (int b = threadIdx.x; b < static_cast<int>(gridDim.x); b += blockDim.x) {
    sum += __ldcg(&s->partial_sum[b]);  // L2: written by other SMs
    bad += __ldcg(&s->partial_bad[b]);
  }
  BlockReduce(sum, bad);
  if (threadIdx.x == 0) {
    s->result.sum_sq = sum;
    s->result.non_finite = static_cast<double>(bad);
    s->blocks_done = 0;  // ready for the next launch on this scratch
  }
}

template <ElemType kSrc, ElemType kDst>
__global__ void __launch_bounds__(256) ScaleCastKernel(const CastLaunch a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                      threadIdx.x;
  const int64_t vecs = a.vectorized ? a.n / kVecWidth : 0;
  for (int64_t k = tid; k < vecs; k += stride) {
    float x[4];
    Io<kSrc>::Load4(a.src, k * kVecWidth, x);
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = Mul(x[j], a.multiplier);
    Io<kDst>::Store4(a.dst, k * kVecWidth, x);
  }
  for (int64_t i = vecs * kVecWidth + tid; i < a.n; i += stride) {
    Io<kDst>::Store1(a.dst, i, Mul(Io<kSrc>::Load1(a.src, i), a.multiplier));
  }
}

template <ElemType kSrc>
int LaunchCastFrom(const CastLaunch& a) {
  const auto s = static_cast<cudaStream_t>(a.stream);
  switch (a.dst_type) {
    case ElemType::kFloat32:
      ScaleCastKernel<kSrc, ElemType::kFloat32><<<a.blocks, a.threads, 0, s>>>(a);
      break;
    case ElemType::kBFloat16:
      ScaleCastKernel<kSrc, ElemType::kBFloat16><<<a.blocks, a.threads, 0, s>>>(a);
      break;
    case ElemType::kFloat16:
      ScaleCastKernel<kSrc, ElemType::kFloat16><<<a.blocks, a.threads, 0, s>>>(a);
      break;
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int LaunchGradSummary(const SummaryLaunch& a) {
  const auto s = static_cast<cudaStream_t>(a.stream);
  switch (a.grad_type) {
    case ElemType::kFloat32:
      GradSummaryKernel<ElemType::kFloat32><<<a.blocks, a.threads, 0, s>>>(a);
      break;
    case ElemType::kBFloat16:
      GradSummaryKernel<ElemType::kBFloat16><<<a.blocks, a.threads, 0, s>>>(a);
      break;
    case ElemType::kFloat16:
      GradSummaryKernel<ElemType::kFloat16><<<a.blocks, a.threads, 0, s>>>(a);
      break;
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int LaunchScaleCast(const CastLaunch& a) {
  switch (a.src_type) {
    case ElemType::kFloat32:
      return LaunchCastFrom<ElemType::kFloat32>(a);
    case ElemType::kBFloat16:
      return LaunchCastFrom<ElemType::kBFloat16>(a);
    case ElemType::kFloat16:
      return LaunchCastFrom<ElemType::kFloat16>(a);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace sherd::cuda_internal
