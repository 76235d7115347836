// window_tc.cuh: the tensor-core "window convolution" that runs the forward (per stride
// phase) and grad input. Each job's file builds a WinParams and calls run_window_tc.
//
// Both jobs are, per group, dense correlations in a position index j (one per dimension):
//   out[n, co, oc + os*j] = sum_{ci, t} src[n, ci, j*mult + off0 + t*dstep] * B_t[ci, co]
//   forward (one stride phase): src = x, mult = 1, taps t of the phase, off(t) = off0 - t*doff,
//                               weight tap r0 + t*rs, out = y at c + s*j  (common.cuh)
//   grad input:                 src = dy, mult = s, all taps, off(r) = r*d - p, out = dx at j
// GEMM view: M = output positions j, N = output channels (per group), K = (chunk of
// source channels, tap). A chunk is 32 bytes of channels: 8 fp32 (one m16n8k8 TF32 MMA
// step) or 16 fp16/bf16 (one m16n8k16 step).
//
// Block tile: BM consecutive positions of one output plane (flattened (jh, jw) of one
// batch item n and one depth index jd) x BN output channels (16, 32, 48 or 64; more take
// several blocks along grid.y); 8 warps, each 32 or 64 rows x (BN / WARPS_N) (win_bn,
// win_bm).
//
// The source is first packed channels-innermost, src_p[n][position][g][chunk][32 bytes]
// (pack_src_kernel: zero-padded to whole chunks, rounded to TF32 in TF32 mode), so one
// window position of one chunk is 32 contiguous bytes that cp.async copies straight
// into shared memory. A channels_last_3d source whose channels need no padding is used
// in place (in TF32 mode each thread then rounds the window pieces it copied once they
// land).
//
// Pipeline. The K loop walks stages (chunk, depth tap td); a stage is the window of one
// source plane that any of the block's positions reads through any (th, tw) tap: R rows
// x C columns, xs[position][32 bytes + 16 of pad] (48 bytes keep ldmatrix conflict-free at
// mult 1), then the stage's B (below). Stages are copied with cp.async (zero-fill outside
// src) `stages` deep, so the copy of stage k + stages - 1 overlaps the MMAs of stage k.
// Source planes outside src are skipped
// (their taps add nothing). Within a stage, every (th, tw) tap's A operand is the window
// shifted: each lane hands ldmatrix its row's window address plus the tap's shift, so the
// im2col happens in the address. The same ldmatrix.x4 gives the TF32 m16n8k8 and the
// 16-bit m16n8k16 A fragments (both are 16 rows x 32 bytes).
//
// B (weights) is rearranged once per call by transform_weight_kernel into mma fragment
// order [g][tap][chunk][n8 tile][lane][2 words], zero-padded, already rounded or split
// (16-bit: two k-consecutive values per word), so a lane loads its B fragment with one
// 8-byte load. With one accumulator set, each stage also copies the B of its taps for the
// block's n8 tiles into shared memory after the window ([thw][tile][lane][2 words]; LDS.64,
// conflict-free): a stage's B is tens of KB per block, so loading it per tap from global
// memory left every tap waiting on an L2 round trip (v8 -> v9 in NOTES.md). 3xTF32 (twice
// the B bytes) loads B from global memory, two taps ahead across stage boundaries.
//
// Precision. fp32 with TF32 allowed: A rounded to TF32 (nearest-even) by the pack, B by the
// transform, fp32 accumulation: what cuDNN does. fp32 strict: 3xTF32; each operand splits
// into big = tf32(v) and small = tf32(v - big); big*big accumulates in one set of registers,
// big*small + small*big in another. The tensor core's fp32 accumulation truncates when it
// aligns, so its error grows with the length of an MMA chain: the big*big chain restarts
// every kFlushTaps taps and is added into a round-to-nearest register sum. fp16 / bf16:
// m16n8k16 with fp32 accumulation, one rounding of the output.
//
// Sections: descriptors, PTX helpers, kernels (source pack, weight transform, window conv),
// host.
#pragma once
#include "common.cuh"

#include <cstdlib>
#include <string>
#include <type_traits>

namespace ct3d {

constexpr int kFlushTaps = 8;     // 3xTF32: taps between flushes of the big*big MMA chain
constexpr int kWinPos = 48;       // bytes per window position: a 32-byte chunk + 16 of pad

enum WinJob : int { kJobForward = 0, kJobGradInput = 1 };
enum WeightMode : int { kWeightTf32 = 0, kWeightSplit = 1, kWeight16 = 2 };

// Element type of the packed source and the window: fp32 for fp32 (TF32 or 3xTF32 MMAs),
// else the 16-bit type itself.
template <typename T> struct WinElem { using type = T; };
template <> struct WinElem<float> { using type = float; };

// ============================================================================
// Descriptors
// ============================================================================
// One spatial dimension of a window convolution: output positions j in [0, P) read
// source position j*mult + off0 + t*dstep through tap t in [0, T), whose weight index is
// r0 + t*rs, and land on output position oc + os*j.
struct WinDim {
  int P, mult, T, off0, dstep, r0, rs, oc, os;
};

struct WinParams {
  const void* src;        // packed source (E): element n*pk_n + position*pk_v + g*cg_pad + channel
  int64_t pk_n, pk_v, cg_pad;
  const uint32_t* wt_big;    // [G][kvol][nchunks][ntiles][32][2]
  const uint32_t* wt_small;  // same layout, 3xTF32 only
  const void* bias;       // forward only; may be null
  void* out;
  Problem P;
  int job;
  int64_t src_cg, out_cg; // per group: K channels and N channels
  int64_t src_sz[3], out_sz[3];
  Layout out_l;           // strides of out (common.cuh)
  int nchunks, ntiles;    // chunks of src_cg; n8 tiles of the padded out_cg
  int tiles_per_plane;    // grid.x decode: max over sub-problems of ceil(Ph*Pw / BM)
  int pd_max;             // max over sub-problems of Pd
  int window_bytes;       // the window of a stage (R*C positions), a multiple of 128
  int stage_bytes;        // one pipeline stage: the window, then (one accumulator set) B
  int stages;             // pipeline depth, 2..4
  int table_offset;       // window_wg.cuh: shared-memory bytes before the tap tables
  int tap_parts;          // window_wg.cuh: stages a (chunk, depth tap) takes, its taps split among them
  int stack;              // window_wg.cuh: w taps stacked in M (1: none; see its header)
  int q_step;             // window_wg.cuh: virtual positions between blocks' first positions
  int wt_taps;            // window_wg.cuh: taps (stacked taps) a group in the weight layout
  bool round_a;           // TF32 with the source used in place: round each stage's window
  bool skip_idle;         // window_wg.cuh: a warpgroup with no positions in the plane issues no wgmmas
  int vec_out;            // window_wg.cuh: the epilogue's wide stores (kWgVec*), 0: one element a store
};

// The tensors and sizes of a job: forward reads x (Cin channels) and writes y (Cout);
// grad input reads dy (Cout) and writes dx (Cin). run_window_tc fills in the rest.
inline WinParams win_params(int job, const void* bias, void* out, const Problem& P) {
  const bool fwd = job == kJobForward;
  WinParams prm{};
  prm.bias = bias;
  prm.out = out;
  prm.P = P;
  prm.job = job;
  prm.src_cg = fwd ? P.cin_g() : P.cout_g();
  prm.out_cg = fwd ? P.cout_g() : P.cin_g();
  for (int e = 0; e < 3; ++e) {
    prm.src_sz[e] = fwd ? P.in[e] : P.out[e];
    prm.out_sz[e] = fwd ? P.out[e] : P.in[e];
  }
  prm.out_l = fwd ? P.yl : P.xl;
  return prm;
}

// Sub-problem z: its group and its three WinDims.
__host__ __device__ inline int win_dims(const Problem& P, int job, int z, WinDim (&wd)[3]) {
  if (job == kJobGradInput) {
    for (int e = 0; e < 3; ++e)
      wd[e] = WinDim{int(P.in[e]), int(P.s[e]), int(P.k[e]), -int(P.p[e]), int(P.d[e]), 0, 1, 0, 1};
    return z;
  }
  const int nph = int(P.s[0] * P.s[1] * P.s[2]);
  int ph = z % nph;
  int cs[3];
  cs[2] = ph % int(P.s[2]); ph /= int(P.s[2]);
  cs[1] = ph % int(P.s[1]);
  cs[0] = ph / int(P.s[1]);
  for (int e = 0; e < 3; ++e) {
    const PhaseDim q = phase_dim(cs[e], int(P.k[e]), int(P.s[e]), int(P.p[e]), int(P.d[e]), int(P.out[e]));
    wd[e] = WinDim{q.P, 1, q.T, q.off0, -q.doff, q.r0, q.rs, q.c, int(P.s[e])};
  }
  return z / nph;
}

__host__ __device__ inline int win_span(const WinDim& w) {  // off_max - off_min
  const int reach = (w.T > 1 ? w.T - 1 : 0) * w.dstep;
  return reach < 0 ? -reach : reach;
}
__host__ __device__ inline int win_off_min(const WinDim& w) {
  const int reach = (w.T > 1 ? w.T - 1 : 0) * w.dstep;
  return w.off0 + (reach < 0 ? reach : 0);
}

// The taps of one dimension (T of them) as they run where `stack` of them share a wgmma
// (window_wg.cuh, taps stacked in M): ceil(T / stack) groups; T where stack is 1.
__host__ __device__ constexpr int stacked_taps(int T, int stack) { return (T + stack - 1) / stack; }

// Tap tables of one block in shared memory, both window kernels: w_tab[t] = weight offset
// (t_scale units: words of its tap) of tap t = (td, th, tw) of sub-problem wd; sh_tab[(th,
// tw)] = the window shift of that tap in a window of C columns, times unit (bytes a
// position, or 1); vtd = the depth taps whose source plane output plane jd reads is inside
// the source (src_d planes). Returns their number. Every thread of the block calls it.
// stack > 1 (window_wg.cuh, w taps stacked in M; stride 1 in w): "tw" numbers the groups
// of `stack` w taps, ceil(T / stack) of them; group tw holds the taps whose window shifts
// are (tw * stack + j) * |dstep|, j < stack, its weights are stacked tap
// (rd * k[1] + rh) * groups + tw, and its shift is the smallest of the group's.
__device__ inline int win_tap_tables(const Problem& P, const WinDim (&wd)[3], int jd, int C, int64_t t_scale,
                                     int unit, int64_t src_d, int* w_tab, int* sh_tab, int* vtd, int* s_nvt,
                                     int stack = 1) {
  const int Tw = stacked_taps(wd[2].T, stack);
  const int Thw = wd[1].T * Tw;
  for (int t = threadIdx.x; t < wd[0].T * Thw; t += blockDim.x) {
    const int thw = t % Thw, tw = thw % Tw, th = thw / Tw, td = t / Thw;
    const int rdh = (wd[0].r0 + td * wd[0].rs) * int(P.k[1]) + wd[1].r0 + th * wd[1].rs;
    const int r = stack > 1 ? rdh * Tw + tw : rdh * int(P.k[2]) + wd[2].r0 + tw * wd[2].rs;
    w_tab[t] = int(r * t_scale);
    if (td == 0) {
      const int sh = wd[1].off0 + th * wd[1].dstep - win_off_min(wd[1]);
      const int sw = stack > 1 ? tw * stack * abs(wd[2].dstep) : wd[2].off0 + tw * wd[2].dstep - win_off_min(wd[2]);
      sh_tab[thw] = (sh * C + sw) * unit;
    }
  }
  if (threadIdx.x == 0) {
    int nvt = 0;
    for (int td = 0; Thw > 0 && td < wd[0].T; ++td) {
      const int id = jd * wd[0].mult + wd[0].off0 + td * wd[0].dstep;
      if (unsigned(id) < unsigned(src_d)) vtd[nvt++] = td;
    }
    *s_nvt = nvt;
  }
  __syncthreads();
  return *s_nvt;
}

// ============================================================================
// PTX helpers (sm_80+)
// ============================================================================
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// Transposed loads: lane l receives elements [2*(l%4), 2*(l%4)+1][l/4] of each 8x8 matrix
// whose rows (16 bytes each) the lanes 8m..8m+7 address: the B fragment of m16n8k16 when
// rows are k (positions) and columns n (channels).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
#endif
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// m16n8k16 with fp32 accumulation: each A and B register holds two k-consecutive values.
template <typename T>
__device__ __forceinline__ void mma_k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, at::BFloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// TF32 rounding for the 3xTF32 split (any rounding works there; cvt.rna is one instruction).
__device__ __forceinline__ uint32_t tf32_rna(float v) {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
#endif
  return r;
}

// p / d for 0 <= p, d < 2^16 without a division: magic = fast_div_magic(d), ceil(2^32 / d),
// 0 standing for d = 1 (2^32 does not fit). Exact: p * (magic * d - 2^32) < 2^32.
__host__ __device__ inline uint32_t fast_div_magic(uint32_t d) { return d <= 1 ? 0u : 0xffffffffu / d + 1u; }
__device__ __forceinline__ int fast_div(int p, uint32_t magic) {
  return magic == 0 ? p : int(__umulhi(uint32_t(p), magic));
}

// The 16-byte halves of chunk `chunk` (kc channels) that a group's cg_pad source channels
// hold: 2, or 1 where cg_pad ends mid-chunk (the source is padded to whole halves only).
__device__ __forceinline__ int win_halves(int64_t cg_pad, int chunk, int kc) {
  const int64_t h = (cg_pad - int64_t(chunk) * kc) / (kc / 2);
  return h < 2 ? int(h) : 2;
}

// The window's source positions, made once a block (every stage reads the same positions
// of another plane or chunk): tab[p] = the offset, in 16-byte units, of window position p
// (row p / C, column p % C: source row wh0 + p / C, column ww0 + p % C) from the start of a
// source plane of H x W positions, `unit` 16-byte units a position; -1 outside the plane.
// A stage's copy then costs a table read a piece, not a division and bounds checks: the
// copy's issue was on the wgmma kernel's critical path (NOTES.md, position table). The
// host makes sure that H * W * unit < 2^31 (win_table_ok).
__device__ inline void win_pos_table(int* tab, int npos, int C, int wh0, int ww0, int H, int W, int unit) {
  const uint32_t c_magic = fast_div_magic(uint32_t(C));
  for (int p = threadIdx.x; p < npos; p += blockDim.x) {
    const int r = fast_div(p, c_magic), c = p - r * C, ih = wh0 + r, iw = ww0 + c;
    tab[p] = unsigned(ih) < unsigned(H) && unsigned(iw) < unsigned(W) ? (ih * W + iw) * unit : -1;
  }
}
inline bool win_table_ok(int64_t H, int64_t W, int64_t pos_bytes) {
  return pos_bytes % 16 == 0 && H * W * (pos_bytes / 16) < (int64_t(1) << 31);
}

// 16-byte global -> shared copy; src_bytes = 0 writes zeros (the source is not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
#endif
}
// 8-byte global -> shared copy (through L1; cp.async.cg takes 16 bytes only).
__device__ __forceinline__ void cp_async8(uint32_t dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
#endif
}

// A stage's copy of the window: the two 16-byte halves (bytes 0-15, 16-31 of its chunk) of
// each of npos window positions, from the source plane at base (the chunk's first channel;
// positions through tab) to dst + p * pos_bytes + half * half_bytes; zeros outside the
// plane, or where half >= halves, the halves of this chunk the source holds (the last
// chunk of a group may hold one: win_halves). Copying thread t (of THREADS; threadIdx.x,
// or a producer warp's index among the producers) copies half t % 2 of positions t / 2,
// t / 2 + THREADS / 2, ...: a table read, a wide multiply-add and the copy a piece (the
// loop is on every stage's critical path). Both window kernels.
template <int THREADS>
__device__ __forceinline__ void win_copy_window(uint32_t dst, int pos_bytes, int half_bytes, const void* base,
                                                const int* tab, int npos, int halves, int tid) {
  const int half = tid & 1;
  const char* b = static_cast<const char*>(base) + half * 16;
  const int nbytes = half < halves ? 16 : 0;
  uint32_t d = dst + (tid >> 1) * pos_bytes + half * half_bytes;
#pragma unroll 4
  for (int p = tid >> 1; p < npos; p += THREADS / 2, d += (THREADS / 2) * pos_bytes) {
    const int t = tab[p];
    cp_async16(d, b + uint64_t(uint32_t(max(t, 0))) * 16u, t >= 0 ? nbytes : 0);
  }
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most n (0..3, uniform) of this thread's copy groups are still in flight.
__device__ __forceinline__ void cp_async_wait(int n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (n <= 0) asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  else if (n == 1) asm volatile("cp.async.wait_group 1;\n" ::: "memory");
  else if (n == 2) asm volatile("cp.async.wait_group 2;\n" ::: "memory");
  else asm volatile("cp.async.wait_group 3;\n" ::: "memory");
#endif
}

// The source window of the thin-group kernels (forward.cu's thin_fwd_kernel, grad_input.cu's
// thin_dgrad_kernel, grad_weight.cu's thin_wgrad_kernel), staged by all 256 threads of a
// block: window position (plane pi, row r, column c) holds src at (planes[pi], row0 + r,
// col0 + c), channels 0..7 (fp32; 0 outside src and past cg), rounded to TF32
// (nearest-even) when ROUND. Columns are stored by residue mod `mult` (1: in order), slot
// (c % mult) * qc + c / mult of a row of pitch = mult * qc slots, so that positions read
// `mult` columns apart (a strided convolution's taps) sit side by side.
// Layout: two half planes, channels 0..3 of every slot (16 bytes a slot), then channels
// 4..7 `half` bytes on. An ldmatrix phase (8 consecutive slots of one half) reads 128
// contiguous bytes, so any slot is conflict-free and a tap's address is the row's plus
// 16 bytes a slot: one add (the old layout swapped the halves of every other group of four
// slots, and each tap recomputed the swizzle). half is 64 bytes past a multiple of 128, so
// a warp's 4-byte loads of channel c and c + 4 at 4 consecutive slots (grad weight's B and
// A) hit the two halves' different banks.
// The copy: positions walked in source order (a warp's loads of a channel coalesce along
// the row), BATCH a thread at once, so 8 * BATCH loads are in flight before the first
// store. Offsets are 32-bit from the sample's base (src: at (n, the group's first
// channel)); thin_offsets_fit checks on the host that a sample's offsets fit. A position
// outside src, or a channel past cg, loads a valid element (offset 0, channel cg - 1) and
// stores 0 instead: no branch a channel. ncu found the old copy (64-bit offsets and a
// branch a channel) issue-bound, ~220 instructions a position (NOTES.md, "Thin-group
// backward").
// BATCH is what the caller's register cap leaves room for: kThinBatch (2) under 80
// registers or beside grad weight's accumulators, kThinBatchWide (4) for thin_dgrad_kernel
// (128 registers). Planes outside [0, D) are zero-filled (grad weight stages every depth
// tap's plane).
struct ThinWindow {
  int rows, cols;          // window rows and columns (a plane)
  int qc;                  // slots of one residue class: ceil(cols / mult)
  int mult;                // column multiplier (stride of the reads along w)
  int pitch;               // slots a window row: mult * qc
  int half;                // bytes from channel 0..3 of a slot to its channels 4..7
  uint32_t cols_magic, plane_magic, mult_magic;  // fast_div_magic of cols, rows * cols, mult
};
constexpr int kThinBatch = 2, kThinBatchWide = 4;
constexpr int kThinMaxTd = 16;  // most depth taps (window planes) of a thin kernel's block

// Byte offset of channel c of window slot p (4-byte words: / 4).
__host__ __device__ __forceinline__ int thin_byte(const ThinWindow& w, int p, int c) {
  return (c >> 2) * w.half + p * 16 + (c & 3) * 4;
}

// One element of src at global address a (read-only path), as fp32.
template <typename T>
__device__ __forceinline__ float thin_load(uint64_t a) {
  if constexpr (std::is_same<T, float>::value) {
    float v;
    asm("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(a));
    return v;
  } else {
    unsigned short h;
    asm("ld.global.nc.b16 %0, [%1];" : "=h"(h) : "l"(a));
    if constexpr (std::is_same<T, at::BFloat16>::value) return __uint_as_float(uint32_t(h) << 16);
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
  }
}

// Grad bias while staging (thin_wgrad_kernel): the box of window positions whose dy
// elements this tile owns (thin_bias_range): window planes by bit (none: nothing summed),
// rows [r0, r0 + nr) and columns [c0, c0 + nc), each pair packed lo | hi << 16 (windows
// are under 2^16 rows and columns: thin_back_plan), so the box takes 3 registers beside
// grad weight's 64 + 16 of MMA state.
struct ThinBiasBox {
  uint32_t planes = 0u;
  uint32_t rows = 0u, cols = 0u;  // r0 | nr << 16, c0 | nc << 16
};

// BIAS: also add each owned position's unrounded values, channel ci into bsum[ci].
template <typename T, bool ROUND, int BATCH = kThinBatch, bool BIAS = false>
__device__ __forceinline__ void thin_stage_window(unsigned char* win, const ThinWindow& tw, const T* src,
                                                  uint32_t sc, uint32_t sv, int cg,
                                                  const int* planes, int nplanes, int row0, int col0,
                                                  int D, int H, int W, const ThinBiasBox& box = {},
                                                  float* bsum = nullptr) {
  const int plane_pos = tw.rows * tw.cols, npos = nplanes * plane_pos;
  // One 64-bit global base in a register, opaque to the compiler: otherwise it folds the
  // caller's 64-bit sample offset into every load's address (4 instructions a load, not 1).
  uint64_t gsrc;
  asm("cvta.to.global.u64 %0, %1;" : "=l"(gsrc) : "l"(src));
  // Channel ci's offset from the position's: chan[ci], past cg channel cg - 1's (stored as
  // 0). With BIAS the offset is stepped in one register instead (o below): beside grad
  // weight's accumulators and the 8 sums the table spilled.
  uint32_t chan[8];
#pragma unroll
  for (int ci = 0; ci < 8; ++ci) chan[ci] = BIAS ? 0u : uint32_t(min(ci, cg - 1)) * sc;
  for (int p0 = threadIdx.x; p0 < npos; p0 += 256 * BATCH) {
    float v[BATCH][8];
    int slot[BATCH];
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      const int pos = p0 + u * 256;
      const int pi = fast_div(pos, tw.plane_magic), rem = pos - pi * plane_pos;
      const int r = fast_div(rem, tw.cols_magic), c = rem - r * tw.cols;
      const int q = fast_div(c, tw.mult_magic), res = c - q * tw.mult;
      slot[u] = pos < npos ? (pi * tw.rows + r) * tw.pitch + res * tw.qc + q : -1;
      const int id = pos < npos ? planes[pi] : -1, ih = row0 + r, iw = col0 + c;
      const bool in = unsigned(id) < unsigned(D) && unsigned(ih) < unsigned(H) && unsigned(iw) < unsigned(W);
      const uint32_t off = in ? ((uint32_t(id) * H + ih) * W + iw) * sv : 0u;
      uint32_t o = off;
#pragma unroll
      for (int ci = 0; ci < 8; ++ci) {
        const float e = thin_load<T>(gsrc + uint64_t(BIAS ? o : off + chan[ci]) * sizeof(T));
        v[u][ci] = (in && ci < cg) ? e : 0.f;
        if (BIAS && ci + 1 < cg) o += sc;
      }
      if (BIAS) {
        const bool own = in && ((box.planes >> pi) & 1u) &&
                         uint32_t(r - int(box.rows & 0xffffu)) < (box.rows >> 16) &&
                         uint32_t(c - int(box.cols & 0xffffu)) < (box.cols >> 16);
#pragma unroll
        for (int ci = 0; ci < 8; ++ci) bsum[ci] += own ? v[u][ci] : 0.f;
      }
      if (ROUND) {
#pragma unroll
        for (int ci = 0; ci < 8; ++ci) v[u][ci] = round_tf32(v[u][ci]);
      }
    }
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      if (slot[u] < 0) continue;
      *reinterpret_cast<float4*>(win + thin_byte(tw, slot[u], 0)) = make_float4(v[u][0], v[u][1], v[u][2], v[u][3]);
      *reinterpret_cast<float4*>(win + thin_byte(tw, slot[u], 4)) = make_float4(v[u][4], v[u][5], v[u][6], v[u][7]);
    }
  }
}

// Whether every offset thin_stage_window takes from a sample's base fits its 32 bits:
// (C - 1) * c + (vol - 1) * v of both x (Cin channels) and dy (Cout), below 2^31; and
// both hold elements (the copy's loads of positions outside src read element 0).
inline bool thin_offsets_fit(const Problem& P) {
  const int64_t lim = int64_t(1) << 31;
  if (P.N * P.Cin * P.in_vol() == 0 || P.Cout * P.out_vol() == 0) return false;
  return (P.Cin - 1) * P.xl.c + (P.in_vol() - 1) * P.xl.v < lim &&
         (P.Cout - 1) * P.yl.c + (P.out_vol() - 1) * P.yl.v < lim;
}

// The thin kernels' B: group g's w_words of fragment-ordered weights (big, then small where
// not null) into shared memory by 16-byte cp.async from all 256 threads, committed as one
// group (it lands while the window is staged).
__device__ __forceinline__ void thin_copy_weights(uint32_t* wsm, const uint32_t* big, const uint32_t* small,
                                                  int w_words, int g) {
  const int nw = small != nullptr ? 2 * w_words : w_words;
  for (int i = threadIdx.x * 4; i < nw; i += 1024) {
    const uint32_t* src = i < w_words ? big + int64_t(g) * w_words + i : small + int64_t(g) * w_words + (i - w_words);
    cp_async16(smem_u32(wsm + i), src, 16);
  }
  cp_async_commit();
}

// One tap of the thin forward and grad input kernels: MW m16 tiles of A (ldmatrix.x4 at
// a_addr, tiles 16 slots = 256 bytes apart) times this lane's B fragment bb (TF32) into acc; 3xTF32
// (SPLIT): big*big into blk, big*small + small*big into cor (bs: B's small part), blk added
// into acc every kFlushTaps taps (the tensor core truncates as it accumulates).
template <int MW, bool SPLIT>
__device__ __forceinline__ void thin_tap_mma(float (&acc)[MW][4], float (&blk)[MW][4], float (&cor)[MW][4],
                                             int& taps, uint32_t a_addr, uint2 bb, uint2 bs) {
#pragma unroll
  for (int mt = 0; mt < MW; ++mt) {
    uint32_t a[4];
    ldmatrix_x4(a, a_addr + mt * 256);
    if constexpr (SPLIT) {
      uint32_t ab[4], as[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) split_tf32(a[e], ab[e], as[e]);
      mma_tf32(blk[mt], ab, bb.x, bb.y);
      mma_tf32(cor[mt], as, bb.x, bb.y);
      mma_tf32(cor[mt], ab, bs.x, bs.y);
    } else {
      mma_tf32(acc[mt], a, bb.x, bb.y);
    }
  }
  if (SPLIT && ++taps == kFlushTaps) {
    taps = 0;
#pragma unroll
    for (int i = 0; i < MW; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) { acc[i][e] += blk[i][e]; blk[i][e] = 0.f; }
  }
}

// A ThinWindow of `planes` planes of rows x cols positions, columns stored by residue mod
// mult; its bytes: 2 * half.
inline ThinWindow make_thin_window(int64_t rows, int64_t cols, int64_t mult, int64_t planes) {
  ThinWindow w;
  w.rows = int(rows);
  w.cols = int(cols);
  w.mult = int(mult);
  w.qc = int((cols + mult - 1) / mult);
  w.pitch = int(mult) * w.qc;
  w.half = int((planes * rows * w.pitch * 16 + 127) / 128 * 128 + 64);
  w.cols_magic = fast_div_magic(uint32_t(cols));
  w.plane_magic = fast_div_magic(uint32_t(rows * cols));
  w.mult_magic = fast_div_magic(uint32_t(mult));
  return w;
}
inline int64_t thin_window_bytes(const ThinWindow& w) { return 2 * int64_t(w.half); }

// The dy window of the thin backward kernels (grad_input.cu's, grad_weight.cu's), made on
// the host: tiles of 8 rows x 16*mw columns of an input plane; the window the tile's taps
// reach in each of kD dy planes (rows 7*sH + (kH-1)*dH + 1, columns (16*mw - 1)*sW +
// (kW-1)*dW + 1, stored by residue mod sW), and col_off[rw], tap rw's slot for position
// 0 of a row. mw: the widest (up to 4, no wider than the plane) whose block of
// fixed + per_mw * mw + window bytes leaves room for two blocks an SM, else 1 if that fits
// at all. False where none fits (or kD > kThinMaxTd, kW > kThinMaxK, or a sample's offsets
// pass 32 bits: thin_offsets_fit).
constexpr int kThinMaxK = 32;  // most taps along w (col_off entries)
struct ThinBackPlan {
  int mw;                  // tile width in m16 tiles: 16*mw columns
  int64_t smem;            // shared-memory bytes of a block
  ThinWindow win;          // the dy window, columns stored by residue mod sW
  int col_off[kThinMaxK];  // window slot of tap rw for position 0 of a tile row
  int tiles_h, tiles_w;    // tiles of an input plane: 8 rows, 16*mw columns each
};
inline bool thin_back_plan(const Problem& P, const cudaDeviceProp* prop, int64_t fixed, int64_t per_mw,
                           ThinBackPlan& pl) {
  if (P.k[0] > kThinMaxTd || P.k[2] > kThinMaxK || !thin_offsets_fit(P)) return false;
  const int64_t rows = 7 * P.s[1] + (P.k[1] - 1) * P.d[1] + 1;
  const int64_t cols_max = 63 * P.s[2] + (P.k[2] - 1) * P.d[2] + 1;  // at mw = 4
  if (rows > 4096 || cols_max > 16384) return false;  // far past shared memory; no overflow below
  auto cols_at = [&](int64_t mw) { return (16 * mw - 1) * P.s[2] + (P.k[2] - 1) * P.d[2] + 1; };
  auto bytes_at = [&](int64_t mw) {
    return fixed + per_mw * mw + thin_window_bytes(make_thin_window(rows, cols_at(mw), P.s[2], P.k[0]));
  };
  const int64_t optin = int64_t(prop->sharedMemPerBlockOptin);
  const int64_t per_sm = int64_t(prop->sharedMemPerMultiprocessor) - 2048;  // minus the driver's reserve
  pl.mw = 0;
  for (int64_t m = std::min<int64_t>(4, std::max<int64_t>(1, (P.in[2] + 15) / 16)); m >= 1; --m) {
    const int64_t b = bytes_at(m);
    if (b <= optin && (2 * b <= per_sm || m == 1)) {
      pl.mw = int(m);
      pl.smem = b;
      break;
    }
  }
  if (pl.mw == 0) return false;
  pl.win = make_thin_window(rows, cols_at(pl.mw), P.s[2], P.k[0]);
  for (int rw = 0; rw < int(P.k[2]); ++rw) {
    const int64_t c = rw * P.d[2];  // window column of tap rw for position 0
    pl.col_off[rw] = int(c % P.s[2] * pl.win.qc + c / P.s[2]);
  }
  pl.tiles_h = int((P.in[1] + 7) / 8);
  pl.tiles_w = int((P.in[2] + 16 * pl.mw - 1) / (16 * pl.mw));
  return true;
}

// How pack_src splits each group's channels: chunks slices of chunk_ch channels, each
// padded to cg_pad (chunks = 1, chunk_ch = cg: one slice a group), stored
// [N][vol][G * chunks][cg_pad] or, slice_major, [N][G * chunks][vol][cg_pad] (each slice's
// positions contiguous: grad weight on wgmma copies window rows whole). pair8: in each 16
// channels of a slice, channels c and c + 8 side by side (slots 2 (c % 8) + c / 8 % 2), so
// TF32 grad weight loads the A rows gq and gq + 8 of a position with one 8-byte load;
// needs chunk_ch a multiple of 16.
// The pair8 order: the slot of channel c, and the channel in slot s.
__host__ __device__ constexpr int64_t pair8_slot(int64_t c) { return (c & ~int64_t(15)) | ((c & 7) << 1) | ((c >> 3) & 1); }
__host__ __device__ constexpr int64_t pair8_chan(int64_t s) { return (s & ~int64_t(15)) | ((s & 15) >> 1) | ((s & 1) << 3); }
struct PackSlices {
  int64_t chunks, chunk_ch;
  bool slice_major;
  bool pair8 = false;
  // the channel of a slice held in slot cc (< chunk_ch), and the slot of channel ch
  __host__ __device__ int64_t chan(int64_t cc) const { return pair8 ? pair8_chan(cc) : cc; }
  __host__ __device__ int64_t slot(int64_t ch) const { return pair8 ? pair8_slot(ch) : ch; }
};

// ============================================================================
// Kernels
// ============================================================================
// src (strides l) -> dst[n][v][g*cg_pad + cc] (E; other slicings: PackSlices), zero for
// cc >= cg, rounded to TF32 (ties to even) when round. A 32 x 32 (position x packed channel) tile transposes through
// shared memory so both the reads along positions and the writes along channels coalesce;
// block x walks position tiles x, x + gridDim.x, ...
// sums (may be null): the block's per-channel sums of the values it read (before any
// rounding), fp64 in a fixed order, at sums[(n * gridDim.x + blockIdx.x) * gc + c]; grad
// bias comes from them (pack_bias_kernel), so it needs no pass of its own over dy.
// grid: (slices, ceil(gc/32), N), 256 threads.
template <typename T, typename E>
__global__ void pack_src_kernel(const T* __restrict__ src, E* __restrict__ dst, Layout l, int64_t vol,
                                int64_t cg, int64_t cg_pad, int64_t gc, bool round, double* __restrict__ sums,
                                PackSlices sl) {
  __shared__ float tile[32][33];
  __shared__ double part[8][32];
  const int64_t c0 = int64_t(blockIdx.y) * 32, n = blockIdx.z;
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  double sum = 0.0;  // channel c0 + tx, positions this thread writes
  for (int64_t v0 = int64_t(blockIdx.x) * 32; v0 < vol; v0 += int64_t(gridDim.x) * 32) {
    __syncthreads();  // the previous tile has been read out
    for (int i = ty; i < 32; i += 8) {
      const int64_t c = c0 + i, v = v0 + tx;
      const int64_t gs = c / cg_pad, cc = c - gs * cg_pad;  // slice gs = (group, chunk)
      const int64_t g = gs / sl.chunks, ch = (gs - g * sl.chunks) * sl.chunk_ch + sl.chan(cc);  // channel in group g
      tile[i][tx] = (c < gc && cc < sl.chunk_ch && ch < cg && v < vol) ? float(src[l.at(n, g * cg + ch, v)]) : 0.f;
    }
    __syncthreads();
    for (int i = ty; i < 32; i += 8) {
      const int64_t v = v0 + i, c = c0 + tx;
      if (v < vol && c < gc) {
        const float val = tile[tx][i];
        if (sums != nullptr) sum += double(val);  // uniform: only the grad-weight pack sums
        const int64_t at = sl.slice_major ? ((n * (gc / cg_pad) + c / cg_pad) * vol + v) * cg_pad + c % cg_pad
                                          : (n * vol + v) * gc + c;
        dst[at] = E(round ? round_tf32(val) : val);
      }
    }
  }
  if (sums == nullptr) return;  // uniform
  part[ty][tx] = sum;
  __syncthreads();
  if (ty == 0 && c0 + tx < gc) {
    double s = 0.0;
    for (int i = 0; i < 8; ++i) s += part[i][tx];
    sums[(n * gridDim.x + blockIdx.x) * gc + c0 + tx] = s;
  }
}

// pack_src_kernel's result, faster (where it applies: see pack_src): for positions
// contiguous (l.v == 1), every channel row and vol in whole 16-byte pieces, and packed
// channels in whole 16-byte pieces that stay inside a slice (cg_pad a multiple of them).
// A block's tile is 64 positions x TC packed channels (TC = 64, or 128 where a packed row
// is longer than 64: kb68's grad weight rows of 72 then go out whole from one block, not
// 64 + 8 from two, whose 16-byte tails ran the pack at half speed): 16-byte loads along positions (a
// warp reads 4 (16-bit) or 2 (fp32) channel rows of 128-256 contiguous bytes), the tile
// transposed through shared memory as fp32 ([position][channel], pitch 65: at most 2-way
// bank conflicts either side), 16-byte stores along packed channels (a warp's stores
// cover whole packed rows of consecutive positions where a row fits in the tile). Which
// source channel feeds each packed channel, and where each 16-byte group of them goes,
// is worked out once per block: no divisions in the loop. pack_src_kernel moved its
// 2-byte elements one at a time with int64 divisions each and ran at 10-20% of the copy
// bandwidth (kb68 bf16: 4.3 ms to pack dy for grad weight; NOTES.md, pack v2).
// sums (SUMS): as pack_src_kernel's, taken from the loads (before any rounding); each
// channel's lanes add theirs by a fixed butterfly (deterministic).
constexpr int kPackTP = 64;  // positions a tile
template <typename T, typename E, int TC, bool SUMS>
__global__ void __launch_bounds__(256) pack_src_vec_kernel(const T* __restrict__ src, E* __restrict__ dst, Layout l,
                                                           int64_t vol, int64_t cg, int64_t cg_pad, int64_t gc,
                                                           bool round, double* __restrict__ sums, PackSlices sl) {
  static_assert(sizeof(T) <= 4 && sizeof(E) <= 4, "pack: 16- or 32-bit elements");
  constexpr int LS = 16 / int(sizeof(T));              // positions a load
  constexpr int LD = 16 / int(sizeof(E));              // packed channels a store
  constexpr int LPC = kPackTP / LS;                    // loads a channel row of the tile
  constexpr int NL = kPackTP * TC / LS / 256;          // loads a thread a tile
  constexpr int NS = kPackTP * TC / LD / 256;          // stores a thread a tile
  static_assert(256 % LPC == 0 && NL >= 1 && NS >= 1, "pack tile");
  __shared__ float tile[kPackTP][TC + 1];
  __shared__ int64_t src_row[TC];       // source offset of packed channel c0 + i at position 0, or -1
  __shared__ int64_t dst_grp[TC / LD];  // destination offset of packed channels c0 + LD*j.. at position 0
  const int64_t c0 = int64_t(blockIdx.y) * TC, n = blockIdx.z;
  const int64_t nslices = gc / cg_pad;
  const int64_t vstride = sl.slice_major ? cg_pad : gc;  // destination elements a position
  for (int i = threadIdx.x; i < TC; i += blockDim.x) {
    const int64_t c = c0 + i, gs = c / cg_pad, cc = c - gs * cg_pad;  // slice gs = (group, chunk)
    const int64_t g = gs / sl.chunks, ch = (gs - g * sl.chunks) * sl.chunk_ch + sl.chan(cc);  // channel in group g
    src_row[i] = (c < gc && cc < sl.chunk_ch && ch < cg) ? l.at(n, g * cg + ch, 0) : -1;
    if (i % LD == 0)
      dst_grp[i / LD] = sl.slice_major ? (n * nslices + gs) * vol * cg_pad + cc : n * vol * gc + c;
  }
  __syncthreads();
  double sum[NL];
#pragma unroll
  for (int j = 0; j < NL; ++j) sum[j] = 0.0;
  const int pc = threadIdx.x % LPC;  // this thread's load piece along the tile's positions
  for (int64_t v0 = int64_t(blockIdx.x) * kPackTP; v0 < vol; v0 += int64_t(gridDim.x) * kPackTP) {
    uint4 raw[NL];
#pragma unroll
    for (int j = 0; j < NL; ++j) {  // all loads first: NL x 16 bytes in flight a thread
      const int ci = threadIdx.x / LPC + j * (256 / LPC);
      const int64_t v = v0 + pc * LS, row = src_row[ci];
      raw[j] = row >= 0 && v < vol ? __ldcs(reinterpret_cast<const uint4*>(src + row + v)) : make_uint4(0, 0, 0, 0);
    }
    __syncthreads();  // the previous tile has been read out
#pragma unroll
    for (int j = 0; j < NL; ++j) {
      const int ci = threadIdx.x / LPC + j * (256 / LPC);
      T e[LS];
      memcpy(e, &raw[j], 16);
      float f[LS];
#pragma unroll
      for (int k = 0; k < LS; ++k) {
        f[k] = float(e[k]);
        if constexpr (SUMS) sum[j] += double(f[k]);
      }
#pragma unroll
      for (int k = 0; k < LS; ++k) tile[pc * LS + k][ci] = f[k];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < NS; ++j) {  // LD channels (group grp) of position p
      const int k = threadIdx.x + 256 * j, grp = k % (TC / LD), p = k / (TC / LD);
      const int64_t v = v0 + p;
      if (v >= vol || c0 + grp * LD >= gc) continue;
      E o[LD];
#pragma unroll
      for (int e = 0; e < LD; ++e) {
        const float val = tile[p][grp * LD + e];
        o[e] = E(round ? round_tf32(val) : val);
      }
      uint32_t u[4];
      memcpy(u, o, 16);
      // one 16-byte store (through a uint4 the compiler split it into 4-8 narrow ones)
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst + dst_grp[grp] + v * vstride),
                   "r"(u[0]), "r"(u[1]), "r"(u[2]), "r"(u[3]) : "memory");
    }
  }
  if constexpr (SUMS) {
#pragma unroll
    for (int j = 0; j < NL; ++j) {
      double s = sum[j];
#pragma unroll
      for (int m = 1; m < LPC; m <<= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
      const int64_t c = c0 + threadIdx.x / LPC + j * (256 / LPC);
      if (pc == 0 && c < gc) sums[(n * gridDim.x + blockIdx.x) * gc + c] = s;
    }
  }
}

// db[g*cg + cc] = the sum over n and slices of sums[(n * slices + s) * gc + g*cg_pad + cc]:
// one block (256 threads) a channel, thread t adding terms j = t, t + 256, ... in order,
// then a fixed tree (block_sum_256), so every run gives the same bits. (One thread a
// channel adding all N * slices terms in turn was latency-bound: 60-170 us for 1024-2048
// terms a channel on bench.py's U-Net layers, H200.)
template <typename T>
__global__ void pack_bias_kernel(const double* __restrict__ sums, T* __restrict__ db, int64_t N, int slices,
                                 int64_t G, int64_t cg, int64_t cg_pad, PackSlices sl) {
  const int64_t c = blockIdx.x;  // < G * cg
  const int64_t gc = G * sl.chunks * cg_pad, g = c / cg, ch = c % cg;
  const int64_t pc = (g * sl.chunks + ch / sl.chunk_ch) * cg_pad + sl.slot(ch % sl.chunk_ch);
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < N * slices; j += blockDim.x) acc += sums[j * gc + pc];
  acc = block_sum_256(acc);
  if (threadIdx.x == 0) db[c] = cast_out<T>(acc);
}

// w [Cin, Cout/G, kvol] -> fragment order, one 32-bit word per element (lane, e) of n8
// tile nt, chunk ch, tap r. n = nt*8 + lane/4. fp32 (kc = 8 channels a chunk): the word is
// B[k = ch*8 + lane%4 + 4e][n], rounded (TF32) or split (big, small). 16-bit (kc = 16): the
// word packs B[k][n] (low half) and B[k + 1][n], k = ch*16 + 2*(lane%4) + 8e. B[k][n] is
// w[g*Cin/G + k, n, r] for the forward (K = input channels) and w[g*Cin/G + n, k, r] for
// grad input (K = output channels); zero outside.
template <typename T>
__global__ void transform_weight_kernel(const T* __restrict__ w, uint32_t* __restrict__ big,
                                        uint32_t* __restrict__ small, Problem P, int job,
                                        int nchunks, int ntiles, int mode) {
  const int64_t total = P.G * P.kvol() * nchunks * ntiles * 64;
  const int64_t kc = job == kJobForward ? P.cin_g() : P.cout_g();
  const int64_t nc = job == kJobForward ? P.cout_g() : P.cin_g();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int e = int(t % 2); t /= 2;
    const int lane = int(t % 32); t /= 32;
    const int nt = int(t % ntiles); t /= ntiles;
    const int ch = int(t % nchunks); t /= nchunks;
    const int64_t r = t % P.kvol();
    const int64_t g = t / P.kvol();
    const int64_t n = nt * 8 + lane / 4;
    auto value = [&](int64_t k) -> float {
      if (k >= kc || n >= nc) return 0.f;
      const int64_t ci = job == kJobForward ? k : n, co = job == kJobForward ? n : k;
      return float(w[((g * P.cin_g() + ci) * P.cout_g() + co) * P.kvol() + r]);
    };
    if (mode == kWeight16) {
      const int64_t k = ch * 16 + 2 * (lane % 4) + 8 * e;
      big[idx] = pack2_16<T>(value(k), value(k + 1));  // exact: the values are T already
    } else {
      const float v = value(ch * 8 + lane % 4 + 4 * e);
      const float b = round_tf32(v);
      big[idx] = __float_as_uint(b);
      if (mode == kWeightSplit) small[idx] = __float_as_uint(round_tf32(v - b));
    }
  }
}

// The window convolution. Narrow tiles with one accumulator set run two blocks per SM
// (<= 128 registers); wide tiles and 3xTF32 (three sets) one, rather than spill.
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, bool SPLIT3>
__global__ void __launch_bounds__(256, (SPLIT3 || BM / WARPS_M >= 64) ? 1 : 2) window_tc_kernel(const WinParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using E = typename WinElem<T>::type;
  constexpr bool k16 = !std::is_same<T, float>::value;
  constexpr int KC = 32 / int(sizeof(E));  // channels a chunk
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MI = WM / 16, NI = WN / 8, NT8 = BN / 8;
  constexpr bool BS = !SPLIT3;  // B staged through shared memory (one accumulator set)
  static_assert(WARPS_M * WARPS_N == 8 && MI >= 1 && NI >= 1, "8 warps, whole m16/n8 tiles");
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int s_nvt;
  const Problem& P = prm.P;

  // ---- which sub-problem (group, phase), plane tile, channel tile ----
  WinDim wd[3];
  const int g = win_dims(P, prm.job, blockIdx.z, wd);
  const int Pw = wd[2].P, Pplane = wd[1].P * wd[2].P;
  int bx = blockIdx.x;
  const int pt = bx % prm.tiles_per_plane; bx /= prm.tiles_per_plane;
  const int jd = bx % prm.pd_max;
  const int n = bx / prm.pd_max;
  const int m0 = pt * BM;
  if (jd >= wd[0].P || m0 >= Pplane) return;
  const int co0 = blockIdx.y * BN;
  const int Thw = wd[1].T * wd[2].T;

  // ---- window geometry: R rows x C columns of one source plane ----
  const int jh0 = m0 / Pw, jh1 = min(wd[1].P - 1, (m0 + BM - 1) / Pw);
  const int R = (jh1 - jh0) * wd[1].mult + win_span(wd[1]) + 1;
  const int C = (Pw - 1) * wd[2].mult + win_span(wd[2]) + 1;
  const int wh0 = jh0 * wd[1].mult + win_off_min(wd[1]);  // source row of window row 0
  const int ww0 = win_off_min(wd[2]);                      // source column of window column 0

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp % WARPS_M, warp_n = warp / WARPS_M;
  const int gq = lane / 4, tq = lane % 4;

  // Tables after the stages: w_tab[t] = weight offset of tap t (words), sh_tab[(th, tw)] =
  // window shift of that tap (bytes), vtd = the depth taps whose source plane is inside
  // src, pos_tab = where each window position comes from (win_pos_table).
  const int H = int(prm.src_sz[1]), W = int(prm.src_sz[2]);
  int* w_tab = reinterpret_cast<int*>(smem + prm.stages * prm.stage_bytes);
  int* sh_tab = w_tab + P.kvol();
  int* vtd = sh_tab + P.k[1] * P.k[2];
  int* pos_tab = vtd + P.k[0];
  win_pos_table(pos_tab, R * C, C, wh0, ww0, H, W, int(prm.pk_v * int64_t(sizeof(E)) / 16));
  const int64_t tap_stride = int64_t(prm.nchunks) * prm.ntiles * 64;
  const int nvt = win_tap_tables(P, wd, jd, C, tap_stride, kWinPos, prm.src_sz[0], w_tab, sh_tab, vtd, &s_nvt);
  const int nK = nvt * prm.nchunks;  // stages

  // ldmatrix row of this lane in each m16 tile: row (lane & 7) + 8 * ((lane >> 3) & 1),
  // bytes 16 * (lane >> 4) of the chunk; its window byte offset before the tap's shift.
  int a_base[MI];
#pragma unroll
  for (int i = 0; i < MI; ++i) {
    const int m = min(m0 + warp_m * WM + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, Pplane - 1);
    a_base[i] = ((m / Pw - jh0) * wd[1].mult * C + (m % Pw) * wd[2].mult) * kWinPos + (lane >> 4) * 16;
  }

  // ---- stage copies: stage kk = (chunk, depth tap vtd[tdi]), tdi counting fastest; its
  // buffer kk % stages (counters, not divisions) ----
  // A stage is the window (two 16-byte pieces a position: win_copy_window) then, with B
  // staged, b_pieces of B; thread t copies pieces t, t + 256, ... (Spreading the copy in
  // slices over the taps, to issue it while the tensor pipe is busy, measured slower: v10.)
  const E* __restrict__ src = static_cast<const E*>(prm.src);
  const E* src_n = src + n * prm.pk_n + int64_t(g) * prm.cg_pad;
  const uint32_t smem0 = smem_u32(smem);
  // B of this block: group g, its n8 tiles from co0 / 8; + chunk and tap offsets
  const uint32_t* wb_blk = prm.wt_big + int64_t(g) * P.kvol() * tap_stride + (co0 / 8) * 64;
  const int b_pieces = BS ? Thw * NT8 * 16 : 0;
  struct Stage {
    int tdi, chunk, buf;
  };
  Stage copy{0, 0, 0};  // the next stage to copy
  // Copies stage `copy` (the next one), then moves it on.
  auto issue = [&]() {
    const int td = vtd[copy.tdi];
    const int id = jd * wd[0].mult + wd[0].off0 + td * wd[0].dstep;  // inside src (vtd)
    const E* base = src_n + int64_t(id) * H * W * prm.pk_v + copy.chunk * KC;
    const uint32_t dst = smem0 + copy.buf * prm.stage_bytes;
    win_copy_window<256>(dst, kWinPos, 16, base, pos_tab, R * C, win_halves(prm.cg_pad, copy.chunk, KC),
                         threadIdx.x);
    if (BS) {  // B of the stage's taps: [thw][n8 tile][lane][2 words]
      const uint32_t* wsrc = wb_blk + copy.chunk * int64_t(prm.ntiles) * 64;
      const int* wt = w_tab + td * Thw;
      for (int qb = threadIdx.x; qb < b_pieces; qb += 256) {
        const int piece = qb & 15, tile = qb >> 4, nt = tile % NT8, thw = tile / NT8;
        cp_async16(dst + prm.window_bytes + tile * 256 + piece * 16, wsrc + wt[thw] + nt * 64 + piece * 4, 16);
      }
    }
    if (++copy.tdi == nvt) copy.tdi = 0, ++copy.chunk;
    if (++copy.buf == prm.stages) copy.buf = 0;
  };

  // acc: the running sum. 3xTF32 also keeps blk (the bounded big*big MMA chain, added
  // into acc every kFlushTaps taps) and cor (big*small + small*big).
  float acc[MI][NI][4], blk[MI][NI][4], cor[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = blk[i][j][e] = cor[i][j][e] = 0.f;

  // ---- B: prefetched two taps ahead along the sequence (stage, tap) ----
  const uint32_t* wb0 = wb_blk + warp_n * NI * 64 + lane * 2;
  const int64_t small_off = SPLIT3 ? prm.wt_small - prm.wt_big : 0;
  int pf_chunk = 0, pf_tdi = 0, pf_thw = 0, pf_left = nK * Thw;
  auto load_b = [&](uint2 (&bb)[NI], uint2 (&bs)[NI]) {
    if (!BS && pf_left > 0) {
      const uint32_t* p = wb0 + pf_chunk * int64_t(prm.ntiles) * 64 + w_tab[vtd[pf_tdi] * Thw + pf_thw];
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        bb[j] = __ldg(reinterpret_cast<const uint2*>(p + j * 64));
        if (SPLIT3) bs[j] = __ldg(reinterpret_cast<const uint2*>(p + small_off + j * 64));
      }
      --pf_left;
      if (++pf_thw == Thw) {
        pf_thw = 0;
        if (++pf_tdi == nvt) { pf_tdi = 0; ++pf_chunk; }
      }
    }
  };

  // ---- stages: stage kk is waited for when its first tap comes up ----
  int kk = 0, thw = 0, buf = 0;  // buf: kk % stages
  uint32_t xs = smem0;
  auto begin_stage = [&]() {
    cp_async_wait(prm.stages - 2);  // stage kk has landed (this thread's copies) ...
    if (!k16 && !SPLIT3 && prm.round_a) {  // TF32, source in place: round this thread's copies
      unsigned char* win = smem + buf * prm.stage_bytes;
      for (int q = threadIdx.x; q < R * C * 2; q += blockDim.x) {
        float4* v = reinterpret_cast<float4*>(win + (q >> 1) * kWinPos + (q & 1) * 16);
        *v = round_tf32_4(*v);
      }
    }
    __syncthreads();                // ... everyone's; and stage kk - 1's MMAs are done
    if (kk + prm.stages - 1 < nK) issue();  // stage kk + stages - 1, into stage kk - 1's buffer
    cp_async_commit();
    xs = smem0 + buf * prm.stage_bytes;
    if (++buf == prm.stages) buf = 0;
  };
  auto load_a = [&](int t, uint32_t (&a)[MI][4]) {
    const uint32_t base = xs + sh_tab[t];
#pragma unroll
    for (int i = 0; i < MI; ++i) ldmatrix_x4(a[i], base + a_base[i]);
  };
  const int b_lane = (warp_n * NI * 32 + lane) * 8;  // this lane's B bytes in a tap's tiles
  auto load_b_smem = [&](int t, uint2 (&bb)[NI]) {
    const unsigned char* p = smem + (xs - smem0) + prm.window_bytes + t * NT8 * 256 + b_lane;
#pragma unroll
    for (int j = 0; j < NI; ++j) bb[j] = *reinterpret_cast<const uint2*>(p + j * 256);
  };

  // One tap: A from the window (a_use, loaded the step before) and B (b_use). It loads the
  // next tap's A into a_load (after the barrier when that tap opens a new stage). B staged
  // in shared memory (BS) goes like A: the next tap's into b_load. B from global memory
  // is loaded two taps ahead into b_load, across stages. The register sets rotate by name
  // in an unrolled loop (A alternates 2 sets; global B cycles 3, so 6 taps), not by
  // copying. Returns false after the last tap.
  auto step = [&](uint32_t (&a_use)[MI][4], uint32_t (&a_load)[MI][4], uint2 (&b_use)[NI], uint2 (&s_use)[NI],
                  uint2 (&b_load)[NI], uint2 (&s_load)[NI]) -> bool {
    if (kk >= nK) return false;
    load_b(b_load, s_load);
    if (thw + 1 < Thw) {
      load_a(thw + 1, a_load);
      if constexpr (BS) load_b_smem(thw + 1, b_load);
    }
#pragma unroll
    for (int i = 0; i < MI; ++i) {
      const uint32_t (&a)[4] = a_use[i];
      if constexpr (k16) {
#pragma unroll
        for (int j = 0; j < NI; ++j) mma_k16<T>(acc[i][j], a, b_use[j].x, b_use[j].y);
      } else if (SPLIT3) {
        uint32_t ab[4], as[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          ab[e] = tf32_rna(__uint_as_float(a[e]));
          as[e] = tf32_rna(__uint_as_float(a[e]) - __uint_as_float(ab[e]));
        }
#pragma unroll
        for (int j = 0; j < NI; ++j) {
          mma_tf32(blk[i][j], ab, b_use[j].x, b_use[j].y);
          mma_tf32(cor[i][j], as, b_use[j].x, b_use[j].y);
          mma_tf32(cor[i][j], ab, s_use[j].x, s_use[j].y);
        }
      } else {
#pragma unroll
        for (int j = 0; j < NI; ++j) mma_tf32(acc[i][j], a, b_use[j].x, b_use[j].y);
      }
    }
    if (SPLIT3 && (thw % kFlushTaps == kFlushTaps - 1 || thw == Thw - 1)) {
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            acc[i][j][e] += blk[i][j][e];
            blk[i][j][e] = 0.f;
          }
    }
    if (++thw == Thw) {
      thw = 0;
      if (++kk < nK) {
        begin_stage();
        load_a(0, a_load);
        if constexpr (BS) load_b_smem(0, b_load);
      }
    }
    return true;
  };

  uint32_t a0[MI][4], a1[MI][4];
  uint2 b0[NI], b1[NI], b2[NI], s0[NI], s1[NI], s2[NI];
  load_b(b0, s0);
  load_b(b1, s1);
  for (int st = 0; st < prm.stages - 1; ++st) {
    if (st < nK) issue();
    cp_async_commit();
  }
  if (nK > 0) {
    begin_stage();
    load_a(0, a0);
    if constexpr (BS) load_b_smem(0, b0);
  }
  if constexpr (BS) {
    while (step(a0, a1, b0, s0, b1, s1) && step(a1, a0, b1, s1, b0, s0)) {
    }
  } else {
    while (step(a0, a1, b0, s0, b2, s2) && step(a1, a0, b1, s1, b0, s0) && step(a0, a1, b2, s2, b1, s1) &&
           step(a1, a0, b0, s0, b2, s2) && step(a0, a1, b1, s1, b0, s0) && step(a1, a0, b2, s2, b1, s1)) {
    }
  }
  cp_async_wait(0);  // no copy may be in flight when the block exits

  // ---- epilogue: bias, one rounding, store ----
  T* __restrict__ out = static_cast<T*>(prm.out);
  const T* __restrict__ bias = static_cast<const T*>(prm.bias);
  const int od = wd[0].oc + wd[0].os * jd;
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + warp_m * WM + i * 16 + gq + h * 8;
      if (m >= Pplane) continue;
      const int oh = wd[1].oc + wd[1].os * (m / Pw), ow = wd[2].oc + wd[2].os * (m % Pw);
      const int64_t pos = (int64_t(od) * prm.out_sz[1] + oh) * prm.out_sz[2] + ow;
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int co = co0 + warp_n * WN + j * 8 + 2 * tq + e;
          if (co >= prm.out_cg) continue;
          const int64_t c = int64_t(g) * prm.out_cg + co;
          float v = acc[i][j][h * 2 + e] + (SPLIT3 ? cor[i][j][h * 2 + e] : 0.f);
          if (bias) v += float(bias[c]);
          out[prm.out_l.at(n, c, pos)] = T(v);
        }
    }
#endif
}

// ============================================================================
// Host
// ============================================================================
// The thin kernels' B (thin_fwd_kernel, thin_dgrad_kernel): every tap's fragments of each
// group, w_words words a group, by transform_weight_kernel (one chunk, one n8 tile), TF32-
// rounded, or split for 3xTF32 (big, then small wt_numel words on). Sets big and small
// (null unless split); returns the tensor, to keep alive until the kernel has run.
template <typename T>
at::Tensor thin_weights(const at::Tensor& w, const Problem& P, int job, int64_t w_words, bool split,
                        cudaStream_t stream, const uint32_t*& big, const uint32_t*& small) {
  const int64_t wt_numel = P.G * w_words;
  at::Tensor wt = at::empty({split ? 2 * wt_numel : wt_numel}, w.options().dtype(at::kInt));
  uint32_t* wt_ptr = reinterpret_cast<uint32_t*>(wt.data_ptr<int>());
  transform_weight_kernel<T><<<unsigned(std::min<int64_t>((wt_numel + 255) / 256, 4096)), 256, 0, stream>>>(
      w.data_ptr<T>(), wt_ptr, split ? wt_ptr + wt_numel : nullptr, P, job, 1, 1,
      split ? kWeightSplit : kWeightTf32);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  big = wt_ptr;
  small = split ? wt_ptr + wt_numel : nullptr;
  return wt;
}

// src (strides l: N batch items x G groups of cg channels x vol positions) packed by
// pack_src_kernel into a new [N][vol][G][cg_pad] tensor of type E (TF32-rounded when round;
// sl: other slicings, see PackSlices).
// With bias (a defined tensor of G*cg elements of type T), the pack also writes the sum of
// src over batch and positions per channel there (grad bias from the grad-weight pack).
template <typename T, typename E>
at::Tensor pack_src(const at::Tensor& src, const Layout& l, int64_t N, int64_t vol, int64_t G, int64_t cg,
                    int64_t cg_pad, bool round, cudaStream_t stream, at::Tensor* bias = nullptr,
                    PackSlices sl = PackSlices{1, 0, false}) {
  if (sl.chunk_ch == 0) sl.chunk_ch = cg;
  const int64_t gc = G * sl.chunks * cg_pad;
  at::Tensor packed = at::empty({N * vol * gc}, src.options().dtype(c10::CppTypeToScalarType<E>::value));
  TORCH_CHECK(N <= 65535 && (gc + 31) / 32 <= 65535, "conv_transpose3d: problem too large for the pack grid");
  // The vectorized kernel where its 16-byte pieces line up (see pack_src_vec_kernel); the
  // element-wise one (32 x 32 tiles) for other layouts (channels_last, odd sizes).
  constexpr int64_t LS = 16 / int64_t(sizeof(T)), LD = 16 / int64_t(sizeof(E));
  const bool vec = sizeof(T) <= 4 && sizeof(E) <= 4 && l.v == 1 && vol % LS == 0 && l.c % LS == 0 &&
                   l.n % LS == 0 && reinterpret_cast<uintptr_t>(src.data_ptr()) % 16 == 0 && cg_pad % LD == 0;
  // Slices of the positions: enough blocks in all to keep the copy busy (about 2048),
  // a fixed number for a given problem, so the bias sums add in the same order every run.
  const int64_t tp = vec ? kPackTP : 32, tc = !vec ? 32 : gc > 64 ? 128 : 64;  // tile: positions, channels
  const int64_t tiles = (vol + tp - 1) / tp, ctiles = (gc + tc - 1) / tc;
  const int slices = int(std::max<int64_t>(
      1, std::min<int64_t>({tiles, 65535, std::max<int64_t>(64, 2048 / std::max<int64_t>(1, N * ctiles))})));
  at::Tensor sums;
  if (bias != nullptr) sums = at::empty({N * slices * gc}, src.options().dtype(at::kDouble));
  if (packed.numel() > 0) {
    double* sums_p = bias != nullptr ? sums.data_ptr<double>() : nullptr;
    bool done = false;
    if constexpr (sizeof(T) <= 4 && sizeof(E) <= 4) {
      if (vec) {
        const dim3 grid{unsigned(slices), unsigned((gc + tc - 1) / tc), unsigned(N)};
        auto kernel = tc == 64 ? (bias != nullptr ? pack_src_vec_kernel<T, E, 64, true> : pack_src_vec_kernel<T, E, 64, false>)
                               : (bias != nullptr ? pack_src_vec_kernel<T, E, 128, true> : pack_src_vec_kernel<T, E, 128, false>);
        kernel<<<grid, 256, 0, stream>>>(static_cast<const T*>(src.data_ptr()), packed.data_ptr<E>(), l, vol, cg,
                                         cg_pad, gc, round, sums_p, sl);
        done = true;
      }
    }
    if (!done) {
      const dim3 grid{unsigned(slices), unsigned(ctiles), unsigned(N)};
      pack_src_kernel<T, E><<<grid, 256, 0, stream>>>(static_cast<const T*>(src.data_ptr()), packed.data_ptr<E>(),
                                                      l, vol, cg, cg_pad, gc, round, sums_p, sl);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (bias != nullptr && G * cg > 0) {
      pack_bias_kernel<T><<<unsigned(G * cg), 256, 0, stream>>>(
          sums.data_ptr<double>(), static_cast<T*>(bias->data_ptr()), N, slices, G, cg, cg_pad, sl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  } else if (bias != nullptr) {
    bias->zero_();
  }
  return packed;
}

template <typename T, int BM, int BN, int WM_, int WN_, bool SPLIT3>
static void launch_window_tc(const WinParams& prm, dim3 grid, int64_t smem, cudaStream_t stream) {
  auto kernel = window_tc_kernel<T, BM, BN, WM_, WN_, SPLIT3>;
  set_smem_limit(kernel, smem);
  kernel<<<grid, 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Tile shape by the (padded) output channels per group. Narrow tiles give each warp
// 32 rows (MI = 2): BN = 48 and 64 run 128 rows on 4 x 2 warps, thinner N 256 rows on
// 8 x 1 warps. Wide tiles give each warp 64 rows (MI = 4) and all BN columns, 512 rows on
// 8 x 1 warps, one block per SM: a warp's shared-memory reads per MMA fall with its tile
// (64 x 64: 4 KB of A and B per tap for 32 MMAs, 128 B an MMA, against 192 B at 64 x 32),
// and twice the rows share each staged B. 3xTF32 keeps three accumulator sets: narrow only.
// CT3D_WIN_TILE=narrow forbids wide tiles; =wide42 runs wide BN >= 48 on 4 x 2 warps of
// 64 x BN/2 (256 rows), the v9 shape (both for timing).
inline int win_tile_env() {
  static const int env = [] {
    const char* s = std::getenv("CT3D_WIN_TILE");
    if (s == nullptr) return -1;
    const std::string v(s);
    return v == "narrow" ? 0 : v == "wide42" ? 2 : 1;
  }();
  return env;
}
inline int win_bn(int64_t out_cg) {
  return out_cg <= 16 ? 16 : out_cg <= 32 ? 32 : out_cg <= 48 ? 48 : 64;
}
inline bool win_wide(bool split) { return !split && win_tile_env() != 0; }
inline int win_bm(int bn, bool wide) {
  if (wide) return bn >= 48 && win_tile_env() == 2 ? 256 : 512;
  return bn >= 48 ? 128 : 256;
}

template <typename T, bool SPLIT3>
static void dispatch_window_bn(int bn, bool wide, const WinParams& prm, dim3 grid, int64_t smem,
                               cudaStream_t stream) {
  if constexpr (!SPLIT3) {  // wide tiles: one accumulator set only
    if (wide) {
      if (bn == 16) launch_window_tc<T, 512, 16, 8, 1, false>(prm, grid, smem, stream);
      else if (bn == 32) launch_window_tc<T, 512, 32, 8, 1, false>(prm, grid, smem, stream);
      else if (win_tile_env() == 2) {
        if (bn == 48) launch_window_tc<T, 256, 48, 4, 2, false>(prm, grid, smem, stream);
        else launch_window_tc<T, 256, 64, 4, 2, false>(prm, grid, smem, stream);
      } else if (bn == 48) launch_window_tc<T, 512, 48, 8, 1, false>(prm, grid, smem, stream);
      else launch_window_tc<T, 512, 64, 8, 1, false>(prm, grid, smem, stream);
      return;
    }
  }
  if (bn == 16) launch_window_tc<T, 256, 16, 8, 1, SPLIT3>(prm, grid, smem, stream);
  else if (bn == 32) launch_window_tc<T, 256, 32, 8, 1, SPLIT3>(prm, grid, smem, stream);
  else if (bn == 48) launch_window_tc<T, 128, 48, 4, 2, SPLIT3>(prm, grid, smem, stream);
  else launch_window_tc<T, 128, 64, 4, 2, SPLIT3>(prm, grid, smem, stream);
}

// CT3D_WIN_STAGES (2..4; tuning and A/B runs), read once; 0 where it is not set.
inline int win_stages_env() {
  static const int v = [] {
    const int n = env_int("CT3D_WIN_STAGES", INT_MIN);
    return n == INT_MIN ? 0 : n < 2 ? 2 : n > 4 ? 4 : n;
  }();
  return v;
}

// Pipeline depth: the most stages (up to 3; CT3D_WIN_STAGES overrides, 2..4) whose shared
// memory lets `blocks` blocks share an SM; at least 2 if one block fits.
inline int win_stages(int64_t stage_bytes, int64_t table_bytes, int blocks, const cudaDeviceProp* prop) {
  const int most = win_stages_env() > 0 ? win_stages_env() : 3;
  const int64_t per_block = int64_t(prop->sharedMemPerMultiprocessor) / blocks - 1024;
  for (int st = most; st > 2; --st)
    if (st * stage_bytes + table_bytes <= per_block) return st;
  return 2;
}

// The source of a window convolution, channels innermost (window_source: where, without
// launching anything; prepare_window_source: prm.src, pk_n, pk_v, cg_pad, round_a): src_t itself where it already is (channels_last_3d, whole 16-byte
// halves of a chunk, 16-byte aligned), else a packed copy with cg_pad channels a group,
// returned (keep it alive until the kernel has run). cg_pad rounds the group's channels up
// to whole halves, not whole chunks: the window copy zero-fills a chunk's missing half
// (win_halves), so 8 bf16 channels a group (kb72's grad input) pack into 8, not 16.
template <typename T>
struct WinSource {
  bool in_place;  // src_t itself (channels_last_3d, whole halves, 16-byte aligned)
  int64_t pk_n, pk_v, cg_pad;
  int64_t pos_bytes() const { return pk_v * int64_t(sizeof(typename WinElem<T>::type)); }
};
template <typename T>
WinSource<T> window_source(const WinParams& prm, const at::Tensor& src_t) {
  using E = typename WinElem<T>::type;
  constexpr int KC = 32 / int(sizeof(E));
  const Problem& P = prm.P;
  const Layout sl = prm.job == kJobForward ? P.xl : P.yl;
  const int64_t vol = prm.src_sz[0] * prm.src_sz[1] * prm.src_sz[2];
  const int64_t C = P.G * prm.src_cg;
  const int64_t cg_pad = (prm.src_cg + KC / 2 - 1) / (KC / 2) * (KC / 2);
  const bool in_place = sl.c == 1 && prm.src_cg == cg_pad &&
                        reinterpret_cast<uintptr_t>(src_t.data_ptr()) % 16 == 0 &&
                        (sl.v * int64_t(sizeof(E))) % 16 == 0 && (sl.n * int64_t(sizeof(E))) % 16 == 0 &&
                        sl.v >= C;
  if (in_place) return WinSource<T>{true, sl.n, sl.v, prm.src_cg};
  return WinSource<T>{false, vol * P.G * cg_pad, P.G * cg_pad, cg_pad};
}
template <typename T>
at::Tensor prepare_window_source(WinParams& prm, const at::Tensor& src_t, bool tf32, cudaStream_t stream) {
  using E = typename WinElem<T>::type;
  const Problem& P = prm.P;
  const bool fp32 = std::is_same<T, float>::value;
  const WinSource<T> ws = window_source<T>(prm, src_t);
  prm.pk_n = ws.pk_n;
  prm.pk_v = ws.pk_v;
  prm.cg_pad = ws.cg_pad;
  if (ws.in_place) {
    prm.src = src_t.data_ptr();
    prm.round_a = fp32 && tf32;
    return at::Tensor();
  }
  const Layout sl = prm.job == kJobForward ? P.xl : P.yl;
  const int64_t vol = prm.src_sz[0] * prm.src_sz[1] * prm.src_sz[2];
  at::Tensor packed = pack_src<T, E>(src_t, sl, P.N, vol, P.G, prm.src_cg, ws.cg_pad, fp32 && tf32, stream);
  prm.src = packed.data_ptr();
  prm.round_a = false;
  return packed;
}

// window_wg.cuh: the same convolution on wgmma (sm_90a); false where it does not apply.
template <typename T>
bool run_window_wg(WinParams prm, const at::Tensor& src_t, const at::Tensor& w, bool tf32, bool force);

// Runs one window convolution of src (x or dy): on wgmma where window_wg.cuh takes it
// (algo: kTcMma never, kTcWgmma wherever it can, else where it should be faster), else
// here: fills in the launch geometry of prm (made by win_params), packs the source,
// transforms the weight, launches. Returns false (launching nothing) where the kernel does
// not fit: a GPU older than sm_80, or a window larger than shared memory.
template <typename T>
bool run_window_tc(WinParams prm, const at::Tensor& src_t, const at::Tensor& w, bool tf32, int64_t algo) {
  using E = typename WinElem<T>::type;
  constexpr int KC = 32 / int(sizeof(E));
  const Problem& P = prm.P;
  const int dev = w.get_device();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  if (prop->major < 8) return false;
  const bool fp32 = std::is_same<T, float>::value;
  const bool split = fp32 && !tf32;  // TF32 where the caller allows it, else 3xTF32
  if (algo != kTcMma && run_window_wg<T>(prm, src_t, w, tf32, algo == kTcWgmma)) return true;
  const int64_t nsub = prm.job == kJobForward ? P.G * P.s[0] * P.s[1] * P.s[2] : P.G;
  const int64_t nz = prm.job == kJobForward ? P.s[0] * P.s[1] * P.s[2] : 1;
  const int64_t optin = int64_t(prop->sharedMemPerBlockOptin);
  if (!win_table_ok(prm.src_sz[1], prm.src_sz[2], window_source<T>(prm, src_t).pos_bytes())) return false;

  // Geometry of a tile shape (BN, narrow or wide): tiles per plane, planes, the bytes of a
  // stage (the largest window over the sub-problems, then B of the most (th, tw) taps
  // unless 3xTF32), of the tables (kernel: w_tab, sh_tab, vtd, pos_tab), and the share of
  // the tiles' rows that are real positions.
  struct Geo {
    int bn;
    bool wide, fits;
    int64_t bm, tpp, pd_max, window_bytes, stage_bytes, table_bytes;
    double used;
  };
  auto geometry = [&](int bn, bool wide) {
    Geo q{bn, wide, false, win_bm(bn, wide), 0, 0, 0, 0, 0, 0.0};
    int64_t most = 0, thw_max = 0, pos = 0, rows_run = 0;
    for (int64_t z = 0; z < nz; ++z) {  // sub-problems differ by phase only, not by group
      WinDim wd[3];
      win_dims(P, prm.job, int(z), wd);
      if (wd[0].P == 0 || wd[1].P == 0 || wd[2].P == 0) continue;
      const int64_t plane = int64_t(wd[1].P) * wd[2].P, tiles = (plane + q.bm - 1) / q.bm;
      q.tpp = std::max(q.tpp, tiles);
      q.pd_max = std::max<int64_t>(q.pd_max, wd[0].P);
      pos += plane;
      rows_run += tiles * q.bm;
      const int64_t rows = (std::min<int64_t>(wd[1].P, (q.bm + wd[2].P - 1) / wd[2].P + 1) - 1) * wd[1].mult +
                           win_span(wd[1]) + 1;
      const int64_t cols = int64_t(wd[2].P - 1) * wd[2].mult + win_span(wd[2]) + 1;
      most = std::max<int64_t>(most, rows * cols);
      thw_max = std::max<int64_t>(thw_max, int64_t(wd[1].T) * wd[2].T);
    }
    q.window_bytes = (most * kWinPos + 127) / 128 * 128;
    q.stage_bytes = q.window_bytes + (split ? 0 : thw_max * (bn / 8) * 256);
    q.table_bytes = (P.kvol() + P.k[1] * P.k[2] + P.k[0] + most) * int64_t(sizeof(int));
    q.fits = q.tpp > 0 && 2 * q.stage_bytes + q.table_bytes <= optin;  // two stages at least
    q.used = rows_run > 0 ? double(pos) / double(rows_run) : 0.0;
    return q;
  };
  // Wide tiles unless they waste over 10% more rows than narrow ones in partial tiles, or
  // do not fit; B of many taps may need a thinner tile.
  Geo geo{};
  for (int bn = win_bn(prm.out_cg);; bn = bn > 32 ? 32 : 16) {
    const Geo narrow = geometry(bn, false);
    const Geo wide = win_wide(split) ? geometry(bn, true) : narrow;
    geo = wide.fits && wide.used >= 0.9 * narrow.used ? wide : narrow;
    if (geo.fits || bn == 16) break;
  }
  if (!geo.fits) return false;
  const int bn = geo.bn;
  const bool wide = geo.wide;
  const int64_t tpp = geo.tpp, pd_max = geo.pd_max, window_bytes = geo.window_bytes,
                stage_bytes = geo.stage_bytes, table_bytes = geo.table_bytes;
  const int blocks = !wide && !split && 2 * (2 * stage_bytes + table_bytes + 1024) <=
                                            int64_t(prop->sharedMemPerMultiprocessor) ? 2 : 1;
  const int stages = win_stages(stage_bytes, table_bytes, blocks, prop);
  const int64_t smem = stages * stage_bytes + table_bytes;

  const int64_t nchunks = (prm.src_cg + KC - 1) / KC;
  const int64_t ntiles = (prm.out_cg + bn - 1) / bn * (bn / 8);
  auto stream = at::cuda::getCurrentCUDAStream();

  // ---- the source, channels innermost (in place where it already is) ----
  const at::Tensor packed = prepare_window_source<T>(prm, src_t, tf32, stream);

  // ---- the weight, in fragment order ----
  const int mode = !fp32 ? kWeight16 : split ? kWeightSplit : kWeightTf32;
  const int64_t wt_numel = P.G * P.kvol() * nchunks * ntiles * 64;
  auto wt = at::empty({split ? 2 * wt_numel : wt_numel}, w.options().dtype(at::kInt));
  uint32_t* wt_ptr = reinterpret_cast<uint32_t*>(wt.data_ptr<int>());
  const int64_t tblocks = std::min<int64_t>((wt_numel + 255) / 256, 4096);
  if (tblocks > 0) {  // none when the reduction is empty (0 source channels): out = bias
    transform_weight_kernel<T><<<tblocks, 256, 0, stream>>>(
        w.data_ptr<T>(), wt_ptr, split ? wt_ptr + wt_numel : nullptr, P, prm.job, int(nchunks), int(ntiles), mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  prm.wt_big = wt_ptr;
  prm.wt_small = split ? wt_ptr + wt_numel : nullptr;
  prm.nchunks = int(nchunks);
  prm.ntiles = int(ntiles);
  prm.tiles_per_plane = int(tpp);
  prm.pd_max = int(pd_max);
  prm.window_bytes = int(window_bytes);
  prm.stage_bytes = int(stage_bytes);
  prm.stages = stages;
  const int64_t gx = P.N * pd_max * tpp, gy = (prm.out_cg + bn - 1) / bn;
  TORCH_CHECK(gx < (int64_t(1) << 31) && gy <= 65535 && nsub <= 65535,
              "conv_transpose3d: problem too large for the tensor-core grid");
  const dim3 grid{unsigned(gx), unsigned(gy), unsigned(nsub)};
  if constexpr (std::is_same<T, float>::value) {
    if (split) {
      dispatch_window_bn<T, true>(bn, false, prm, grid, smem, stream);
      return true;
    }
  }
  dispatch_window_bn<T, false>(bn, wide, prm, grid, smem, stream);
  return true;
}

}  // namespace ct3d
