// window_wg.cuh: the window convolution of window_tc.cuh on Hopper's warpgroup MMAs
// (wgmma, sm_90a), for fp32-with-TF32, fp16 and bf16, where a source position steps one
// window column per output position (mult = 1 in h and w: every forward phase, and grad
// input at stride 1 in h and w).
//
// GEMM view, transposed against window_tc.cuh so that the window is the operand read
// through a descriptor: per block, D[co][q] += sum_k Wt[co][k] * window[q + shift(t)][k]
//   M = 64 output channels (wgmma M; fewer are zero rows), from blockIdx.y * 64
//   N = 512 "virtual" positions q: 2 warpgroups x 256 (wgmma N = 256)
//   K = (chunk of 32 bytes of source channels, depth tap td) stages x (th, tw) taps
// Virtual positions. The window holds source rows x C columns, C = Pw + span_w, and an
// output position (jh, jw) is numbered q = jh * C + jw, jw in [0, C): then the window
// position that tap (th, tw) reads for q is q - (first row of the block) * C + sh * C + sw,
// one shift for all of a tap's positions. So a tap's B operand is the window itself at an
// offset, and wgmma's descriptor walks it: B core matrices (8 positions x 16 bytes) are
// contiguous 128 bytes. The columns jw >= Pw are computed and never stored (span_w / C
// of the MMAs: 6% on kb68).
//
// Taps stacked in M (prm.stack = J > 1: 32 output channels a group or fewer, stride 1 in
// w). With M = the output channels, fewer than 64 leave rows of every wgmma empty (kb58's
// forward: 16 of 64). Instead A's rows are (j, co), row j * out_cg + co, j < J, J * out_cg
// <= 64: the weights of J w taps whose window shifts are s0 + j * dw (dw = |w dilation|),
// read against B at the smallest shift s0. Row j at virtual position q is then tap j's
// term of output q - j * dw, and the epilogue sums y[co][q] = sum_j D[(j, co)][q + j * dw]
// (fixed order). The w taps run as ceil(kW / J) groups ("stacked taps"; taps past kW are
// zero rows); q + j * dw stays in the window row, since it reaches at most span_w columns
// past q. A block computes Q positions and stores the first q_step = Q - (J - 1) dw; the
// next block starts there.
// Shared memory of a stage (cp.async from the packed source, zero-fill outside it, as in
// window_tc.cuh): the window as two "K slices" (bytes 0-15 and 16-31 of each position's
// chunk), each [position][16 bytes] -- wgmma's no-swizzle K-major layout with LBO = the
// slice stride, SBO = 128 -- then the weights of the stage's (th, tw) taps, each
// [K slice][64 co][16 bytes] (LBO = 1024, SBO = 128), arranged once per call by
// transform_weight_wg_kernel. Stages are copied `stages` deep.
// Who copies. Warp-specialized (TF32, fp16, bf16, where 3 or more stages fit): a third
// warpgroup (threads 256..383, the producers) issues every cp.async of a stage and arrives
// on the buffer's full mbarrier through cp.async.mbarrier.arrive; the MMA warpgroups wait
// on it, issue all the stage's taps, and once the previous stage's wgmmas are done release
// its buffer on its empty mbarrier. The MMA warps issue nothing but wgmmas, so the tensor
// pipe is not left idle while they issue copies (that cost ~1000-2000 cycles a stage, and
// two producer warps could not keep up: NOTES.md, producer warps). Else (3xTF32, two
// stages, or CT3D_WG_WS=0): the MMA warps copy, between their wgmmas: once a stage's
// first taps are issued and the previous stage's are done, that buffer gets the copy of a
// later stage while the tensor pipe works; then the stage's other taps.
//
// Accumulators: m64n256 fp32, 128 registers a thread (m64n128 and 64 in the half-width
// shape, HALF, which runs two blocks an SM; opt-in); thread (warp w of its warpgroup,
// lane l) holds D[16w + l/4 + 8h][8i + 2(l%4) + e] in d[4i + 2h + e]. The epilogue puts
// the block's D through shared memory so that the stores run along positions (coalesced
// in NCDHW), one thread a position, 64 channels each. (Stored straight from the
// accumulators, the address work of 128 scattered stores a thread was a quarter of the
// kernel's time: NOTES.md, wgmma v1.)
//
// fp32 strict (3xTF32, WgShape<true>): each operand is split as big + small (split_tf32);
// the weight transform writes both parts of a tap (big, then small), and each thread
// splits the window pieces it copied in place (big) and two slices on (small), so a stage
// holds four window slices. A tap is three wgmmas, big x small and small x big first, then
// big x big. The tensor core aligns with truncation, so the error of a chain grows with
// its MMAs: each warpgroup keeps a chain accumulator besides its sum (m64n128, two sets
// of 64 registers, 256 positions a block), restarts it every kWgFlushTaps taps and adds
// it into the sum with rounded fp32 adds (window_tc.cuh's kFlushTaps, same reason).
//
// Sections: PTX helpers, kernels (weight transform, window convolution), host.
#pragma once
#include "window_tc.cuh"

#include <atomic>
#include <vector>

namespace ct3d {

constexpr int kWgM = 64;                 // output channels a block (wgmma M)
constexpr int kWgGroups = 2;             // warpgroups a block
constexpr int kWgTapBytes = 2 * kWgM * 16;  // a tap's weights (one part): 2 K slices x 64 co x 16 bytes
constexpr int kWgFlushTaps = 8;          // 3xTF32: taps a chain before it is added into the sum
constexpr int kWgConsumers = 256;        // the MMA threads of a block (kWgGroups warpgroups)
constexpr int kWgMaxStages = 4;
// prm.vec_out: the epilogue's stores (CT3D_WG_VEC_OUT=1; see the epilogue)
constexpr int kWgVecNone = 0, kWgVecPairs = 1, kWgVecChannels = 2;

// The shape of a variant: positions a warpgroup (wgmma N: 256, or 128 for 3xTF32, which
// keeps two accumulator sets, and for HALF, the shape bounded for two blocks an SM),
// positions a block, a tap's weight bytes in a stage (big, then small for 3xTF32), the
// epilogue's row pitch (floats) and bytes.
template <bool SPLIT, bool HALF = false>
struct WgShape {
  static constexpr int N = SPLIT || HALF ? 128 : 256;
  static constexpr int Q = N * kWgGroups;
  static constexpr int TapBytes = SPLIT ? 2 * kWgTapBytes : kWgTapBytes;
  static constexpr int EpPitch = Q + 8;
  static constexpr int EpBytes = kWgM * EpPitch * 4;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CT3D_WGMMA 1
#endif

// Debug build only (CT3D_WG_TIMING=1 in the environment at build time: model_new.py adds
// -DCT3D_WG_TIMING): thread 0 of each of the first kWgStampBlocks blocks of a
// window_wg_kernel launch records clock64() at its start, after the tables, after the
// first stages' copies are issued, after the stage loop and at its end; wg_stamps() reads
// them (scripts/wg_phases.py). Nothing of it exists in a normal build.
[[maybe_unused]] constexpr int kWgStampBlocks = 16384;  // unused in a normal build's device pass
#ifdef CT3D_WG_TIMING
__device__ long long g_wg_stamps[kWgStampBlocks][5];
#define CT3D_WG_STAMP(i)                                                                           \
  do {                                                                                             \
    const int64_t b_ = (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;    \
    if (threadIdx.x == 0 && b_ < kWgStampBlocks) g_wg_stamps[b_][i] = clock64();                   \
  } while (0)
#else
#define CT3D_WG_STAMP(i) \
  do {                   \
  } while (0)
#endif

// ============================================================================
// PTX helpers (sm_90a)
// ============================================================================
// Shared-memory matrix descriptor, no swizzle: start address, LBO (between core matrices
// along K) and SBO (along M or N), each in 16-byte units.
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
         (uint64_t((sbo & 0x3FFFF) >> 4) << 32);
}

__device__ __forceinline__ void wg_fence() {
#ifdef CT3D_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#ifdef CT3D_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#ifdef CT3D_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Makes this thread's generic-proxy shared-memory writes (cp.async, stores) visible to
// the async proxy that wgmma reads through.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef CT3D_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// mbarrier and bulk copy (grad weight on wgmma copies whole window rows): a barrier of
// `count` arrivals; one arrival that also expects `bytes` of copies; a contiguous global ->
// shared copy of `bytes` (a multiple of 16, both ends 16-byte aligned) that completes its
// bytes on the barrier; a wait for the barrier's phase of parity `parity` to complete.
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
#ifdef CT3D_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_fence_init() {
#ifdef CT3D_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive_expect(uint32_t bar, uint32_t bytes) {
#ifdef CT3D_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void bulk_copy_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
#ifdef CT3D_WGMMA
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#endif
}
// An arrival on the barrier made when every cp.async this thread issued before it has
// landed (it counts as one of the barrier's arrivals: .noinc); a plain arrival.
__device__ __forceinline__ void cp_async_mbar_arrive(uint32_t bar) {
#ifdef CT3D_WGMMA
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#ifdef CT3D_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
// Barrier `id` (1..15) among `count` threads (a multiple of 32): the consumer warps of a
// warp-specialized block, without the producer warps.
__device__ __forceinline__ void named_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#ifdef CT3D_WGMMA
  asm volatile("{\n.reg .pred p;\nCT3D_MBAR_WAIT_%=:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
               "@!p bra CT3D_MBAR_WAIT_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
#endif
}

#define CT3D_WG_D                                                                               \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "            \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "            \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "            \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "            \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "            \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define CT3D_WG_OPS(d)                                                                                   \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]),           \
  "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),       \
  "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),       \
  "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]),       \
  "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// d (64 x 256, fp32) += A (64 x K, descriptor da) * B (K x 256, descriptor db), both
// K-major; K = 16 for fp16/bf16, 8 for TF32 (one 32-byte chunk of channels either way).
template <typename T>
__device__ __forceinline__ void wgmma_n256(float (&d)[128], uint64_t da, uint64_t db) {
#ifdef CT3D_WGMMA
  if constexpr (std::is_same<T, at::BFloat16>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\nwgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " CT3D_WG_D ", %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : CT3D_WG_OPS(d) : "l"(da), "l"(db), "r"(1));
  } else if constexpr (std::is_same<T, at::Half>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\nwgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " CT3D_WG_D ", %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : CT3D_WG_OPS(d) : "l"(da), "l"(db), "r"(1));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\nwgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32 " CT3D_WG_D ", %128, %129, p, 1, 1;\n}\n"
                 : CT3D_WG_OPS(d) : "l"(da), "l"(db), "r"(1));
  }
#endif
}

// d (64 x 128, fp32) = (scale_d ? d : 0) + A * B, TF32, both through descriptors (3xTF32).
#define CT3D_WG_D64                                                                              \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "            \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "            \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define CT3D_F8(d, i) \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
__device__ __forceinline__ void wgmma_n128_tf32(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
#ifdef CT3D_WGMMA
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\nwgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " CT3D_WG_D64 ", %64, %65, p, 1, 1;\n}\n"
               : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16), CT3D_F8(d, 24), CT3D_F8(d, 32), CT3D_F8(d, 40),
                 CT3D_F8(d, 48), CT3D_F8(d, 56)
               : "l"(da), "l"(db), "r"(scale_d));
#endif
}

// d (64 x 128, fp32) += A * B, both through descriptors, K-major (fp16/bf16: K = 16; TF32:
// K = 8): the half-width shape (WgShape<false, true>, two blocks an SM).
template <typename T>
__device__ __forceinline__ void wgmma_n128(float (&d)[64], uint64_t da, uint64_t db) {
#ifdef CT3D_WGMMA
  if constexpr (std::is_same<T, at::BFloat16>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " CT3D_WG_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16), CT3D_F8(d, 24), CT3D_F8(d, 32), CT3D_F8(d, 40),
                   CT3D_F8(d, 48), CT3D_F8(d, 56)
                 : "l"(da), "l"(db), "r"(1));
  } else if constexpr (std::is_same<T, at::Half>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " CT3D_WG_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16), CT3D_F8(d, 24), CT3D_F8(d, 32), CT3D_F8(d, 40),
                   CT3D_F8(d, 48), CT3D_F8(d, 56)
                 : "l"(da), "l"(db), "r"(1));
  } else {
    wgmma_n128_tf32(d, da, db, 1);
  }
#endif
}

// Pins accumulator registers at this point of the program: the compiler may not move their
// reads or writes across it (around wgmma.wait_group, which does not name them).
template <int R>
__device__ __forceinline__ void wg_fence_operands(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

constexpr int kWgChunk = 8;  // taps issued together after one wgmma.fence

// The wgmmas of n (1..kWgChunk) consecutive taps, straight-line after one fence: tap j's A
// (weights) at a + j * kWgTapBytes, its B (window) at b + sh[j] positions.
// NACC: the accumulators a thread (128: m64n256; 64: m64n128, the half-width shape).
template <typename T, int N, int NACC>
__device__ __forceinline__ void wg_taps_n(float (&acc)[NACC], uint32_t a, uint32_t b, const int* sh, int slice_bytes) {
  int shift[N];
#pragma unroll
  for (int j = 0; j < N; ++j) shift[j] = sh[j];
  wg_fence();
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const uint64_t da = wg_desc(a + j * kWgTapBytes, kWgM * 16, 128);
    const uint64_t db = wg_desc(b + uint32_t(shift[j]) * 16, uint32_t(slice_bytes), 128);
    if constexpr (NACC == 128) wgmma_n256<T>(acc, da, db);
    else wgmma_n128<T>(acc, da, db);
  }
}
template <typename T, int NACC>
__device__ __forceinline__ void wg_taps(float (&acc)[NACC], int n, uint32_t a, uint32_t b, const int* sh,
                                        int slice_bytes) {
  static_assert(NACC == 128 || NACC == 64, "wg_taps: m64n256 or m64n128 accumulators");
  switch (n) {
    case 1: wg_taps_n<T, 1>(acc, a, b, sh, slice_bytes); break;
    case 2: wg_taps_n<T, 2>(acc, a, b, sh, slice_bytes); break;
    case 3: wg_taps_n<T, 3>(acc, a, b, sh, slice_bytes); break;
    case 4: wg_taps_n<T, 4>(acc, a, b, sh, slice_bytes); break;
    case 5: wg_taps_n<T, 5>(acc, a, b, sh, slice_bytes); break;
    case 6: wg_taps_n<T, 6>(acc, a, b, sh, slice_bytes); break;
    case 7: wg_taps_n<T, 7>(acc, a, b, sh, slice_bytes); break;
    default: wg_taps_n<T, 8>(acc, a, b, sh, slice_bytes); break;
  }
}

// 3xTF32: the chain of n (1..kWgFlushTaps) consecutive taps into `chain`, which it
// overwrites (the first product has scale-d 0). A tap's weights are big at a + j * TapBytes,
// small kWgTapBytes later; the window's small parts lie 2 slices after its big ones. The
// small products (big A x small B, small A x big B) of every tap come first, while the
// chain is still ~2^-11 of its final size, so that the tensor core's truncating alignment
// costs them nothing; then the big x big products. The chain is added into a rounded
// register sum after at most kWgFlushTaps big products: the truncation error grows with
// the number of MMAs a chain, as in window_tc.cuh's kFlushTaps.
template <int N>
__device__ __forceinline__ void wg_split_taps_n(float (&chain)[64], uint32_t a, uint32_t b, const int* sh,
                                                int slice_bytes) {
  constexpr int TB = WgShape<true>::TapBytes;
  uint32_t bo[N];
#pragma unroll
  for (int j = 0; j < N; ++j) bo[j] = b + uint32_t(sh[j]) * 16;
  wg_fence();
#pragma unroll
  for (int j = 0; j < N; ++j) {
    wgmma_n128_tf32(chain, wg_desc(a + j * TB + kWgTapBytes, kWgM * 16, 128), wg_desc(bo[j], slice_bytes, 128),
                    j > 0);
    wgmma_n128_tf32(chain, wg_desc(a + j * TB, kWgM * 16, 128), wg_desc(bo[j] + 2 * slice_bytes, slice_bytes, 128),
                    1);
  }
#pragma unroll
  for (int j = 0; j < N; ++j)
    wgmma_n128_tf32(chain, wg_desc(a + j * TB, kWgM * 16, 128), wg_desc(bo[j], slice_bytes, 128), 1);
}
__device__ __forceinline__ void wg_split_taps(float (&chain)[64], int n, uint32_t a, uint32_t b, const int* sh,
                                              int slice_bytes) {
  static_assert(kWgFlushTaps == 8, "wg_split_taps: one case a chain length");
  switch (n) {
    case 1: wg_split_taps_n<1>(chain, a, b, sh, slice_bytes); break;
    case 2: wg_split_taps_n<2>(chain, a, b, sh, slice_bytes); break;
    case 3: wg_split_taps_n<3>(chain, a, b, sh, slice_bytes); break;
    case 4: wg_split_taps_n<4>(chain, a, b, sh, slice_bytes); break;
    case 5: wg_split_taps_n<5>(chain, a, b, sh, slice_bytes); break;
    case 6: wg_split_taps_n<6>(chain, a, b, sh, slice_bytes); break;
    case 7: wg_split_taps_n<7>(chain, a, b, sh, slice_bytes); break;
    default: wg_split_taps_n<8>(chain, a, b, sh, slice_bytes); break;
  }
}

// d (64 x NW, fp32) += A (64 x K) * B (K x NW), A from registers, B through descriptor db
// (K-major); K = 16 for fp16/bf16, 8 for TF32; NW = 32, 48 or 64. A: this thread's
// fragment, laid out as mma.sync's m16n8k16 (m16n8k8 for TF32) A fragment of rows
// 16 * (warp % 4) .. + 15 of the 64 (grad weight on wgmma).
#define CT3D_RS_IN(a, db) "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1)
template <typename T, int NW>
__device__ __forceinline__ void wgmma_rs(float (&d)[NW / 2], const uint32_t (&a)[4], uint64_t db) {
#ifdef CT3D_WGMMA
  static_assert(NW == 32 || NW == 48 || NW == 64, "wgmma_rs: NW is 32, 48 or 64");
  if constexpr (NW == 32 && std::is_same<T, at::BFloat16>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                 "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 32 && std::is_same<T, at::Half>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                 "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 32 && std::is_same<T, float>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                 "{%16, %17, %18, %19}, %20, p, 1, 1;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 48 && std::is_same<T, at::BFloat16>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23}, "
                 "{%24, %25, %26, %27}, %28, p, 1, 1, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 48 && std::is_same<T, at::Half>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n48k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23}, "
                 "{%24, %25, %26, %27}, %28, p, 1, 1, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 48 && std::is_same<T, float>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n48k8.f32.tf32.tf32 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23}, "
                 "{%24, %25, %26, %27}, %28, p, 1, 1;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 64 && std::is_same<T, at::BFloat16>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16), CT3D_F8(d, 24) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 64 && std::is_same<T, at::Half>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16), CT3D_F8(d, 24) : CT3D_RS_IN(a, db));
  } else if constexpr (NW == 64 && std::is_same<T, float>::value) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1;\n}\n"
                 : CT3D_F8(d, 0), CT3D_F8(d, 8), CT3D_F8(d, 16), CT3D_F8(d, 24) : CT3D_RS_IN(a, db));
  }
#endif
}

// ============================================================================
// Kernels
// ============================================================================
// 1 where this binary's kernels for the running GPU were built with wgmma (sm_90a).
__global__ void wgmma_probe_kernel(int* out) {
#ifdef CT3D_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}

// w [Cin, Cout/G, kvol] -> [g][tap r][chunk][co tile][part][K slice 2][64 co][16 bytes],
// one 32-bit word per idx; zero outside. 16-bit: the word packs B[k][co] (low half) and
// B[k + 1][co], k = chunk*16 + slice*8 + 2*(word % 4). fp32: B[k][co] rounded to TF32
// (nearest-even), k = chunk*8 + slice*4 + word % 4; with split (3xTF32) two parts, the big
// and small halves of split_tf32. B[k][co] as in transform_weight_kernel.
// stack = J > 1 (taps stacked in M; one co tile): tap r is stacked tap (rd * kH + rh) *
// groups + grp, and row m holds co = m % Cn of w tap u = grp * J + m / Cn in order of window
// shift (forward: tw = kW - 1 - u, grad input: tw = u); rows past J * Cn or kW are zero.
template <typename T>
__global__ void transform_weight_wg_kernel(const T* __restrict__ w, uint32_t* __restrict__ out, Problem P,
                                           int job, int nchunks, int ncot, bool split, int stack) {
  const int part_words = kWgTapBytes / 4, tap_words = split ? 2 * part_words : part_words;
  const int groups = stacked_taps(int(P.k[2]), stack);
  const int64_t taps = P.k[0] * P.k[1] * groups;
  const int64_t total = P.G * taps * nchunks * ncot * tap_words;
  const int64_t kc = job == kJobForward ? P.cin_g() : P.cout_g();
  const int64_t nc = job == kJobForward ? P.cout_g() : P.cin_g();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int tw = int(t % tap_words); t /= tap_words;
    const int cot = int(t % ncot); t /= ncot;
    const int ch = int(t % nchunks); t /= nchunks;
    int64_t r = t % taps;
    const int64_t g = t / taps;
    const int part = tw / part_words, word = tw % part_words;
    const int slice = word / (kWgM * 4), co = (word / 4) % kWgM, wi = word % 4;
    int64_t n = int64_t(cot) * kWgM + co;
    if (stack > 1) {
      const int u = (int(r % groups)) * stack + co / int(nc);
      const int rw = job == kJobForward ? int(P.k[2]) - 1 - u : u;
      r = r / groups * P.k[2] + rw;
      n = co / int(nc) < stack && u < P.k[2] ? co % nc : nc;  // nc: a zero row
    }
    auto value = [&](int64_t k) -> float {
      if (k >= kc || n >= nc) return 0.f;
      const int64_t ci = job == kJobForward ? k : n, cx = job == kJobForward ? n : k;
      return float(w[((g * P.cin_g() + ci) * P.cout_g() + cx) * P.kvol() + r]);
    };
    if constexpr (std::is_same<T, float>::value) {
      const float v = value(int64_t(ch) * 8 + slice * 4 + wi);
      if (split) {
        uint32_t big, small;
        split_tf32(__float_as_uint(v), big, small);
        out[idx] = part == 0 ? big : small;
      } else {
        out[idx] = __float_as_uint(round_tf32(v));
      }
    } else {
      const int64_t k = int64_t(ch) * 16 + slice * 8 + 2 * wi;
      out[idx] = pack2_16<T>(value(k), value(k + 1));  // exact: the values are T already
    }
  }
}

// D's sum for one output of stacked taps (as wg_store_stacked adds it): e[0] + e[row_j]
// + ... over the J rows, in order. JC > 0: J known at compile time (1: e[0]); 0: J given.
template <int JC>
__device__ __forceinline__ float wg_stacked_sum(const float* e, int row_j, int J = JC) {
  float v = e[0];
  if constexpr (JC > 0) {
#pragma unroll
    for (int j = 1; j < JC; ++j) v += e[j * row_j];
  } else {
    for (int j = 1; j < J; ++j) v += e[j * row_j];
  }
  return v;
}

// The epilogue's stores of one position with taps stacked in M: y[co] = sum_j D[(j, co)]
// (ep: D's column of the position, rows `pitch` floats apart; stacked row j is row_j floats
// after row 0) + bias, j in order, one rounding, for co < nco (o: y at channel c0, cstride
// elements a channel). JC > 0: J known at compile time (the j loop unrolled); 0: J given.
template <int JC, typename T>
__device__ __forceinline__ void wg_store_stacked(T* o, int64_t cstride, const float* ep, int pitch, int row_j,
                                                 int nco, const T* bias, int64_t c0, int J = JC) {
  for (int co = 0; co < nco; ++co) {
    float v = wg_stacked_sum<JC>(ep + co * pitch, row_j, J);
    v += bias ? float(bias[c0 + co]) : 0.f;
    o[co * cstride] = T(v);
  }
}

// Two adjacent outputs p[0], p[1] (p aligned to both) in one store, each rounded once as
// T(v) rounds it: the bits of two element stores (the epilogue's position pairs).
template <typename T>
__device__ __forceinline__ void wg_store_pair(T* p, float a, float b) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);  // T is float
  } else {
    *reinterpret_cast<uint32_t*>(p) = pack2_16<T>(a, b);
  }
}

// 16 / sizeof(T) values as 16 bytes of T, each rounded once as T(v) rounds it (unit_tap.cuh's
// ut_pack16 rounds through the cuda_fp16/bf16 intrinsics instead: the same bits but NaN's).
template <typename T>
__device__ __forceinline__ uint4 wg_pack16(const float (&v)[16 / sizeof(T)]) {
  if constexpr (sizeof(T) == 4) {
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
  } else {
    return make_uint4(pack2_16<T>(v[0], v[1]), pack2_16<T>(v[2], v[3]), pack2_16<T>(v[4], v[5]),
                      pack2_16<T>(v[6], v[7]));
  }
}

// wg_store_stacked for two adjacent positions (e: D's column of the first; the second's is
// the next float) into o[0], o[1] with one store a channel: the same sums in the same order.
// Scalar loads: e + j * row_j is not 8-byte aligned where row_j is odd.
template <int JC, typename T>
__device__ __forceinline__ void wg_store_stacked_pair(T* o, int64_t cstride, const float* ep, int pitch,
                                                      int row_j, int nco, const T* bias, int64_t c0, int J = JC) {
  for (int co = 0; co < nco; ++co, o += cstride) {
    const float* e = ep + co * pitch;
    const float v0 = wg_stacked_sum<JC>(e, row_j, J), v1 = wg_stacked_sum<JC>(e + 1, row_j, J);
    const float b = bias ? float(bias[c0 + co]) : 0.f;
    wg_store_pair(o, v0 + b, v1 + b);
  }
}

// The window convolution on wgmma: two MMA warpgroups (threads 0..255), one block per
// SM. SPLIT: 3xTF32 (fp32 only). PW > 0 (warp-specialized; not with SPLIT; 4): PW more
// warps (threads 256..) issue every copy, and a full and an empty mbarrier a buffer hand the
// stages between them and the MMA warps, which only wait and issue wgmmas (NOTES.md,
// producer warps). PW = 0: the MMA warps issue the copies between their wgmmas.
// HALF (PW = 0, not SPLIT; opt-in, CT3D_WG_TWO_BLOCKS=1): m64n128 wgmmas, 256 positions a
// block, 64 accumulators a thread, bounded for two blocks an SM, so that one block's
// tables, first copies and epilogue run beside the other's wgmmas (one block an SM leaves
// the tensor pipe idle then: kb58's blocks keep it busy ~65% of their time; NOTES.md).
template <typename T, bool SPLIT, int PW, bool HALF = false>
__global__ void __launch_bounds__(kWgConsumers + 32 * PW, HALF ? 2 : 1) window_wg_kernel(const WinParams prm) {
#ifdef CT3D_WGMMA
  using E = typename WinElem<T>::type;
  using S = WgShape<SPLIT, HALF>;
  static_assert(!HALF || (!SPLIT && PW == 0), "window_wg_kernel: two blocks an SM only without 3xTF32 and producers");
  static_assert(!SPLIT || std::is_same<T, float>::value, "window_wg_kernel: 3xTF32 is for fp32");
  static_assert(!(SPLIT && PW > 0), "window_wg_kernel: the warp-specialized loop is not for 3xTF32");
  constexpr bool WS = PW > 0;
  constexpr int kWgProducers = 32 * PW;  // copying threads (WS)
  constexpr int KC = 32 / int(sizeof(E));  // channels a chunk
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int s_nvt;
  __shared__ __align__(8) uint64_t s_bar[2 * kWgMaxStages];  // WS: full[buf], then empty[buf]
  const Problem& P = prm.P;

  // ---- which sub-problem (group, phase), plane tile, channel tile ----
  WinDim wd[3];
  const int g = win_dims(P, prm.job, blockIdx.z, wd);
  const int Ph = wd[1].P, Pw = wd[2].P;
  const int C = Pw + win_span(wd[2]);  // window columns = the virtual row pitch (mult 1)
  int bx = blockIdx.x;
  const int pt = bx % prm.tiles_per_plane; bx /= prm.tiles_per_plane;
  const int jd = bx % prm.pd_max;
  const int n = bx / prm.pd_max;
  const int q0 = pt * prm.q_step;  // the block's first virtual position
  if (jd >= wd[0].P || q0 >= Ph * C) return;
  const int co0 = blockIdx.y * kWgM;
  const int J = prm.stack;  // w taps stacked in M (see the header); 1: none
  const int Thw = wd[1].T * stacked_taps(wd[2].T, J);  // (th, tw or tap group)
  CT3D_WG_STAMP(0);

  // ---- window: rows jh0 .. of the source plane, C columns; see the header ----
  const int jh0 = q0 / C;
  const int R = (q0 + S::Q - 1) / C - jh0 + win_span(wd[1]) + 2;
  const int wh0 = jh0 + win_off_min(wd[1]);  // source row of window row 0
  const int ww0 = win_off_min(wd[2]);        // source column of window column 0
  const int qoff = q0 - jh0 * C;             // window position of q0 at shift 0

  // Tables after the stages: w_tab[t] = weight offset of tap t (words), sh_tab[(th, tw)] =
  // window shift of that tap (positions), vtd = the depth taps whose source plane is inside
  // src, pos_tab = where each window position comes from (win_pos_table).
  const int H = int(prm.src_sz[1]), W = int(prm.src_sz[2]);
  int* w_tab = reinterpret_cast<int*>(smem + prm.table_offset);
  int* sh_tab = w_tab + P.kvol();
  int* vtd = sh_tab + P.k[1] * P.k[2];
  int* pos_tab = vtd + P.k[0];
  // WS: buffer b is full once every producer thread's copies into it have landed
  // (one arrival a producer thread, made by its copies), empty once every MMA thread is
  // done with it.
  const uint32_t full0 = smem_u32(s_bar), empty0 = full0 + 8 * kWgMaxStages;
  if (WS && threadIdx.x == 0) {
    for (int b = 0; b < prm.stages; ++b) {
      mbar_init(full0 + 8 * b, kWgProducers);
      mbar_init(empty0 + 8 * b, kWgConsumers);
    }
    mbar_fence_init();
  }
  win_pos_table(pos_tab, R * C, C, wh0, ww0, H, W, int(prm.pk_v * int64_t(sizeof(E)) / 16));
  const int64_t tap_stride = int64_t(prm.nchunks) * prm.ntiles * (S::TapBytes / 4);  // ntiles: co tiles
  const int nvt = win_tap_tables(P, wd, jd, C, tap_stride, 1, prm.src_sz[0], w_tab, sh_tab, vtd, &s_nvt, J);
  // A (chunk, depth tap) runs as tap_parts stages of up to hp (th, tw) taps each (more than
  // one where the weights of all taps would not let two stages fit; each part copies the
  // window again).
  const int nparts = prm.tap_parts, hp = (Thw + nparts - 1) / nparts;
  const int nK = nvt * prm.nchunks * nparts;  // stages
  CT3D_WG_STAMP(1);
  auto part_taps = [&](int part) { return max(0, min(hp, Thw - part * hp)); };  // taps from part * hp

  // ---- stage copies: stage kk = (chunk, depth tap vtd[tdi], part), part counting fastest,
  // then tdi, then chunk; its buffer kk % stages. Counters, not divisions: this is the
  // per-stage work of every thread. ----
  // The window: 16-byte pieces (piece q: position q / 2, K slice q % 2); then the weights,
  // TapBytes / 16 pieces a tap; copying thread t of NT copies pieces t, t + NT, ...
  // (3xTF32: the window's small parts are made in place from these pieces, 2 slices
  // further on.)
  struct Stage {
    int part, tdi, chunk, buf;
  };
  auto next_stage = [&](Stage& c) {
    if (++c.part == nparts) {
      c.part = 0;
      if (++c.tdi == nvt) c.tdi = 0, ++c.chunk;
    }
    if (++c.buf == prm.stages) c.buf = 0;
  };
  const E* __restrict__ src = static_cast<const E*>(prm.src);
  const E* src_n = src + n * prm.pk_n + int64_t(g) * prm.cg_pad;
  const uint32_t smem0 = smem_u32(smem);
  const uint32_t* wb_blk = prm.wt_big + int64_t(g) * prm.wt_taps * tap_stride + blockIdx.y * (S::TapBytes / 4);
  const int slice_bytes = prm.window_bytes / (SPLIT ? 4 : 2);
  constexpr int kTapPieces = S::TapBytes / 16;  // 128 or 256
  const int win_pieces = R * C * 2;
  // Copies stage c by copying thread tid of NT (all 256 threads, or the 128 producers), then
  // moves c on to the next stage. Weights: kSpan threads a tap (all its pieces, or a share
  // of them when NT is fewer), kPer pieces each, taps tid / kSpan, + NT / kSpan, ...
  auto issue = [&](Stage& c, int tid, auto nthreads) {
    constexpr int NT = decltype(nthreads)::value;
    constexpr int kSpan = NT < kTapPieces ? NT : kTapPieces, kPer = kTapPieces / kSpan;
    static_assert(NT % kSpan == 0 && kTapPieces % kSpan == 0, "window_wg_kernel: copy threads and a tap's pieces");
    const int td = vtd[c.tdi], t0 = c.part * hp, nt = part_taps(c.part);
    const int id = jd * wd[0].mult + wd[0].off0 + td * wd[0].dstep;  // inside src (vtd)
    const E* base = src_n + int64_t(id) * H * W * prm.pk_v + c.chunk * KC;
    const uint32_t dst = smem0 + c.buf * prm.stage_bytes;
    win_copy_window<NT>(dst, 16, slice_bytes, base, pos_tab, R * C, win_halves(prm.cg_pad, c.chunk, KC), tid);
    const uint32_t* wsrc = wb_blk + c.chunk * int64_t(prm.ntiles) * (S::TapBytes / 4) + (tid % kSpan) * 4;
    const int* wt = w_tab + td * Thw + t0;
    const uint32_t wdst = dst + prm.window_bytes + (tid % kSpan) * 16;
    for (int thw = tid / kSpan; thw < nt; thw += NT / kSpan)
#pragma unroll
      for (int j = 0; j < kPer; ++j) cp_async16(wdst + thw * S::TapBytes + j * kSpan * 16, wsrc + wt[thw] + j * kSpan * 4, 16);
    next_stage(c);
  };
  const auto all_threads = std::integral_constant<int, kWgConsumers>{};

  constexpr int NACC = S::N / 2;  // accumulator registers a thread (m64 x N over 128 threads)
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

  Stage copy{0, 0, 0, 0};  // the next stage to copy
  // lead: stages whose wgmmas may still run when a stage's buffer is refilled. With 4 or
  // more stages (short stages: kb61's 9 taps) the loop below queues a whole stage behind
  // the one in flight before it issues a copy, so the tensor pipe has work while the
  // threads issue the copy (NOTES.md, lead 2); else 1, the copy distance stages - 1.
  const int lead = !SPLIT && prm.stages >= 4 ? 2 : 1;
  if constexpr (!WS) {
    for (int st = 0; st < prm.stages - lead; ++st) {
      if (st < nK) issue(copy, threadIdx.x, all_threads);
      cp_async_commit();
    }
  }
  int part = 0, buf = 0;  // of stage kk
  CT3D_WG_STAMP(2);
  const int wg = threadIdx.x / 128;
  const uint32_t b_off = uint32_t(qoff + wg * S::N) * 16;  // this warpgroup's positions at shift 0
  // Whether this warpgroup has positions in the plane (prm.skip_idle; else always): the
  // last tile of a plane can end inside warpgroup 0's positions (kb58: 191 of 512), and
  // warpgroup 1's wgmmas would then compute positions that are never stored. Computed
  // from a shuffled warpgroup index, a value ptxas knows is warp-uniform: wgmmas under a
  // branch it takes for divergent are serialized (C7520, see below).
  const bool live = !prm.skip_idle || q0 + __shfl_sync(0xffffffffu, wg, 0) * S::N < Ph * C;
  if constexpr (WS) {
    // The role as a value the compiler knows to be warp-uniform (a shuffle from lane 0):
    // wgmmas under a branch it takes for divergent are serialized, each waited for before
    // the next is issued (ptxas C7520): kb61 TF32 forward 1.88 ms with that, 1.70 without.
    // Four producer warps at most: 384 threads leave 168 registers a thread, what the MMA
    // warps need (128 accumulators). More would need setmaxnreg, and ptxas compiles the
    // whole kernel to the registers a thread has at launch (128 for 512 threads: it
    // refuses the m64n256 wgmma).
    if (__shfl_sync(0xffffffffu, threadIdx.x / 128, 0) >= kWgGroups) {
      // Producers: stage kk into buffer kk % stages, once the MMA warps have released the
      // stage that used it before (lap: the rounds through the buffers so far). They leave
      // when the last is issued: the MMA warps wait for every stage before the epilogue
      // reuses the buffers, and sync among themselves from there on.
      const int tid = threadIdx.x - kWgConsumers;
      for (int kk = 0, lap = 0; kk < nK; ++kk) {
        const int b = copy.buf;
        if (lap > 0) mbar_wait(empty0 + 8 * b, (lap - 1) & 1);
        issue(copy, tid, std::integral_constant<int, kWgProducers>{});
        cp_async_mbar_arrive(full0 + 8 * b);
        if (copy.buf == 0) ++lap;
      }
      cp_async_commit();
      cp_async_wait(0);  // no thread leaves with copies of its own in flight
      return;
    } else {
      // MMA warps: wait for stage kk, issue all its taps, then (stage kk - 1's wgmmas done)
      // release stage kk - 1's buffer; the tensor pipe holds stage kk's taps meanwhile.
      uint32_t phase = 0;  // parity of the full barriers' phase in this round through the buffers
      for (int kk = 0, prev = 0; kk < nK; ++kk) {
        mbar_wait(full0 + 8 * buf, phase);
        if (std::is_same<E, float>::value && prm.round_a) {
          // TF32 with the source used in place: round the window (each MMA thread a share)
          unsigned char* win = smem + buf * prm.stage_bytes;
          for (int q = threadIdx.x; q < win_pieces; q += kWgConsumers) {
            float4* v = reinterpret_cast<float4*>(win + (q & 1) * slice_bytes + (q >> 1) * 16);
            *v = round_tf32_4(*v);
          }
          fence_proxy_async();
          named_sync(1, kWgConsumers);
        } else {
          fence_proxy_async();  // the copies (generic proxy) are seen by wgmma (async proxy)
        }
        const uint32_t bufa = smem0 + buf * prm.stage_bytes;
        const uint32_t a_base = bufa + prm.window_bytes, b_base = bufa + b_off;
        const int t0 = part * hp, nt = live ? part_taps(part) : 0;
        for (int t = 0; t < nt; t += kWgChunk)
          wg_taps<T>(acc, min(kWgChunk, nt - t), a_base + t * kWgTapBytes, b_base, sh_tab + t0 + t, slice_bytes);
        wg_commit();
        wg_wait<1>();  // stage kk - 1's wgmmas are done (this warpgroup's)
        if (kk > 0) mbar_arrive(empty0 + 8 * prev);  // every MMA thread: no divergent branch
        prev = buf;
        if (++part == nparts) part = 0;
        if (++buf == prm.stages) buf = 0, phase ^= 1;
      }
      wg_wait<0>();
    }
  } else if constexpr (!SPLIT) {
    // Stage kk: the wgmmas of its first kWgChunk taps; once stage kk - 1's are done
    // (everyone's), the copy of stage kk + stages - 1 into that buffer, while the tensor
    // pipe works on the issued taps; then the rest of the taps. Taps are issued kWgChunk at
    // a time in straight-line code after one wgmma.fence: a wgmma inside a loop with other
    // code gets a fence of its own from the compiler, and each fence waited for the
    // wgmmas before it (NOTES.md, wgmma v2).
    for (int kk = 0; kk < nK; ++kk) {
      cp_async_wait(prm.stages - lead - 1);  // stage kk has landed (this thread's copies)
      const uint32_t bufa = smem0 + buf * prm.stage_bytes;
      if (std::is_same<E, float>::value && prm.round_a) {
        // TF32 with the source used in place: round the window pieces this thread copied
        unsigned char* win = smem + buf * prm.stage_bytes;
        for (int q = threadIdx.x; q < win_pieces; q += blockDim.x) {
          float4* v = reinterpret_cast<float4*>(win + (q & 1) * slice_bytes + (q >> 1) * 16);
          *v = round_tf32_4(*v);
        }
      }
      fence_proxy_async();
      __syncthreads();  // everyone's copies of stage kk are in, visible to wgmma
      const uint32_t a_base = bufa + prm.window_bytes, b_base = bufa + b_off;
      const int t0 = part * hp, nt = live ? part_taps(part) : 0;
      if (lead == 2) {
        // every tap of stage kk, then: stage kk - 2 done (wgmma groups kk - 1 and kk may
        // run), everywhere, so its buffer takes the copy of stage kk + stages - 2
        for (int t = 0; t < nt; t += kWgChunk)
          wg_taps<T>(acc, min(kWgChunk, nt - t), a_base + t * kWgTapBytes, b_base, sh_tab + t0 + t, slice_bytes);
        wg_commit();
        wg_wait<2>();
        __syncthreads();
        if (kk + prm.stages - 2 < nK) issue(copy, threadIdx.x, all_threads);
        cp_async_commit();
      } else {
        const int first = min(kWgChunk, nt);
        if (first > 0) wg_taps<T>(acc, first, a_base, b_base, sh_tab + t0, slice_bytes);
        wg_commit();
        wg_wait<1>();     // stage kk - 1's wgmmas are done (this warpgroup's) ...
        __syncthreads();  // ... and the other's: its buffer is free
        if (kk + prm.stages - 1 < nK) issue(copy, threadIdx.x, all_threads);
        cp_async_commit();
        for (int t = first; t < nt; t += kWgChunk)
          wg_taps<T>(acc, min(kWgChunk, nt - t), a_base + t * kWgTapBytes, b_base, sh_tab + t0 + t, slice_bytes);
        wg_commit();
      }
      if (++part == nparts) part = 0;
      if (++buf == prm.stages) buf = 0;
    }
    wg_wait<0>();
  } else {
    // 3xTF32. Each thread splits the window pieces it copied (big: truncated in place;
    // small: 2 slices on). The taps of a stage run as chains of at most kWgFlushTaps taps
    // (equal lengths), each added into acc (rounded fp32 adds, chain order) once done. The
    // chains alternate between two register sets, so that chain c's wgmmas run while chain
    // c - 1 is waited for and added (one chain in flight at a wait, not none); after the
    // first chain is issued, stage kk - 1 is done everywhere and its buffer takes the next
    // copy. A stage ends with its last chain waited for. (Carrying an even count's last
    // chain into the next stage, through its split and barrier, measured no faster:
    // NOTES.md, 3xTF32 window.)
    float ch0[NACC], ch1[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) ch0[i] = ch1[i] = 0.f;
    for (int kk = 0; kk < nK; ++kk) {
      cp_async_wait(prm.stages - 2);
      const uint32_t bufa = smem0 + buf * prm.stage_bytes;
      unsigned char* win = smem + buf * prm.stage_bytes;
      for (int q = threadIdx.x; q < win_pieces; q += blockDim.x) {
        uint4* v = reinterpret_cast<uint4*>(win + (q & 1) * slice_bytes + (q >> 1) * 16);
        uint4 big = *v, small;
        split_tf32_4(big, small);
        *v = big;
        *reinterpret_cast<uint4*>(win + (2 + (q & 1)) * slice_bytes + (q >> 1) * 16) = small;
      }
      fence_proxy_async();
      __syncthreads();
      const uint32_t a_base = bufa + prm.window_bytes, b_base = bufa + b_off;
      const int t0 = part * hp, nt = live ? part_taps(part) : 0;
      const int nchain = max(1, (nt + kWgFlushTaps - 1) / kWgFlushTaps), clen = (nt + nchain - 1) / nchain;
      bool pend1 = false;  // ch1 holds a chain not yet added
      for (int c = 0, t = 0; c < nchain; c += 2, t += 2 * clen) {
        // chain c into ch0
        const bool has0 = t < nt, has1 = c + 1 < nchain && t + clen < nt;
        if (has0) wg_split_taps(ch0, min(clen, nt - t), a_base + t * S::TapBytes, b_base, sh_tab + t0 + t, slice_bytes);
        wg_commit();
        if (pend1) {  // chain c - 1 (ch1) is done once only chain c may be pending
          wg_wait<1>();
          wg_fence_operands(ch1);
#pragma unroll
          for (int i = 0; i < NACC; ++i) acc[i] += ch1[i];
          pend1 = false;
        }
        if (c == 0) {
          __syncthreads();  // everyone is done with stage kk - 1
          if (kk + prm.stages - 1 < nK) issue(copy, threadIdx.x, all_threads);
          cp_async_commit();
        }
        // chain c + 1 into ch1, then chain c (ch0) is waited for and added
        if (has1) {
          wg_split_taps(ch1, min(clen, nt - t - clen), a_base + (t + clen) * S::TapBytes, b_base,
                        sh_tab + t0 + t + clen, slice_bytes);
          pend1 = true;
        }
        wg_commit();
        wg_wait<1>();
        wg_fence_operands(ch0);
        if (has0) {
#pragma unroll
          for (int i = 0; i < NACC; ++i) acc[i] += ch0[i];
        }
      }
      wg_wait<0>();
      wg_fence_operands(ch1);
      if (pend1) {
#pragma unroll
        for (int i = 0; i < NACC; ++i) acc[i] += ch1[i];
      }
      if (++part == nparts) part = 0;
      if (++buf == prm.stages) buf = 0;
    }
  }
  // From here on only the MMA threads (WS: the producers have left): they sync among
  // themselves.
  auto mma_sync = [] {
    if constexpr (WS) named_sync(1, kWgConsumers);
    else __syncthreads();
  };
  wg_fence_operands(acc);
  cp_async_wait(0);  // no copy may be in flight past this point (WS: every stage was waited for)
  mma_sync();        // every warpgroup is done with the stage buffers
  CT3D_WG_STAMP(3);

  // ---- epilogue: the block's D through shared memory (the stage buffers), then bias, one
  // rounding and coalesced stores along positions; virtual columns jw >= Pw are dropped ----
  // ep[co][q], EpPitch floats a row: the 8-byte stores of a half-warp (4 rows x 4 lanes)
  // land in distinct banks.
  float* ep = reinterpret_cast<float*>(smem);
  {
    const int lane = threadIdx.x % 32, w4 = (threadIdx.x / 32) % 4;
#pragma unroll
    for (int i = 0; i < S::N / 8; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = 16 * w4 + lane / 4 + 8 * h, col = wg * S::N + 8 * i + 2 * (lane % 4);
        *reinterpret_cast<float2*>(ep + row * S::EpPitch + col) = make_float2(acc[4 * i + 2 * h], acc[4 * i + 2 * h + 1]);
      }
  }
  mma_sync();
  T* __restrict__ out = static_cast<T*>(prm.out);
  const T* __restrict__ bias = static_cast<const T*>(prm.bias);
  const int od = wd[0].oc + wd[0].os * jd;
  const int nco = J > 1 ? int(prm.out_cg) : min(kWgM, int(prm.out_cg) - co0);
  const int64_t c0 = int64_t(g) * prm.out_cg + co0;
  // stacked taps: y[co][q] = sum_j D[(j, co)][q + j * dw], rows j * out_cg + co
  const int row_j = int(prm.out_cg) * S::EpPitch + (J > 1 ? abs(wd[2].dstep) : 0);
  // The outputs of position ql (block-relative, < q_step): y at (od, oh, ow), channels
  // c0 .. c0 + nco - 1; false where ql is a virtual column past the row or past the plane.
  auto out_at = [&](int ql, T*& o) {
    const int q = q0 + ql, jh = q / C, jw = q - jh * C;
    if (jh >= Ph || jw >= Pw) return false;
    const int oh = wd[1].oc + wd[1].os * jh, ow = wd[2].oc + wd[2].os * jw;
    o = out + prm.out_l.at(n, c0, (int64_t(od) * prm.out_sz[1] + oh) * prm.out_sz[2] + ow);
    return true;
  };
  auto store_one = [&](int ql) {
    T* o;
    if (!out_at(ql, o)) return;
    if (J == 1) {
      for (int co = 0; co < nco; ++co) {
        const float v = ep[co * S::EpPitch + ql] + (bias ? float(bias[c0 + co]) : 0.f);
        o[co * prm.out_l.c] = T(v);
      }
    } else if (J == 2) {  // the common stackings with the j loop unrolled (kb58: 4, kb68's grad input: 2)
      wg_store_stacked<2>(o, prm.out_l.c, ep + ql, S::EpPitch, row_j, nco, bias, c0);
    } else if (J == 4) {
      wg_store_stacked<4>(o, prm.out_l.c, ep + ql, S::EpPitch, row_j, nco, bias, c0);
    } else {
      wg_store_stacked<0>(o, prm.out_l.c, ep + ql, S::EpPitch, row_j, nco, bias, c0, J);
    }
  };
  if (prm.vec_out == kWgVecChannels) {
    // channels_last out (opt-in, CT3D_WG_VEC_OUT=1): a position's channels are contiguous,
    // so 16 / sizeof(T) of them go in one 16-byte store (run_window_wg: out_cg a multiple of
    // that, aligned strides and pointer), the same values as store_one's.
    // One loop a stacking (JC: J at compile time, 0 for the others).
    auto store_vec = [&](auto jc) {
      constexpr int V = 16 / int(sizeof(T)), JC = decltype(jc)::value;
#pragma unroll
      for (int half = 0; half < S::Q / 256; ++half) {
        const int ql = threadIdx.x + 256 * half;
        T* o;
        if (ql >= prm.q_step || !out_at(ql, o)) continue;
        for (int co = 0; co < nco; co += V) {
          float v[V];
#pragma unroll
          for (int k = 0; k < V; ++k)
            v[k] = wg_stacked_sum<JC>(ep + (co + k) * S::EpPitch + ql, row_j, J) +
                   (bias ? float(bias[c0 + co + k]) : 0.f);
          *reinterpret_cast<uint4*>(o + co) = wg_pack16<T>(v);
        }
      }
    };
    if (J == 1) store_vec(std::integral_constant<int, 1>{});
    else if (J == 2) store_vec(std::integral_constant<int, 2>{});
    else if (J == 4) store_vec(std::integral_constant<int, 4>{});
    else store_vec(std::integral_constant<int, 0>{});
  } else if (prm.vec_out == kWgVecPairs) {
    // Two positions a thread, ql and ql + 1 with q0 + ql even, one store for both (opt-in,
    // CT3D_WG_VEC_OUT=1, NCDHW out): a fifth of the epilogue's instructions a value (no bias, J = 1:
    // LDS.64, one pack, one store, two address adds; the element loop took ~12). run_window_wg
    // takes this form only where C and Pw are even (so q and jw are even together, and a pair
    // lies in one row, inside it or past it together) and where the pair's outputs are
    // adjacent and aligned to both (positions contiguous in out, stride 1 in w, even
    // channel and batch strides, row length and column offset). A position without a
    // partner in the stored range (q_step is odd where taps are stacked) goes alone.
    const int par = q0 & 1;
    for (int ql = 2 * int(threadIdx.x) + par; ql + 1 < prm.q_step; ql += 2 * kWgConsumers) {
      T* o;
      if (!out_at(ql, o)) continue;
      const float* e = ep + ql;
      if (J == 1 && bias == nullptr) {  // pointers stepped a channel at a time (the compiler
                                        // recomputed the 64-bit co * stride for every store);
                                        // v, not v + 0.f as store_one: a -0 sum stays -0
        for (int co = 0; co < nco; ++co, o += prm.out_l.c, e += S::EpPitch) {
          const float2 v = *reinterpret_cast<const float2*>(e);
          wg_store_pair(o, v.x, v.y);
        }
      } else if (J == 1) {
        for (int co = 0; co < nco; ++co, o += prm.out_l.c, e += S::EpPitch) {
          const float2 v = *reinterpret_cast<const float2*>(e);
          const float b = float(bias[c0 + co]);
          wg_store_pair(o, v.x + b, v.y + b);
        }
      } else if (J == 2) {
        wg_store_stacked_pair<2>(o, prm.out_l.c, e, S::EpPitch, row_j, nco, bias, c0);
      } else if (J == 4) {
        wg_store_stacked_pair<4>(o, prm.out_l.c, e, S::EpPitch, row_j, nco, bias, c0);
      } else {
        wg_store_stacked_pair<0>(o, prm.out_l.c, e, S::EpPitch, row_j, nco, bias, c0, J);
      }
    }
    if (threadIdx.x == 0 && par) store_one(0);
    if (threadIdx.x == kWgConsumers - 1 && (prm.q_step - par) % 2 == 1) store_one(prm.q_step - 1);
  } else {
#pragma unroll
    for (int half = 0; half < S::Q / 256; ++half) {
      const int ql = threadIdx.x + 256 * half;
      if (ql < prm.q_step) store_one(ql);
    }
  }
  CT3D_WG_STAMP(4);
#endif
}

// ============================================================================
// Host
// ============================================================================
// Whether this build runs wgmma kernels on GPU `dev` (an sm_90 GPU and kernels built for
// sm_90a): probed once per device by a one-thread kernel. Not probed during stream capture
// (the probe synchronizes): model_new.py probes every GPU at import.
inline bool wgmma_available(int dev) {
  static std::vector<int> cache(64, -1);  // per device: -1 not probed, 0 no, 1 yes
  if (dev < 0 || dev >= int(cache.size())) return false;
  if (cache[dev] >= 0) return cache[dev] == 1;
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  if (prop->major != 9 || prop->minor != 0) return (cache[dev] = 0) == 1;
  auto stream = at::cuda::getCurrentCUDAStream(dev);
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &cap));
  if (cap != cudaStreamCaptureStatusNone) return false;
  c10::cuda::CUDAGuard guard(dev);
  at::Tensor flag = at::zeros({1}, at::TensorOptions().device(at::kCUDA, dev).dtype(at::kInt));
  wgmma_probe_kernel<<<1, 1, 0, stream>>>(flag.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cache[dev] = flag.item<int>();
  return cache[dev] == 1;
}

// The stamps of the window_wg_kernel launches since the last call (CT3D_WG_TIMING builds;
// else empty): int64 [kWgStampBlocks, 5], zeros for blocks that did not run or returned early.
inline at::Tensor wg_stamps() {
#ifdef CT3D_WG_TIMING
  at::Tensor t = at::empty({kWgStampBlocks, 5}, at::TensorOptions().dtype(at::kLong));
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(t.data_ptr<int64_t>(), g_wg_stamps, sizeof(g_wg_stamps)));
  at::Tensor zero = at::zeros_like(t);  // the next read sees only launches after this one
  C10_CUDA_CHECK(cudaMemcpyToSymbol(g_wg_stamps, zero.data_ptr<int64_t>(), sizeof(g_wg_stamps)));
  return t;
#else
  return at::empty({0, 5}, at::TensorOptions().dtype(at::kLong));
#endif
}

// The producer warps of the wgmma window kernel as CT3D_WG_WS in the environment sets them
// (0: not warp-specialized, the MMA warps copy; else 4), wherever the kernel runs without
// 3xTF32 (A/B measurements); -1 where unset (run_window_wg decides). Read once.
inline int wg_ws_env() {
  static const int v = [] {
    const int n = env_int("CT3D_WG_WS", INT_MIN);
    return n == INT_MIN ? -1 : n <= 0 ? 0 : 4;
  }();
  return v;
}

// CT3D_WG_STACK=0 in the environment (A/B measurements): no taps stacked in M (the old
// rule: wgmma only for more than 32 output channels a group). Read once.
inline int wg_stack_env() {
  static const int v = env_int("CT3D_WG_STACK", 1);
  return v;
}

// CT3D_WG_PARTS (A/B measurements): at least this many tap parts a (chunk, depth tap);
// 0 where unset. Read once.
inline int wg_parts_env() {
  static const int v = std::max(0, env_int("CT3D_WG_PARTS", 0));
  return v;
}

// CT3D_WG_SKIP_IDLE=1 in the environment: a warpgroup whose positions all lie past its
// plane (the last tile of a plane) issues no wgmmas (prm.skip_idle). Off by default until
// it has run on a GPU (prepared in a session without one). Read once.
inline int wg_skip_idle_env() {
  static const int v = env_int("CT3D_WG_SKIP_IDLE", 0);
  return v;
}

// CT3D_WG_TWO_BLOCKS=1 in the environment: the window convolution without 3xTF32 runs the
// half-width shape, two blocks an SM (window_wg_kernel<T, false, 0, true>), where two
// stages of it fit in half an SM's shared memory. Off by default until it has run on a GPU
// (prepared in a session without one). Read once.
inline int wg_two_blocks_env() {
  static const int v = env_int("CT3D_WG_TWO_BLOCKS", 0);
  return v;
}
static std::atomic<int64_t> g_wg_two_blocks_launches{0};
int64_t wg_two_blocks_launches() { return g_wg_two_blocks_launches.load(); }

// CT3D_WG_VEC_OUT=1 in the environment: the epilogue stores several outputs at once where
// the layout allows (prm.vec_out: two adjacent positions in NCDHW, 16 bytes of a position's
// channels in channels_last; run_window_wg). Off by default until it has run on a GPU
// (prepared in a session without one). Read once.
inline int wg_vec_out_env() {
  static const int v = env_int("CT3D_WG_VEC_OUT", 0);
  return v;
}
static std::atomic<int64_t> g_wg_vec_out_launches{0};
int64_t wg_vec_out_launches() { return g_wg_vec_out_launches.load(); }

// Launches with skip_idle on that have a tile with an idle warpgroup (tests: that the cases
// meant to skip did; the host knows from the geometry).
static std::atomic<int64_t> g_wg_skip_idle_launches{0};
int64_t wg_skip_idle_launches() { return g_wg_skip_idle_launches.load(); }

// Runs the window convolution on wgmma. force: wherever it can run (tests); else only
// where it is expected to beat window_tc.cuh's kernel: more than 32 output channels a
// group (with 32, half of M is zero rows: kb68's grad input measured 7.1 ms against 6.7
// on mma.sync in bf16, 12.3 against 11.5 in TF32). fp32 without TF32 runs 3xTF32
// (WgShape<true>). Returns false, launching nothing, where it does not apply: no wgmma
// build, a strided source step (grad input at stride > 1 in h or w), or a window that does
// not fit (two stages at least).
template <typename T>
bool run_window_wg(WinParams prm, const at::Tensor& src_t, const at::Tensor& w, bool tf32, bool force) {
  using E = typename WinElem<T>::type;
  constexpr int KC = 32 / int(sizeof(E));
  const Problem& P = prm.P;
  const int dev = w.get_device();
  const bool split = std::is_same<T, float>::value && !tf32;
  const bool half = !split && wg_two_blocks_env() != 0;  // two blocks an SM (opt-in)
  const int Q = split ? WgShape<true>::Q : half ? WgShape<false, true>::Q : WgShape<false>::Q;
  const int tap_bytes = split ? WgShape<true>::TapBytes : WgShape<false>::TapBytes;
  const int ep_bytes = split ? WgShape<true>::EpBytes : half ? WgShape<false, true>::EpBytes : WgShape<false>::EpBytes;
  if (prm.job == kJobGradInput && (P.s[1] != 1 || P.s[2] != 1)) return false;
  // Taps stacked in M (see the header) where out_cg <= 32 and w has stride 1: J w taps a
  // wgmma, J * out_cg <= 64 rows. Not forced, it runs where the rows of a kW taps' worth of
  // stacked taps are at least 70% used (kb58's forward 7 x 16 of 2 x 64, kb68's grad input
  // 5 x 32 of 3 x 64); without stacking, where more than 32 output channels a group (with
  // 32, half of M is zero rows: kb68's grad input measured 7.1 ms against 6.7 on mma.sync
  // in bf16, 12.3 against 11.5 in TF32).
  // The overlap of blocks, (J - 1) * dilation positions, is kept under a quarter of Q.
  const int kw = int(P.k[2]);
  int stack = prm.out_cg <= 32 && P.s[2] == 1 && wg_stack_env() != 0
                  ? int(std::min<int64_t>(kWgM / prm.out_cg, kw)) : 1;
  while (stack > 1 && (stack - 1) * P.d[2] > Q / 4) --stack;
  const int groups_w = stacked_taps(kw, stack);  // kw where stack is 1
  if (!force && (stack > 1 ? 10 * kw * prm.out_cg < 7 * kWgM * groups_w : prm.out_cg <= 32)) return false;
  if (!wgmma_available(dev)) return false;
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  const int64_t nsub = prm.job == kJobForward ? P.G * P.s[0] * P.s[1] * P.s[2] : P.G;
  const int64_t nz = prm.job == kJobForward ? P.s[0] * P.s[1] * P.s[2] : 1;

  // Geometry: tiles per plane, planes, the window's rows (the most any block needs) and
  // the taps of a stage, over the sub-problems (phases).
  int64_t tpp = 0, pd_max = 0, slice_pos = 0, thw_max = 0;
  const int q_step = Q - (stack - 1) * int(P.d[2]);  // a block stores its first q_step positions
  bool idle_wg = false;  // some plane's last tile ends inside warpgroup 0's positions
  // The epilogue's wide stores (see the kernel's epilogue): 16 bytes of a position's
  // channels where out is channels_last with whole, aligned 16-byte runs of them; else
  // position pairs where out is NCDHW and every pair is aligned and in one row (the
  // launch-wide conditions here, each sub-problem's below).
  const int64_t esize = int64_t(sizeof(T)), vch = 16 / esize;
  const uintptr_t out_addr = reinterpret_cast<uintptr_t>(prm.out);
  const bool vec_channels = wg_vec_out_env() != 0 && prm.out_l.c == 1 && prm.out_cg % vch == 0 &&
                            prm.out_l.v % vch == 0 && prm.out_l.n % vch == 0 && out_addr % 16 == 0;
  bool pair_out = wg_vec_out_env() != 0 && !vec_channels && prm.out_l.v == 1 &&
                  prm.out_l.c % 2 == 0 && prm.out_l.n % 2 == 0 && prm.out_sz[2] % 2 == 0 &&
                  out_addr % uintptr_t(2 * esize) == 0;
  for (int64_t z = 0; z < nz; ++z) {
    WinDim wd[3];
    win_dims(P, prm.job, int(z), wd);
    if (wd[0].P == 0 || wd[1].P == 0 || wd[2].P == 0) continue;
    const int64_t C = wd[2].P + win_span(wd[2]);
    pair_out = pair_out && wd[2].os == 1 && wd[2].oc % 2 == 0 && C % 2 == 0 && wd[2].P % 2 == 0;
    const int64_t tiles = (wd[1].P * C + q_step - 1) / q_step;
    tpp = std::max<int64_t>(tpp, tiles);
    idle_wg = idle_wg || wd[1].P * C - (tiles - 1) * q_step <= Q / kWgGroups;
    pd_max = std::max<int64_t>(pd_max, wd[0].P);
    const int64_t rows = (Q - 1) / C + 1 + win_span(wd[1]) + 2;
    slice_pos = std::max<int64_t>(slice_pos, rows * C);
    thw_max = std::max<int64_t>(thw_max, int64_t(wd[1].T) * stacked_taps(wd[2].T, stack));
  }
  if (tpp == 0) return false;  // every sub-problem empty: window_tc.cuh's path handles it
  // Tables (kernel: w_tab, sh_tab, vtd, pos_tab); positions as 16-byte units in an int;
  // and room for the kernel's static shared memory (s_nvt, s_bar), which counts against
  // the same per-block limit.
  const int64_t table_bytes = (P.kvol() + P.k[1] * P.k[2] + P.k[0] + slice_pos) * int64_t(sizeof(int)) + 128;
  if (!win_table_ok(prm.src_sz[1], prm.src_sz[2], window_source<T>(prm, src_t).pos_bytes())) return false;
  // The window: two K slices (3xTF32: then their small parts), 128-byte aligned.
  const int64_t slice_bytes = (slice_pos * 16 + 127) / 128 * 128;
  // A stage: the window, then the weights of a part of the (th, tw) taps: all of them, or
  // the fewest parts that let two stages fit.
  const int64_t window_bytes = (split ? 4 : 2) * slice_bytes;
  // Shared memory a block may take: the opt-in limit, or with half (two blocks an SM) half
  // an SM's (less the 1 KB the SM keeps a block, as win_stages counts it).
  const int64_t smem_limit = half ? std::min<int64_t>(prop->sharedMemPerBlockOptin, int64_t(prop->sharedMemPerMultiprocessor) / 2 - 1024)
                             : int64_t(prop->sharedMemPerBlockOptin);
  auto stage_of = [&](int64_t parts) { return window_bytes + (thw_max + parts - 1) / parts * tap_bytes; };
  int64_t parts = 1;
  while (parts < thw_max && 2 * stage_of(parts) + table_bytes > smem_limit) ++parts;
  // Warp-specialized, a third stage is worth copying the window once more a (chunk, depth
  // tap): with two, the producers refill a buffer only while the one stage queued runs
  // (kb68: 25 taps a stage, two stages; split in two parts of 13 and 12 taps, three fit).
  // Only while a part keeps 8 taps or more (a stage's wgmmas outlast its copy).
  if (!split && !half && wg_ws_env() != 0 && 3 * stage_of(parts) + table_bytes > smem_limit) {
    for (int64_t p = parts + 1; p <= parts + 2 && (thw_max + p - 1) / p >= 8; ++p)
      if (3 * stage_of(p) + table_bytes <= smem_limit) {
        parts = p;
        break;
      }
  }
  if (wg_parts_env() > parts) parts = std::min<int64_t>(wg_parts_env(), thw_max);  // A/B only
  const int64_t stage_bytes = stage_of(parts);
  if (slice_bytes >= (int64_t(1) << 18) || 2 * stage_bytes + table_bytes > smem_limit) return false;
  // Stages: up to 4 where a stage is short enough (then the kernel queues a stage of
  // wgmmas ahead of each copy: `lead` in the kernel); CT3D_WIN_STAGES, where set, decides
  // as for window_tc.cuh.
  int stages = win_stages(stage_bytes, table_bytes, half ? 2 : 1, prop);
  if (!split && !half && stages == 3 && 4 * stage_bytes + table_bytes <= smem_limit && win_stages_env() == 0) stages = 4;
  static_assert(kWgMaxStages >= 4, "run_window_wg: the kernel's barriers a buffer");
  const int64_t body = std::max<int64_t>(stages * stage_bytes, ep_bytes);  // stages, then the epilogue's D
  const int64_t smem = body + table_bytes;
  if (smem > smem_limit) return false;

  const int64_t nchunks = (prm.src_cg + KC - 1) / KC;
  const int64_t ncot = stack > 1 ? 1 : (prm.out_cg + kWgM - 1) / kWgM;
  const int64_t wt_taps = P.k[0] * P.k[1] * groups_w;
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor packed = prepare_window_source<T>(prm, src_t, tf32, stream);

  // ---- the weight, in the wgmma layout ----
  const int64_t wt_numel = P.G * wt_taps * nchunks * ncot * (tap_bytes / 4);
  auto wt = at::empty({wt_numel}, w.options().dtype(at::kInt));
  uint32_t* wt_ptr = reinterpret_cast<uint32_t*>(wt.data_ptr<int>());
  const int64_t tblocks = std::min<int64_t>((wt_numel + 255) / 256, 4096);
  if (tblocks > 0) {
    transform_weight_wg_kernel<T><<<tblocks, 256, 0, stream>>>(w.data_ptr<T>(), wt_ptr, P, prm.job, int(nchunks),
                                                              int(ncot), split, stack);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  prm.wt_big = wt_ptr;
  prm.wt_small = nullptr;  // 3xTF32: each tap's small part follows its big part
  prm.nchunks = int(nchunks);
  prm.ntiles = int(ncot);
  prm.tiles_per_plane = int(tpp);
  prm.pd_max = int(pd_max);
  prm.window_bytes = int(window_bytes);
  prm.stage_bytes = int(stage_bytes);
  prm.stages = stages;
  prm.tap_parts = int(parts);
  prm.stack = stack;
  prm.q_step = q_step;
  prm.wt_taps = int(wt_taps);
  prm.table_offset = int(body);
  prm.skip_idle = wg_skip_idle_env() != 0;
  prm.vec_out = vec_channels ? kWgVecChannels : pair_out ? kWgVecPairs : kWgVecNone;
  const int64_t gx = P.N * pd_max * tpp;
  TORCH_CHECK(gx < (int64_t(1) << 31) && ncot <= 65535 && nsub <= 65535,
              "conv_transpose3d: problem too large for the tensor-core grid");
  // Warp-specialized (producer warps issue the copies) where 3 or more stages fit; with
  // two, the producers could refill a buffer only while the tensor pipe runs the one stage
  // queued, and kb68 measured no faster (6.02 -> 6.31 ms TF32, 3.43 -> 3.43 bf16).
  // Not for 3xTF32, whose loop waits for each chain of wgmmas anyway.
  const int pw = split || half ? 0 : wg_ws_env() >= 0 ? wg_ws_env() : stages >= 3 ? 4 : 0;
  auto kernel = half ? window_wg_kernel<T, false, 0, true> : pw == 4 ? window_wg_kernel<T, false, 4> : window_wg_kernel<T, false, 0>;
  if constexpr (std::is_same<T, float>::value) {
    if (split) kernel = window_wg_kernel<T, true, 0>;
  }
  const int threads = kWgConsumers + 32 * pw;
  set_smem_limit(kernel, smem);
  kernel<<<dim3{unsigned(gx), unsigned(ncot), unsigned(nsub)}, threads, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (prm.skip_idle && idle_wg) ++g_wg_skip_idle_launches;
  if (half) ++g_wg_two_blocks_launches;
  if (prm.vec_out != kWgVecNone) ++g_wg_vec_out_launches;
  return true;
}

}  // namespace ct3d
