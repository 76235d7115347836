// Bit-for-bit check of kernels/common.cuh's TF32 rounding: the integer emulation
// (round_tf32_int, what sm_80..sm_89 run) against sm_90's cvt.rn.tf32.f32 (what round_tf32
// runs there), over all 2^32 fp32 bit patterns. NaN results match any NaN.
// Build and run on an sm_90 card (about a second):
//   nvcc -arch=sm_90a -o /tmp/tf32_cvt_check scripts/tf32_cvt_check.cu && /tmp/tf32_cvt_check
// The two functions are copies of common.cuh's (which needs ATen's headers to compile):
// keep them in step.
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>

__device__ __forceinline__ float emulated(float v) {  // round_tf32_int, common.cuh
  uint32_t u = __float_as_uint(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;
  u += 0xfffu + ((u >> 13) & 1u);
  return __uint_as_float(u & 0xffffe000u);
}
__device__ __forceinline__ float instruction(float v) {
  uint32_t r;
  asm("cvt.rn.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
}

__global__ void check(unsigned long long* bad, uint32_t* first) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < (uint64_t(1) << 32); i += stride) {
    const float v = __uint_as_float(uint32_t(i));
    const float a = emulated(v), b = instruction(v);
    const bool same = __float_as_uint(a) == __float_as_uint(b) || (a != a && b != b);
    if (!same) {
      atomicAdd(bad, 1ull);
      atomicMin(first, uint32_t(i));
    }
  }
}

int main() {
  unsigned long long* bad;
  uint32_t* first;
  cudaMalloc(&bad, 8);
  cudaMalloc(&first, 4);
  cudaMemset(bad, 0, 8);
  cudaMemset(first, 0xff, 4);
  check<<<132 * 16, 256>>>(bad, first);
  unsigned long long h_bad = 0;
  uint32_t h_first = 0;
  cudaMemcpy(&h_bad, bad, 8, cudaMemcpyDeviceToHost);
  cudaMemcpy(&h_first, first, 4, cudaMemcpyDeviceToHost);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) { printf("CUDA error: %s\n", cudaGetErrorString(err)); return 2; }
  printf("tf32 rounding: %llu of 2^32 inputs differ", h_bad);
  if (h_bad) printf(" (smallest bit pattern 0x%08x)", h_first);
  printf("\n");
  return h_bad ? 1 : 0;
}
