// wgmma_rate.cu: how fast m64n256 wgmmas run with the window kernel's operand layouts
// (window_wg.cuh): no-swizzle K-major descriptors, B = the window at a tap's shift. One
// block of 2 warpgroups per SM, operands in shared memory (contents irrelevant to speed),
// batches of 8 wgmmas after one fence, the previous batch waited for (as the kernel does).
// Prints cycles a wgmma per SM for B shifts that are multiples of 8 positions (every core
// matrix on a 128-byte line) and for the kernel's shifts (th * C + tw).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a scripts/wgmma_rate.cu -o /tmp/wr && /tmp/wr
#include <cstdint>
#include <cstdio>

__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) | (uint64_t((sbo & 0x3FFFF) >> 4) << 32);
}

#define D128                                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                           \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                  \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                  \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "                  \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                  \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                  \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "       \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define F8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define OPS F8(0), F8(8), F8(16), F8(24), F8(32), F8(40), F8(48), F8(56), F8(64), F8(72), F8(80), F8(88), F8(96), F8(104), F8(112), F8(120)

template <bool BF16>
__device__ __forceinline__ void mma(float (&d)[128], uint64_t a, uint64_t b) {
  if (BF16)
    asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " D128 ", %128, %129, 1, 1, 1, 0, 0;\n"
                 : OPS : "l"(a), "l"(b));
  else
    asm volatile("wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32 " D128 ", %128, %129, 1, 1, 1;\n"
                 : OPS : "l"(a), "l"(b));
}

// shifts: 8 B-operand shifts in positions (16 bytes each); slice: bytes between the two K
// slices of the window (LBO); iters batches of 8 wgmmas a warpgroup.
template <bool BF16>
__global__ void __launch_bounds__(256, 1) rate_kernel(const int* shifts, int slice, int iters, long long* cycles, float* sink) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s0 = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  float d[128];
  for (int i = 0; i < 128; ++i) d[i] = 0.f;
  int sh[8];
  for (int j = 0; j < 8; ++j) sh[j] = shifts[j];
  const uint32_t a = s0, b = s0 + 8192 + (threadIdx.x / 128) * 256 * 16;
  __syncthreads();
  const long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < 8; ++j) mma<BF16>(d, desc(a + j * 1024, 1024, 128), desc(b + sh[j] * 16, slice, 128));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  const long long t1 = clock64();
  float s = 0.f;
  for (int i = 0; i < 128; ++i) s += d[i];
  if (s == 12345.f) sink[threadIdx.x] = s;
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

// The window kernel's stage loop (window_wg.cuh, non-split): a stage = 9 taps; wait for the
// stage's copies, fence, barrier, 8 wgmmas, wait for the previous stage, barrier, issue the
// copy of a later stage (`pieces` 16-byte cp.async a thread: piece q of the block reads
// q * 16 (contiguous) or, position-major as the packed source, bytes 16 * (q % 2) of
// position q / 2, positions `stride` bytes apart; from a region that moves on by `advance`
// bytes a stage, within `span` bytes: all in L2, or streaming from DRAM), the 9th tap.
// Ring of 3 stage buffers of 48 KB.
__device__ __forceinline__ void cp16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
template <bool BF16>
__global__ void __launch_bounds__(256, 1) stage_kernel(const int* shifts, int iters, int pieces, int stride,
                                                        int64_t advance, int64_t span, const char* gsrc,
                                                        long long* cycles, float* sink) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s0 = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  constexpr int kStage = 48 * 1024;
  float d[128];
  for (int i = 0; i < 128; ++i) d[i] = 0.f;
  int sh[9];
  for (int j = 0; j < 8; ++j) sh[j] = shifts[j];
  sh[8] = shifts[0];
  __syncthreads();
  const long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    const uint32_t buf = s0 + (it % 3) * kStage;
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const uint32_t a = buf + 32768, b = buf + (threadIdx.x / 128) * 256 * 16;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < 8; ++j) mma<BF16>(d, desc(a + j * 1024, 1024, 128), desc(b + sh[j] * 16, 8192, 128));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    __syncthreads();
    const uint32_t nb = s0 + ((it + 2) % 3) * kStage;
    const char* g = gsrc + (int64_t(blockIdx.x) * 1048576 + int64_t(it) * advance) % span;
    for (int q = 0; q < pieces; ++q) {
      const int piece = q * 256 + threadIdx.x;
      const int64_t off = stride == 16 ? int64_t(piece) * 16 : int64_t(piece >> 1) * stride + (piece & 1) * 16;
      cp16(nb + (piece * 16) % kStage, g + off);
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    mma<BF16>(d, desc(a + 8 * 1024, 1024, 128), desc(b + sh[8] * 16, 8192, 128));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  const long long t1 = clock64();
  float s = 0.f;
  for (int i = 0; i < 128; ++i) s += d[i];
  if (s == 12345.f) sink[threadIdx.x] = s;
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

// Mean over the SMs' blocks of the cycles each measured.
static double mean_cycles(const long long* dcy, int sms) {
  long long cy[1024];
  cudaMemcpy(cy, dcy, sms * sizeof(long long), cudaMemcpyDeviceToHost);
  double mean = 0;
  for (int i = 0; i < sms; ++i) mean += double(cy[i]) / sms;
  return mean;
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int smem = 200 * 1024, iters = 2000;
  int* dsh;
  long long* dcy;
  float* sink;
  cudaMalloc(&dsh, 8 * sizeof(int));
  cudaMalloc(&dcy, sms * sizeof(long long));
  cudaMalloc(&sink, 256 * sizeof(float));
  cudaFuncSetAttribute(rate_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaFuncSetAttribute(rate_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  struct Case {
    const char* name;
    int sh[8];
    int slice;
  } cases[] = {
      {"shifts 0 (aligned), slice 16384", {0, 0, 0, 0, 0, 0, 0, 0}, 16384},
      {"shifts 8k (aligned), slice 16384", {0, 8, 16, 64, 72, 80, 128, 136}, 16384},
      {"shifts 0..7, slice 16384", {0, 1, 2, 3, 4, 5, 6, 7}, 16384},
      {"kb61 shifts (C=68), slice 16384", {0, 1, 2, 68, 69, 70, 136, 137}, 16384},
      {"kb61 shifts (C=68), slice 16400", {0, 1, 2, 68, 69, 70, 136, 137}, 16400},
      {"kb61 shifts (C=68), slice 16448", {0, 1, 2, 68, 69, 70, 136, 137}, 16448},
  };
  for (int bf = 0; bf < 2; ++bf)
    for (const Case& c : cases) {
      cudaMemcpy(dsh, c.sh, sizeof(c.sh), cudaMemcpyHostToDevice);
      for (int rep = 0; rep < 2; ++rep) {
        if (bf) rate_kernel<true><<<sms, 256, smem>>>(dsh, c.slice, iters, dcy, sink);
        else rate_kernel<false><<<sms, 256, smem>>>(dsh, c.slice, iters, dcy, sink);
      }
      cudaError_t e = cudaDeviceSynchronize();
      if (e != cudaSuccess) { printf("error %s\n", cudaGetErrorString(e)); return 1; }
      const double mean = mean_cycles(dcy, sms);
      // 2 warpgroups x iters x 8 wgmmas share the SM's tensor cores
      printf("%s %-36s %7.1f cycles a wgmma per SM (128 = the tensor peak)\n", bf ? "bf16" : "tf32", c.name,
             mean / (2.0 * iters * 8));
    }
  // The stage loop: 9 wgmmas a warpgroup a stage (2304 cycles of tensor work a stage).
  char* gsrc;
  const size_t big = size_t(1) << 30;
  cudaMalloc(&gsrc, big + (size_t(8) << 20));
  cudaMemset(gsrc, 0, big + (size_t(8) << 20));
  cudaFuncSetAttribute(stage_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, 3 * 48 * 1024);
  const int kb61[8] = {0, 1, 2, 68, 69, 70, 136, 137};
  cudaMemcpy(dsh, kb61, sizeof(kb61), cudaMemcpyHostToDevice);
  struct SCase {
    const char* name;
    int pieces, stride;
    int64_t advance, span;
  } scases[] = {{"no copy", 0, 16, 0, 1 << 20},
                {"11 a thread, contiguous, in L2", 11, 16, 0, 64 << 20},
                {"11 a thread, position-major 192 B, in L2", 11, 192, 0, 64 << 20},
                {"11 a thread, contiguous, streaming", 11, 16, 45056, int64_t(big)},
                {"11 a thread, position-major 192 B, streaming", 11, 192, 270336, int64_t(big)}};
  for (const SCase& c : scases) {
    for (int rep = 0; rep < 2; ++rep)
      stage_kernel<false><<<sms, 256, 3 * 48 * 1024>>>(dsh, 500, c.pieces, c.stride, c.advance, c.span, gsrc, dcy, sink);
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) { printf("error %s\n", cudaGetErrorString(e)); return 1; }
    const double mean = mean_cycles(dcy, sms);
    printf("tf32 stage loop, %-46s %7.0f cycles a stage (2304 = tensor peak)\n", c.name, mean / 500);
  }
  return 0;
}
