// grad_input.cu: dx = d(loss)/dx of y = conv_transpose3d(x, w), as a Conv3d fprop of dy.
//
// GEMM view (per group g; see common.cuh for the table):
//   M = N * D*H*W (input voxels), N = Cin/G, K = Cout/G * kD*kH*kW
//   A[m, k] = dy[n, g*Cout/G + co, o = i*s - p + r*d]   (gathered, 0 outside dy)
//   B[k, n] = w[g*Cin/G + ci, co, r]                     (for fixed ci, contiguous in k)
//   dx[n, g*Cin/G + ci, i] = sum_k A*B
// with k = co * kvol + r. Every (i, r) pair lands on a real dy voxel or
// outside dy, so there are no phases here: stride only spaces out the gather.
//
// Three kernels run it. thin_dgrad_kernel (below): where Cin/G and Cout/G are at most 8
// (kb72: grouped, stride 2), one block reads dy in place and computes a tile of dx on TF32
// MMAs. grad_input_tc: the tensor-core window convolution of window_tc.cuh with src = dy,
// position multiplier s and tap offsets r*d - p, one sub-problem per group; the default
// otherwise. grad_input_tiled: common.cuh's FFMA tile (blockIdx.z = g), the fallback where
// the window does not fit in shared memory, and algo="tiled". unit_tap_dgrad_kernel
// (below): where the kernel size is the stride and dy is NCDHW with aligned rows, a plain
// GEMM over the input voxels (CT3D_UNIT_TAP_DGRAD).
//
// Sections: the FFMA Gemm (gather rule + epilogue), the thin-group kernel, the unit-tap
// kernel, launchers.
#include "common.cuh"
#include "window_tc.cuh"
#include "window_wg.cuh"
#include "unit_tap.cuh"

#include <atomic>

namespace ct3d {

// ============================================================================
// The Gemm: gather rule and epilogue
// ============================================================================
template <typename T>
struct DgradGemm {
  static constexpr int kMinBlocks = 2;  // see igemm_ffma_kernel
  const T* dy;
  const T* w;
  T* dx;
  Problem P;

  struct Sub {
    int64_t M, Nn, k_begin, k_end;
    int g;
  };
  struct Row {
    int64_t dy_base;  // dy offset of (n, channel g*Cout/G, voxel 0)
    int64_t dx_base;  // dx offset of (n, channel g*Cin/G, voxel i)
    int o0[3];        // i*s - p: where tap 0 lands
  };
  struct Col {
    int64_t w_base;  // w offset of (g*Cin/G + ci, co 0, tap 0)
    int64_t ci;
  };

  __device__ Sub sub(int z) const {
    Sub sb;
    sb.g = z;
    sb.M = P.N * P.in_vol();
    sb.Nn = P.cin_g();
    sb.k_begin = 0;
    sb.k_end = P.cout_g() * P.kvol();
    return sb;
  }

  __device__ Row row(const Sub& sb, int64_t m) const {
    Row r;
    const int64_t vox = m % P.in_vol();
    const int64_t n = m / P.in_vol();
    const int iw = int(vox % P.in[2]);
    const int ih = int((vox / P.in[2]) % P.in[1]);
    const int id = int(vox / (P.in[2] * P.in[1]));
    r.o0[0] = id * int(P.s[0]) - int(P.p[0]);
    r.o0[1] = ih * int(P.s[1]) - int(P.p[1]);
    r.o0[2] = iw * int(P.s[2]) - int(P.p[2]);
    r.dy_base = P.yl.at(n, int64_t(sb.g) * P.cout_g(), 0);
    r.dx_base = P.xl.at(n, int64_t(sb.g) * P.cin_g(), vox);
    return r;
  }

  __device__ float a(const Sub&, const Row& r, int64_t k) const {
    const int64_t co = k / P.kvol();
    int t = int(k - co * P.kvol());
    const int rw = t % int(P.k[2]); t /= int(P.k[2]);
    const int rh = t % int(P.k[1]);
    const int rd = t / int(P.k[1]);
    // Gather rule (1): tap r of input voxel i lands on o = i*s - p + r*d.
    const int od = r.o0[0] + rd * int(P.d[0]);
    const int oh = r.o0[1] + rh * int(P.d[1]);
    const int ow = r.o0[2] + rw * int(P.d[2]);
    if (unsigned(od) >= unsigned(P.out[0]) || unsigned(oh) >= unsigned(P.out[1]) ||
        unsigned(ow) >= unsigned(P.out[2]))
      return 0.f;
    return float(dy[r.dy_base + co * P.yl.c + ((int64_t(od) * P.out[1] + oh) * P.out[2] + ow) * P.yl.v]);
  }

  __device__ Col col(const Sub& sb, int64_t n) const {
    return Col{(int64_t(sb.g) * P.cin_g() + n) * P.cout_g() * P.kvol(), n};
  }

  __device__ float b(const Sub&, const Col& c, int64_t k) const { return float(w[c.w_base + k]); }

  __device__ void store(const Sub&, const Row& r, const Col& c, float acc) const {
    dx[r.dx_base + c.ci * P.xl.c] = T(acc);
  }
};

// ============================================================================
// Thin groups: a tile of dx from dy in place (tensor cores)
// ============================================================================
// For Cin/G <= 8 and Cout/G <= 8 the window kernel's sub-problems are one 32-byte chunk
// deep, and it packs dy (the largest tensor of the layer) before it starts; kb72's grad
// input took ~8x its memory floor that way. Here a block owns one input depth plane id of
// one (n, g) and a tile of 8 rows x RW = 16*MW columns of dx; warp u takes row ih0 + u.
// GEMM view per row: M = RW positions iw, N = 8 (Cin/G, zero-padded), K = 8 (Cout/G,
// zero-padded) per tap; one m16n8k8 TF32 MMA per 16 positions and tap, every tap of the
// kernel (no phases: each (i, r) lands on one dy voxel, or outside dy). With one m16 tile a
// warp (MW = 1) in TF32 and 16-bit, taps alternate between two accumulator sets (NSET), so
// the MMAs form two dependency chains, not one (thin_dgrad_sets says what it measured).
// Gather rule (1): tap r of input voxel i reads dy at o = i*s - p + r*d. So the block reads
// the dy planes od = id*sD - pD + rd*dD that exist, and in each of them the rows
// ih0*sH - pH + [0, 7*sH + (kH-1)*dH] and the columns iw0*sW - pW + [0, (RW-1)*sW +
// (kW-1)*dW]: the window (thin_stage_window, window_tc.cuh), with its columns stored by
// residue mod sW, so the 16 positions of an MMA tile, sW columns apart in dy, are 16
// consecutive window slots at every tap: column c = j*sW + rw*dW of position j sits in
// slot (rw*dW % sW) * qc + j + rw*dW / sW (col_off[rw] + j).
// B of all taps of group g ([tap][lane][2 words], B[k = co][n = ci] by
// transform_weight_kernel; twice for 3xTF32) sits in shared memory before the window
// (kb72: 27 + 69 KB, two blocks an SM, so the register cap is 128 and the copy keeps 32
// loads a thread in flight), except in 3xTF32, which reads its two B parts from global
// memory (L1: every block of the group reads them): in shared memory they made its block
// 123 KB, one an SM (0.440 ms on kb72 against 0.302 from global). In TF32 and 16-bit, B
// from global with three 69 KB blocks an SM (85 registers, copy batch 2) measured slower
// (0.225 / 0.216 ms against 0.205 / 0.193): NOTES.md, "Thin kernels: the copy".
// Precision as thin_fwd_kernel (forward.cu): TF32 mode rounds dy to nearest-even as it is
// staged (B by the transform); fp16/bf16 are exact in TF32; fp32 strict is 3xTF32.
struct ThinDgradParams {
  const void* dy;
  const uint32_t* wt_big;    // [G][kvol][32 lanes][2 words]
  const uint32_t* wt_small;  // same, 3xTF32 only
  void* dx;
  Problem P;
  ThinBackPlan pl;           // tiles, the dy window, col_off (thin_back_plan)
  int w_words;               // B words of one group: kvol * 64
};

template <typename T, int MW, bool SPLIT, int NSET>
__global__ void __launch_bounds__(256, 2) thin_dgrad_kernel(const ThinDgradParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int s_rd[kThinMaxTd], s_od[kThinMaxTd], s_nvt;
  constexpr int RW = 16 * MW;
  constexpr bool kRoundA = std::is_same<T, float>::value && !SPLIT;  // TF32 mode
  constexpr bool kBGlobal = SPLIT;  // B read from global memory (see above)
  const Problem& P = prm.P;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // ---- block -> (n, g, id, tile) ----
  uint32_t b = blockIdx.x;  // 32-bit divisions: the grid is below 2^31 blocks
  const int tw_i = int(b % uint32_t(prm.pl.tiles_w)); b /= uint32_t(prm.pl.tiles_w);
  const int th_i = int(b % uint32_t(prm.pl.tiles_h)); b /= uint32_t(prm.pl.tiles_h);
  const int id = int(b % uint32_t(P.in[0])); b /= uint32_t(P.in[0]);
  const int g = int(b % uint32_t(P.G));
  const int64_t n = b / uint32_t(P.G);
  const int ih0 = th_i * 8, iw0 = tw_i * RW;

  // ---- B of group g: this lane's words, in global memory (L1-resident: every block of g
  // reads them) or copied to shared memory by cp.async (it lands while the window is staged) ----
  const uint32_t* wg_big = prm.wt_big + int64_t(g) * prm.w_words + lane * 2;
  const uint32_t* wg_small = SPLIT ? prm.wt_small + int64_t(g) * prm.w_words + lane * 2 : wg_big;
  const uint32_t* wsm = reinterpret_cast<const uint32_t*>(smem) + lane * 2;
  if constexpr (!kBGlobal) thin_copy_weights(reinterpret_cast<uint32_t*>(smem), prm.wt_big, nullptr, prm.w_words, g);

  // ---- depth: tap rd reads dy plane od = id*sD - pD + rd*dD, where it exists ----
  if (tid == 0) {
    int nvt = 0;
    for (int rd = 0; rd < int(P.k[0]); ++rd) {
      const int od = id * int(P.s[0]) - int(P.p[0]) + rd * int(P.d[0]);
      if (unsigned(od) < unsigned(P.out[0])) { s_rd[nvt] = rd; s_od[nvt] = od; ++nvt; }
    }
    s_nvt = nvt;
  }
  __syncthreads();
  const int nvt = s_nvt;

  // ---- the window of dy: planes s_od, rows from ih0*sH - pH, columns from iw0*sW - pW ----
  unsigned char* win = kBGlobal ? smem : smem + prm.w_words * 4;
  const int cout_g = int(P.cout_g()), cin_g = int(P.cin_g());
  thin_stage_window<T, kRoundA, kThinBatchWide>(win, prm.pl.win,
                                static_cast<const T*>(prm.dy) + n * P.yl.n + int64_t(g) * cout_g * P.yl.c,
                                uint32_t(P.yl.c), uint32_t(P.yl.v), cout_g, s_od, nvt,
                                ih0 * int(P.s[1]) - int(P.p[1]), iw0 * int(P.s[2]) - int(P.p[2]),
                                int(P.out[0]), int(P.out[1]), int(P.out[2]));
  if constexpr (!kBGlobal) cp_async_wait(0);
  __syncthreads();

  // ---- MMAs: warp u, input row ih0 + u, every tap ----
  const int ih = ih0 + warp;
  if (ih >= int(P.in[1])) return;  // no barrier follows
  // This lane's ldmatrix row (position iw0 + a_row) and half (channels 0..3 or 4..7).
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_half = lane >> 4;
  const uint32_t a_lane = smem_u32(win) + thin_byte(prm.pl.win, a_row, 4 * a_half);
  const int k1 = int(P.k[1]), k2 = int(P.k[2]), sH = int(P.s[1]), dH = int(P.d[1]);
  // NSET accumulator sets: tap rw adds into set rw % NSET, so a warp with one m16 tile
  // (MW = 1) has NSET independent MMA chains instead of one; the sets are added at the end.
  float acc[NSET][MW][4], blk[NSET][MW][4], cor[NSET][MW][4];  // 3xTF32: acc += blk every kFlushTaps taps
#pragma unroll
  for (int s = 0; s < NSET; ++s)
#pragma unroll
    for (int i = 0; i < MW; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[s][i][e] = blk[s][i][e] = cor[s][i][e] = 0.f;
  int taps[NSET] = {};
  for (int pi = 0; pi < nvt; ++pi) {
    const int rd = s_rd[pi];
    for (int rh = 0; rh < k1; ++rh) {
      // Window row u*sH + rh*dH of plane pi; tap rw adds its slot col_off[rw].
      const uint32_t a_row_addr = a_lane + (pi * prm.pl.win.rows + warp * sH + rh * dH) * prm.pl.win.pitch * 16;
      const int b_off = (rd * k1 + rh) * k2 * 64;
      for (int rw0 = 0; rw0 < k2; rw0 += NSET) {
#pragma unroll
        for (int s = 0; s < NSET; ++s) {
          const int rw = rw0 + s;
          if (s > 0 && rw >= k2) break;  // uniform in the block
          const uint2 bb = kBGlobal ? __ldg(reinterpret_cast<const uint2*>(wg_big + b_off + rw * 64))
                                    : *reinterpret_cast<const uint2*>(wsm + b_off + rw * 64);
          uint2 bs = bb;
          if (SPLIT) bs = __ldg(reinterpret_cast<const uint2*>(wg_small + b_off + rw * 64));
          thin_tap_mma<MW, SPLIT>(acc[s], blk[s], cor[s], taps[s], a_row_addr + prm.pl.col_off[rw] * 16, bb, bs);
        }
      }
    }
  }

  // ---- epilogue: one rounding, dx at (id, ih, iw0 + position) ----
  // Fragment rows lane/4 + 8k (k = 2*mt + hf) are positions; columns 2*(lane%4) + {0, 1}
  // are the lane's input channels ci0, ci0 + 1 of the group.
  const int ci0 = 2 * (lane % 4);
  const bool st0 = ci0 < cin_g, st1 = ci0 + 1 < cin_g;
  const int64_t xsc = P.xl.c, xsv = P.xl.v;
  const int iw_l = iw0 + lane / 4;
  T* q = static_cast<T*>(prm.dx) + n * P.xl.n + (int64_t(g) * cin_g + ci0) * xsc +
         ((int64_t(id) * P.in[1] + ih) * P.in[2] + iw_l) * xsv;
#pragma unroll
  for (int mt = 0; mt < MW; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf, q += 8 * xsv) {
      float v0 = 0.f, v1 = 0.f;
#pragma unroll
      for (int s = 0; s < NSET; ++s) {
        v0 += acc[s][mt][2 * hf];
        v1 += acc[s][mt][2 * hf + 1];
        if (SPLIT) {
          v0 += blk[s][mt][2 * hf] + cor[s][mt][2 * hf];
          v1 += blk[s][mt][2 * hf + 1] + cor[s][mt][2 * hf + 1];
        }
      }
      if (iw_l + 16 * mt + 8 * hf < int(P.in[2])) {
        if (st0) q[0] = T(v0);
        if (st1) q[xsc] = T(v1);
      }
    }
#endif
}

// ============================================================================
// The unit-tap grad input: kernel size = stride (unit_tap.cuh)
// ============================================================================
// Where k = s in every dimension, input voxel i reaches the kvol outputs i*s - p + r, one a
// tap, so grad input is one GEMM per (batch item, group), no window and no dy pack:
//   D[ci][i] = sum_m Wd[ci][m] * Gy[m][i],  m = (co, rd, rh, rw) (w's own inner order)
//   Gy[m][i] = dy[n, g*Cout/G + co, i*s - p + r]   (0 where that lies outside dy: padding)
//   M = Cin/G, N = the input voxels, K = Cout/G * kvol;  dx[n, g*Cin/G + ci, i] = D[ci][i]
// Wd is w itself (K contiguous), zero-padded and rounded by unit_tap_weight_kernel.
// B, the gather of dy, where 16 bytes of a dy row are the kw taps of 16 / sizeof(T) / kw
// consecutive voxels (unit_tap_vec_out's rule; kw >= 2 in 16-bit): dy rows staged as they
// lie, one 16-byte cp.async a piece, into row groups (co, rd, rh) of kw rows that hold the
// kw taps of each voxel side by side (ut_mma_stage's row-group layout; TF32 rounded in
// place by the thread that copied it). Else element by element into plain Bs[k][i] (the
// fallback: padding, channels_last_3d, odd widths, kw = 1 in 16-bit; only with
// CT3D_UNIT_TAP_DGRAD=1). Both operands by cp.async in the forward's ring of Stages buffers.
// Where the time went (NOTES.md, unit-tap grad input): v1 (dy one step ahead in registers)
// and v2 (this ring) ran at the window kernel's speed; the profile showed an instruction-
// latency-bound kernel, the gather's five integer divisions a piece; v3 does two fast
// divisions, skips A's rows past Cin/G (copies and MMAs) and reads D by float4.
// Epilogue: D through shared memory, then 16-byte stores of consecutive voxels where dx is
// NCDHW and aligned, else one element at a time. fp32 strict is not here (the window
// kernel's 3xTF32).
struct UnitTapDgradParams {
  const void* dy;
  const void* wt;  // [G][Mpad][Kpad]
  void* dx;
  Problem P;
  int64_t Kg, Mpad, Kpad;
  int rows_lkw;  // log2 kw where dy rows are staged as they lie (16-byte pieces), else -1
  int vec_out;   // dx stored by 16-byte pieces
  uint32_t kdh_magic, kh_magic;  // fast_div_magic of kd x kh (row groups a channel) and kh (rows path)
};

// MINB: blocks an SM the registers are bounded for. 16-bit can run three (80 registers, no
// spills; the ring's 59 KB a block lets three fit; opt-in through CT3D_UT_DGRAD_BLOCKS=3
// until measured on a GPU), TF32 two (its 83 KB ring fits two).
// Why three: ncu of unet_64_32_64 bf16 at two (16 warps an SM) showed an issue-latency-bound
// kernel (7.1 cycles between a warp's instructions; stalls wait 26%, barrier 24%: with
// Cin/G = 64, the warps of rows past it skip the MMAs and wait at the K loop's barriers);
// a third block's warps should fill those gaps (prediction, not yet measured).
// KSPLIT: the K split over the warps of empty rows (below; opt-in, two blocks an SM: at 80
// registers it spilled 12 bytes).
template <typename T, int MINB, bool KSPLIT = false>
__global__ void __launch_bounds__(kUtThreads, MINB) unit_tap_dgrad_kernel(const UnitTapDgradParams prm) {
  static_assert(!(KSPLIT && MINB > 2), "unit_tap_dgrad_kernel: the K split runs at two blocks an SM");
  using S = UtShape<T>;
  constexpr int VO = S::VEC;  // elements of 16 bytes
  extern __shared__ __align__(128) unsigned char smem[];
  // Column tables: o = i*s - p per dimension of voxel v0 + c (far negative past the last
  // voxel), and dy's offset of that (possibly outside) output position inside a channel.
  __shared__ int col_o[3][kUtBN];
  __shared__ int64_t col_off[kUtBN];
  const Problem& P = prm.P;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / kUtWarpsN, wn = warp % kUtWarpsN;
  const int64_t v0 = int64_t(blockIdx.x) * kUtBN, m0 = int64_t(blockIdx.y) * kUtBM;
  const int n = int(blockIdx.z / P.G), g = int(blockIdx.z % P.G);
  const int64_t vol = P.in_vol(), cin_g = P.cin_g();
  const int Kg = int(prm.Kg);
  const int Do = int(P.out[0]), Ho = int(P.out[1]), Wo = int(P.out[2]);
  const int kvol = int(P.kvol()), kh = int(P.k[1]), kw = int(P.k[2]);
  if (tid < kUtBN) col_off[tid] = ut_col_table(P, v0 + tid, col_o, tid);
  __syncthreads();  // the tables, before the first stage reads them

  const T* __restrict__ dy = static_cast<const T*>(prm.dy) + n * P.yl.n + int64_t(g) * P.cout_g() * P.yl.c;
  const T* __restrict__ wt = static_cast<const T*>(prm.wt) + (int64_t(g) * prm.Mpad + m0) * prm.Kpad;
  const int nk = int(prm.Kpad / kUtBK);
  const uint32_t smem0 = smem_u32(smem);
  // Rows of A past Cin/G are zeros: not copied, and warps whose 32 rows all lie there skip
  // their MMAs (unet_64_32_64: Cin = 64 of the tile's 128 rows). K split (KSPLIT,
  // opt-in, where those rows fill half the tile or more): the warps of rows 64..127 compute
  // rows 0..63 too, on the second half of each step's K sub-steps, into their own
  // accumulators; those land in D's rows 64..127 (unused then), and the epilogue adds row
  // r + 64 to row r. Each half runs its MMAs alone, so the busy warps' chain a step halves
  // (ncu: a quarter of the samples were warps waiting at the step's barrier for them).
  const int a_rows = int(cin_g - m0 < kUtBM ? cin_g - m0 : kUtBM);
  const bool ksplit = KSPLIT && a_rows <= kUtBM / 2;  // block-uniform
  constexpr int kHalfWm = kUtBM / 2 / (16 * kUtMI);       // warp rows of half the tile (2)
  const int wm_a = ksplit ? wm % kHalfWm : wm;             // the warp's rows of A
  const bool warp_rows = wm_a * 16 * kUtMI < a_rows;
  // The gather rule: dy offset (inside the group's channel block) of tap row m's output for
  // voxel column c, or -1 where m is past K or that output lies outside dy (padding)
  auto gather_off = [&](int m, int c) -> int64_t {
    if (m >= Kg || col_o[0][c] < -(1 << 29)) return -1;
    const int co = m / kvol, t = m % kvol;
    const int rd = t / (kh * kw), rh = (t / kw) % kh, rw = t % kw;
    if (unsigned(col_o[0][c] + rd) >= unsigned(Do) || unsigned(col_o[1][c] + rh) >= unsigned(Ho) ||
        unsigned(col_o[2][c] + rw) >= unsigned(Wo))
      return -1;
    return co * P.yl.c + col_off[c] + ((int64_t(rd) * Ho + rh) * Wo + rw) * P.yl.v;
  };
  // Row-group staging (lkw >= 0): piece p of a step is row group q = p / (BN / Gv) (k = q kw,
  // its kw taps rw = 0..kw-1) at Gv = VO / kw voxels from c0 = (p % (BN / Gv)) Gv: 16
  // contiguous bytes of dy (all Gv voxels lie in one input row, and are all valid or not),
  // landing at element (q kw) BPitch + c0 kw of the stage's Bs. The gather rule without
  // padding, per piece: row group rg = (co, rd, rh) of the whole K (rg < Kg / kw) at dy
  // offset co * C + (rd * Ho + rh) * Wo, plus the column's col_off (read once: a thread's
  // pieces keep their columns every step); two fast divisions, not gather_off's five.
  constexpr int NP = kUtBK * kUtBN / VO / kUtThreads;  // 16-byte pieces a thread a step
  const int lkw = prm.rows_lkw, lg = lkw >= 0 ? __ffs(VO) - 1 - lkw : 0;  // log2 kw, log2 Gv
  const int ng_l = __ffs(kUtBN) - 1 - lg;                                 // log2 of the voxel groups a tile
  auto piece_dst = [&](int p) {  // element offset in Bs of this thread's piece p
    const int q = p >> ng_l, c0 = (p & ((1 << ng_l) - 1)) << lg;
    return ((q * S::BPitch) << lkw) + (c0 << lkw);
  };
  int64_t piece_col[NP];  // col_off of a piece's first voxel, -1 past the last voxel
  if (lkw >= 0) {
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const int c0 = ((tid + j * kUtThreads) & ((1 << ng_l) - 1)) << lg;
      piece_col[j] = col_o[0][c0] < -(1 << 29) ? -1 : col_off[c0];
    }
  }
  const int rg_end = Kg >> (lkw > 0 ? lkw : 0), kdh = int(P.k[0]) * kh;
  auto load_stage = [&](int kk, int buf) {
    const uint32_t dst = smem0 + buf * S::StageBytes;
    ut_copy_a<T>(dst, wt, prm.Kpad, kk, tid, a_rows);
    const int k0 = kk * kUtBK;
    if (lkw >= 0) {
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int p = tid + j * kUtThreads, rg = (k0 >> lkw) + (p >> ng_l);
        const int co = fast_div(rg, prm.kdh_magic), t2 = rg - co * kdh;
        const int rd = fast_div(t2, prm.kh_magic), rh = t2 - rd * kh;
        const bool in = rg < rg_end && piece_col[j] >= 0;
        const int64_t off = co * P.yl.c + piece_col[j] + (rd * Ho + rh) * int64_t(Wo);
        cp_async16(dst + S::ABytes + piece_dst(p) * int(sizeof(T)), in ? dy + off : dy, in ? 16 : 0);
      }
    } else {
      unsigned char* bs = smem + buf * S::StageBytes + S::ABytes;
#pragma unroll 1
      for (int e = tid; e < kUtBK * kUtBN; e += kUtThreads) {
        const int64_t off = gather_off(k0 + e / kUtBN, e % kUtBN);
        uint32_t bits = 0;
        if (off >= 0) {
          if constexpr (S::k16) bits = reinterpret_cast<const unsigned short*>(dy)[off];
          else bits = ut_stage_bits<T>(reinterpret_cast<const uint32_t*>(dy)[off]);
        }
        if constexpr (S::k16) reinterpret_cast<unsigned short*>(bs)[(e / kUtBN) * S::BPitch + e % kUtBN] = (unsigned short)bits;
        else reinterpret_cast<uint32_t*>(bs)[(e / kUtBN) * S::BPitch + e % kUtBN] = bits;
      }
    }
  };
  // TF32 with row-group staging: each thread rounds the pieces of stage buf it copied (they
  // are visible to it once its copies have landed; to the others after the barrier)
  auto round_stage = [&](int buf) {
    if constexpr (!S::k16) {
      if (lkw >= 0) {
        unsigned char* bs = smem + buf * S::StageBytes + S::ABytes;
#pragma unroll
        for (int j = 0; j < NP; ++j) {
          float4* v = reinterpret_cast<float4*>(bs + piece_dst(tid + j * kUtThreads) * 4);
          *v = round_tf32_4(*v);
        }
      }
    }
  };

  // ---- K loop (ut_k_loop): steps kk + 1 .. kk + Stages - 1 in flight while step kk is multiplied ----
  const int blkw = lkw > 0 ? lkw : 0;  // Bs's row-group width (0: plain Bs[k][i])
  float acc[kUtMI][4][4] = {};
  ut_k_loop<T>(nk, load_stage, round_stage, [&](int, int buf) {
    if (!warp_rows) return;
    if (ksplit) ut_mma_stage<T, 2>(acc, smem + buf * S::StageBytes, wm_a, wn, lane, blkw, wm / kHalfWm);
    else ut_mma_stage<T>(acc, smem + buf * S::StageBytes, wm, wn, lane, blkw);
  });

  // ---- epilogue: D to shared memory (in the stage buffers), then dx ----
  float* ds = reinterpret_cast<float*>(smem);
  ut_acc_to_smem(ds, S::DPitch, acc, wm, wn, lane);
  __syncthreads();
  T* __restrict__ dx = static_cast<T*>(prm.dx) + n * P.xl.n + (int64_t(g) * cin_g + m0) * P.xl.c;
  if (prm.vec_out) {
    for (int seg = tid; seg < kUtBM * kUtBN / VO; seg += kUtThreads) {
      const int r = seg / (kUtBN / VO), c0 = (seg % (kUtBN / VO)) * VO;
      if (m0 + r >= cin_g || v0 + c0 >= vol) continue;  // vol is a multiple of VO here
      float v[VO];
#pragma unroll
      for (int j = 0; j < VO; j += 4) {  // 16-byte reads (c0 is a multiple of VO): 2-way conflicts, not 8-way
        float4 q = *reinterpret_cast<const float4*>(ds + r * S::DPitch + c0 + j);
        if (ksplit) {  // the second half of K (rows r < 64 here)
          const float4 h = *reinterpret_cast<const float4*>(ds + (r + kUtBM / 2) * S::DPitch + c0 + j);
          q.x += h.x, q.y += h.y, q.z += h.z, q.w += h.w;
        }
        v[j] = q.x, v[j + 1] = q.y, v[j + 2] = q.z, v[j + 3] = q.w;
      }
      *reinterpret_cast<uint4*>(dx + r * P.xl.c + v0 + c0) = ut_pack16<T>(v);
    }
  } else {
    const bool cl = P.xl.c == 1;  // channels_last_3d: consecutive threads along channels
    for (int e = tid; e < kUtBM * kUtBN; e += kUtThreads) {
      const int r = cl ? e % kUtBM : e / kUtBN, c = cl ? e / kUtBM : e % kUtBN;
      if (m0 + r < cin_g && v0 + c < vol) {
        float v = ds[r * S::DPitch + c];
        if (ksplit) v += ds[(r + kUtBM / 2) * S::DPitch + c];  // the second half of K
        dx[r * P.xl.c + (v0 + c) * P.xl.v] = T(v);
      }
    }
  }
}

// ============================================================================
// Launchers
// ============================================================================

// The unit-tap grad input (unit_tap_dgrad_kernel); false where it does not apply (see
// unit_tap_fits; fp32 strict; a GPU older than sm_80; a grid past CUDA's limits).
// CT3D_UNIT_TAP_DGRAD: unset, only where dy rows are staged by 16-byte cp.async (the path
// measured faster than the window kernel and its dy pack on the H200: unet_64_32_64 bf16
// 411 -> 244 us, TF32 659 -> 362; unet_320_256_16 bf16 146 -> 113, TF32 272 -> 198; NOTES.md);
// 1, everywhere it applies (the element-by-element gather too: tests); 0, never (A/B).
static std::atomic<int64_t> g_unit_tap_dgrad_launches{0};
int64_t unit_tap_dgrad_launches() { return g_unit_tap_dgrad_launches.load(); }
static std::atomic<int64_t> g_unit_tap_dgrad_rows_launches{0};
int64_t unit_tap_dgrad_rows_launches() { return g_unit_tap_dgrad_rows_launches.load(); }

template <typename T>
static bool grad_input_unit_tap(const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx, const Problem& P,
                                bool tf32) {
  using S = UtShape<T>;
  static const int enabled = env_int("CT3D_UNIT_TAP_DGRAD", -1);
  if (enabled == 0 || !unit_tap_fits(P) || (std::is_same<T, float>::value && !tf32)) return false;
  if (at::cuda::getDeviceProperties(dy.get_device())->major < 8) return false;
  const int64_t Kg = P.cout_g() * P.kvol();
  const int64_t Mpad = (P.cin_g() + kUtBM - 1) / kUtBM * kUtBM, Kpad = (Kg + kUtBK - 1) / kUtBK * kUtBK;
  const int64_t gx = (P.in_vol() + kUtBN - 1) / kUtBN, gy = Mpad / kUtBM, gz = P.N * P.G;
  if (gx >= (int64_t(1) << 31) || gy > 65535 || gz > 65535) return false;
  int rows_lkw = unit_tap_vec_out(P, dy, S::VEC);
  if (S::k16 && rows_lkw == 0) rows_lkw = -1;  // kw = 1: a B register's k pair is not one word of dy
  // the rows path's fast divisions need row groups and kd x kh below 2^16
  if ((Kpad >> std::max(rows_lkw, 0)) >= (1 << 16) || P.k[0] * P.k[1] >= (1 << 16)) rows_lkw = -1;
  if (rows_lkw < 0 && enabled != 1) return false;  // the element-by-element gather: only when asked for
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor wt = ut_arrange_weight<T>(w, P.G, P.cin_g() * Kg, Kg, 1, P.cin_g(), Kg, Mpad, Kpad);
  UnitTapDgradParams prm{};
  prm.dy = dy.data_ptr();
  prm.wt = wt.data_ptr();
  prm.dx = dx.data_ptr();
  prm.P = P;
  prm.Kg = Kg;
  prm.Mpad = Mpad;
  prm.Kpad = Kpad;
  prm.rows_lkw = rows_lkw;
  prm.kdh_magic = fast_div_magic(uint32_t(P.k[0] * P.k[1]));
  prm.kh_magic = fast_div_magic(uint32_t(P.k[1]));

  if (prm.rows_lkw >= 0) ++g_unit_tap_dgrad_rows_launches;
  prm.vec_out = P.xl.v == 1 && P.in_vol() % S::VEC == 0 && P.xl.c % S::VEC == 0 && P.xl.n % S::VEC == 0 &&
                reinterpret_cast<uintptr_t>(dx.data_ptr()) % 16 == 0;
  static const int blocks_env = env_int("CT3D_UT_DGRAD_BLOCKS", 2);
  static const int ksplit_env = env_int("CT3D_UT_DGRAD_KSPLIT", 0);  // opt-in: not yet run on a GPU
  auto kernel = ksplit_env == 1 ? unit_tap_dgrad_kernel<T, 2, true> : unit_tap_dgrad_kernel<T, 2>;
  if constexpr (S::k16) {
    if (blocks_env == 3 && ksplit_env != 1) kernel = unit_tap_dgrad_kernel<T, 3>;
  }
  set_smem_limit(kernel, S::Smem);
  kernel<<<dim3(unsigned(gx), unsigned(gy), unsigned(gz)), kUtThreads, S::Smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ++g_unit_tap_dgrad_launches;
  return true;
}
// thin_dgrad_kernel launches so far in this process (tests: that the thin cases take it).
static std::atomic<int64_t> g_thin_dgrad_launches{0};
int64_t thin_dgrad_launches() { return g_thin_dgrad_launches.load(); }

template <typename T, int MW, bool SPLIT, int NSET = 1>
static void launch_thin_dgrad(const ThinDgradParams& prm, int64_t blocks, int64_t smem, cudaStream_t stream) {
  auto kernel = thin_dgrad_kernel<T, MW, SPLIT, NSET>;
  set_smem_limit(kernel, smem);
  kernel<<<unsigned(blocks), 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Accumulator sets of the one-tile (MW = 1) kernel in TF32 and 16-bit: CT3D_THIN_DGRAD_SETS
// (1 or 2; A/B timing). Two measured 5-8% faster on kb72 (H200: TF32 0.195 -> 0.181 ms, bf16
// 0.197 -> 0.181); 3xTF32, which has two chains a tile already (blk, cor), 13% slower
// (0.30 -> 0.345), so it keeps one set.
static int thin_dgrad_sets() {
  static const int v = env_int("CT3D_THIN_DGRAD_SETS", 2);
  return v == 1 ? 1 : 2;
}

template <typename T, bool SPLIT>
static void dispatch_thin_dgrad(int mw, const ThinDgradParams& prm, int64_t blocks, int64_t smem,
                                cudaStream_t stream) {
  if constexpr (!SPLIT) {
    if (mw == 1 && thin_dgrad_sets() == 2) return launch_thin_dgrad<T, 1, SPLIT, 2>(prm, blocks, smem, stream);
  }
  if (mw == 1) launch_thin_dgrad<T, 1, SPLIT>(prm, blocks, smem, stream);
  else if (mw == 2) launch_thin_dgrad<T, 2, SPLIT>(prm, blocks, smem, stream);
  else if (mw == 3) launch_thin_dgrad<T, 3, SPLIT>(prm, blocks, smem, stream);
  else launch_thin_dgrad<T, 4, SPLIT>(prm, blocks, smem, stream);
}

// Thin groups (thin_dgrad_kernel); false where it does not apply: Cin/G or Cout/G over 8, a
// GPU older than sm_80, or no tile whose window fits (thin_back_plan, window_tc.cuh).
template <typename T>
static bool grad_input_thin(const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx, const Problem& P,
                            bool tf32) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dy.get_device());
  if (prop->major < 8 || P.cin_g() > 8 || P.cout_g() > 8) return false;
  const bool split = std::is_same<T, float>::value && !tf32;
  const int64_t w_words = P.kvol() * 64;
  ThinDgradParams prm{};
  // B in shared memory except for 3xTF32 (the kernel's kBGlobal)
  if (!thin_back_plan(P, prop, split ? 0 : w_words * 4, 0, prm.pl)) return false;
  const int mw = prm.pl.mw;
  const int64_t smem = prm.pl.smem;
  prm.P = P;
  prm.w_words = int(w_words);
  const int64_t blocks = P.N * P.G * P.in[0] * prm.pl.tiles_h * prm.pl.tiles_w;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "conv_transpose3d: problem too large for the thin-group grid");

  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor wt = thin_weights<T>(w, P, kJobGradInput, w_words, split, stream, prm.wt_big, prm.wt_small);
  prm.dy = dy.data_ptr();
  prm.dx = dx.data_ptr();
  ++g_thin_dgrad_launches;
  if constexpr (std::is_same<T, float>::value) {
    if (split) {
      dispatch_thin_dgrad<T, true>(mw, prm, blocks, smem, stream);
      return true;
    }
  }
  dispatch_thin_dgrad<T, false>(mw, prm, blocks, smem, stream);
  return true;
}

// Tensor cores; false where the kernel does not fit (see run_window_tc). Thin groups take
// thin_dgrad_kernel, kernel size = stride unit_tap_dgrad_kernel where it is on (except under
// kTcMma / kTcWgmma, which test the window kernels).
template <typename T>
bool grad_input_tc(const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx, const Problem& P,
                   bool tf32, int64_t algo) {
  if (algo != kTcMma && algo != kTcWgmma &&
      (grad_input_thin<T>(dy, w, dx, P, tf32) || grad_input_unit_tap<T>(dy, w, dx, P, tf32)))
    return true;
  const WinParams prm = win_params(kJobGradInput, nullptr, dx.data_ptr<T>(), P);
  return run_window_tc<T>(prm, dy, w, tf32, algo);
}

template <typename T>
void grad_input_tiled(const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx,
                      const Problem& P, bool tf32) {
  DgradGemm<T> gm{dy.data_ptr<T>(), w.data_ptr<T>(), dx.data_ptr<T>(), P};
  launch_igemm(gm, P.N * P.in_vol(), P.cin_g(), P.G, tf32 && std::is_same<T, float>::value,
               at::cuda::getCurrentCUDAStream());
}

template bool grad_input_tc<float>(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&, bool, int64_t);
template bool grad_input_tc<at::Half>(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&, bool, int64_t);
template bool grad_input_tc<at::BFloat16>(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&, bool, int64_t);
template void grad_input_tiled<float>(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                      const Problem&, bool);
template void grad_input_tiled<at::Half>(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                         const Problem&, bool);
template void grad_input_tiled<at::BFloat16>(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                             const Problem&, bool);

}  // namespace ct3d
