// wgmma_rs_rate.cu: how fast the grad-weight kernel's wgmmas run (wgrad_wg_kernel in
// kernels/grad_weight.cu): A from registers (RS), B = an x tile through a no-swizzle K-major
// descriptor, N = 32 or 64, NS wgmmas a warpgroup after one fence (one per set, each its
// own accumulators), the previous batch waited for (wait_group 1), as the kernel's k-loop.
// With LOADA, each k-step also loads the next A fragments from shared memory, every set
// from its own window rows (a tap of its own: 8 positions apart): LOADA = 1 four scalar
// loads a set, 2 two 8-byte loads a set (channels co, co + 8 side by side, as the kernel's
// TF32 loads since the pair8 pack). (Until 2026-11-23 every set loaded the same addresses,
// the compiler kept one set's loads, and "7 sets, A loads" measured 4 loads a k-step, not
// 28.) One block of 2 warpgroups per SM; operand
// contents are irrelevant to speed. LOADA = 3: A shared by every set (one set's paired
// loads a k-step) and each set's B at its own address: the loop of a design where the
// tap's shift is carried by B (NOTES.md, "Grad weight: A shared across taps"). Prints cycles a wgmma per SM and the share of the
// tensor peak (2048 TF32 / 4096 bf16 dense flops a cycle an SM).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a scripts/wgmma_rs_rate.cu -o /tmp/wrs && /tmp/wrs
#include <cstdint>
#include <cstdio>

__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) | (uint64_t((sbo & 0x3FFFF) >> 4) << 32);
}

#define F8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define R16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define R32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// KIND 0: TF32 m64n32k8 RS; 1: TF32 m64n64k8 RS; 2: bf16 m64n32k16 RS; 3: TF32 m64n32k8 SS
template <int KIND>
struct Shape {
  static constexpr int N = KIND == 1 ? 64 : 32;
  static constexpr int K = KIND == 2 ? 16 : 8;
};

template <int KIND>
__device__ __forceinline__ void mma(float (&d)[Shape<KIND>::N / 2], const uint32_t (&a)[4], uint64_t da, uint64_t db) {
  if constexpr (KIND == 0)
    asm volatile("wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32 " R16 ", {%16, %17, %18, %19}, %20, 1, 1, 1;\n"
                 : F8(d, 0), F8(d, 8) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  else if constexpr (KIND == 1)
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 " R32 ", {%32, %33, %34, %35}, %36, 1, 1, 1;\n"
                 : F8(d, 0), F8(d, 8), F8(d, 16), F8(d, 24) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  else if constexpr (KIND == 2)
    asm volatile("wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " R16 ", {%16, %17, %18, %19}, %20, 1, 1, 1, 0;\n"
                 : F8(d, 0), F8(d, 8) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  else
    asm volatile("wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32 " R16 ", %16, %17, 1, 1, 1;\n"
                 : F8(d, 0), F8(d, 8) : "l"(da), "l"(db));
}

template <int KIND, int NS, int LOADA>
__global__ void __launch_bounds__(256, 1) rs_kernel(int iters, long long* cycles, float* sink) {
  constexpr int N = Shape<KIND>::N;
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t s0 = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const float* sf = reinterpret_cast<const float*>(smem);
  for (int i = threadIdx.x; i < 65536 / 4; i += 256) reinterpret_cast<float*>(smem)[i] = 0.f;
  float d[NS][N / 2];
  uint32_t a0[NS][4], a1[NS][4];
  for (int s = 0; s < NS; ++s) {
    for (int i = 0; i < N / 2; ++i) d[s][i] = 0.f;
    for (int e = 0; e < 4; ++e) a0[s][e] = a1[s][e] = 0u;
  }
  // A loads as the kernel's TF32 ones: rows gq and gq + 8 of a set at a position row's
  // offset (RS = 72 floats a position: 8 mod 16, conflict-free), positions tq and tq + 4
  const int lane = threadIdx.x % 32, gq = lane / 4, tq = lane % 4, w4 = (threadIdx.x / 32) % 4;
  auto load = [&](uint32_t (&a)[NS][4], int k0) {
#pragma unroll
    for (int s = 0; s < (LOADA == 3 ? 1 : NS); ++s) {
      const int off = 16 * w4 + (LOADA >= 2 ? 2 * gq : gq);
      const int pa = ((k0 + tq + 8 * s) % 96) * 72, pb = ((k0 + tq + 4 + 8 * s) % 96) * 72;
      if (LOADA >= 2) {
        const uint2 u = *reinterpret_cast<const uint2*>(sf + pa + off), v = *reinterpret_cast<const uint2*>(sf + pb + off);
        a[s][0] = u.x, a[s][1] = u.y, a[s][2] = v.x, a[s][3] = v.y;
      } else {
        a[s][0] = __float_as_uint(sf[pa + off]);
        a[s][1] = __float_as_uint(sf[pa + off + 8]);
        a[s][2] = __float_as_uint(sf[pb + off]);
        a[s][3] = __float_as_uint(sf[pb + off + 8]);
      }
    }
  };
  const uint32_t b = s0 + 36864, aa = s0;  // A window: 96 positions x 72 floats = 27 KB
  __syncthreads();
  auto step = [&](const uint32_t (&a)[NS][4], uint32_t (&nx)[NS][4], int it) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < NS; ++s)
      mma<KIND>(d[s], a[LOADA == 3 ? 0 : s], desc(aa + s * 1024, 1024, 128),
                desc(b + ((it + (LOADA == 3 ? 3 * s : 0)) % 8) * N * 16, N * 16, 128));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    if (LOADA) load(nx, it * 8);
  };
  const long long t0 = clock64();
  for (int it = 0; it < iters; it += 2) {
    step(a0, a1, it);
    step(a1, a0, it + 1);
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  const long long t1 = clock64();
  float s = 0.f;
  for (int j = 0; j < NS; ++j)
    for (int i = 0; i < N / 2; ++i) s += d[j][i];
  if (s == 12345.f) sink[threadIdx.x] = s;
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

template <int KIND, int NS, int LOADA>
void run(const char* name, int sms, long long* cyc, float* sink) {
  auto k = rs_kernel<KIND, NS, LOADA>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536);
  const int iters = 4096;
  k<<<sms, 256, 65536>>>(iters, cyc, sink);
  k<<<sms, 256, 65536>>>(iters, cyc, sink);
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) { printf("%s: %s\n", name, cudaGetErrorString(e)); return; }
  long long h[1024];
  cudaMemcpy(h, cyc, sizeof(long long) * sms, cudaMemcpyDeviceToHost);
  double mean = 0;
  for (int i = 0; i < sms; ++i) mean += double(h[i]) / sms;
  const double wgmmas = 2.0 * iters * NS;  // both warpgroups
  const double flops = 2.0 * 64 * Shape<KIND>::N * Shape<KIND>::K, peak = KIND == 2 ? 4096 : 2048;
  const double per = mean / wgmmas;
  printf("%-44s %7.2f cycles a wgmma an SM (ideal %5.1f): %5.1f%% of the tensor peak\n", name, per, flops / peak,
         100.0 * flops / peak / per);
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  long long* cyc;
  float* sink;
  cudaMalloc(&cyc, sizeof(long long) * 1024);
  cudaMalloc(&sink, sizeof(float) * 256);
  run<0, 7, 0>("tf32 m64n32k8 RS, 7 sets", sms, cyc, sink);
  run<0, 7, 1>("tf32 m64n32k8 RS, 7 sets, 4x4 B A loads", sms, cyc, sink);
  run<0, 7, 2>("tf32 m64n32k8 RS, 7 sets, 2x8 B A loads", sms, cyc, sink);
  run<0, 3, 0>("tf32 m64n32k8 RS, 3 sets", sms, cyc, sink);
  run<3, 7, 0>("tf32 m64n32k8 SS, 7 sets", sms, cyc, sink);
  run<1, 4, 0>("tf32 m64n64k8 RS, 4 sets", sms, cyc, sink);
  run<1, 4, 2>("tf32 m64n64k8 RS, 4 sets, 2x8 B A loads", sms, cyc, sink);
  run<2, 7, 0>("bf16 m64n32k16 RS, 7 sets", sms, cyc, sink);
  run<2, 7, 2>("bf16 m64n32k16 RS, 7 sets, 7 sets' A loads", sms, cyc, sink);
  run<0, 7, 3>("tf32 m64n32k8 RS, 7 sets, 1 set's A loads", sms, cyc, sink);
  run<0, 5, 3>("tf32 m64n32k8 RS, 5 sets, 1 set's A loads", sms, cyc, sink);
  run<2, 7, 3>("bf16 m64n32k16 RS, 7 sets, 1 set's A loads", sms, cyc, sink);
  run<2, 5, 3>("bf16 m64n32k16 RS, 5 sets, 1 set's A loads", sms, cyc, sink);
  run<1, 4, 3>("tf32 m64n64k8 RS, 4 sets, 1 set's A loads", sms, cyc, sink);
  return 0;
}
