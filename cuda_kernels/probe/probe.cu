// Compiles one kernel with the bf16/fp16 headers the real kernels use.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

__global__ void Probe(float* x) {
  x[threadIdx.x] = __half2float(__float2half_rn(x[threadIdx.x])) +
                   __fmaf_rn(x[threadIdx.x], 2.0f, 1.0f);
}

int main() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? 0 : 0;
}
