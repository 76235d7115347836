// forward.cu: y = conv_transpose3d(x, w) + bias, as a Conv3d dgrad.
//
// GEMM view (per group g and per stride phase; see common.cuh for the table):
//   M = N * (output voxels of the phase), N = Cout/G, K = Cin/G * (taps of the phase)
//   A[m, k] = x[n, g*Cin/G + ci, j + off(t)]     (gathered, 0 outside x)
//   B[k, n] = w[g*Cin/G + ci, co, r(t)]
//   y[n, g*Cout/G + co, c + s*j] = sum_k A*B + bias[co]   (bias in the epilogue)
//
// Stride phases. With (1), o = i*s - p + r*d, output voxel o receives tap r
// only when (o + p - r*d) is divisible by s. Split each output dimension by
// o's residue c = o mod s: in the phase o = c + s*j the valid taps are fixed,
//   r = r0, r0 + rs, r0 + 2rs, ...   (rs = s / gcd(s, d), r0 the first valid)
// and tap number t reads input i = j + off0 - t*(d / gcd(s, d)), a dense
// stride-1 correlation. So no thread ever visits a tap that cannot contribute;
// phases with no valid taps (possible when gcd(s, d) > 1 or s > k) get bias only.
// blockIdx.z = g * (sD*sH*sW) + phase.
//
// Kernels. forward_thin (below): where Cin/G and Cout/G are at most 8, every phase of an
// output tile in one block on TF32 MMAs. forward_unit_tap (below): where the kernel size is
// the stride (U-Net upsampling), one tap an output voxel: a plain GEMM over the input voxels
// with a scattering epilogue (16-bit and TF32). forward_tc: the tensor-core window
// convolution of window_tc.cuh (one sub-problem per group and phase), the default otherwise.
// forward_tiled: common.cuh's FFMA tile (TileWide 64x64x16 or TileNarrow 128x16x16 by
// Cout/G, 256 threads, fp32 accumulation, TF32 rounding of both operands when the caller
// allows TF32), the fallback where the tensor-core kernels do not fit, and algo="tiled".
//
// Sections: the FFMA Gemm (gather rule + epilogue), the thin-group kernel, the unit-tap
// kernel, launchers.
// Phase geometry: common.cuh.
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
struct FwdGemm {
  static constexpr int kMinBlocks = 1;  // see igemm_ffma_kernel
  const T* x;
  const T* w;
  const T* bias;  // may be null
  T* y;
  Problem P;

  struct Sub {
    int64_t M, Nn, k_begin, k_end;
    int g;
    PhaseDim ph[3];
  };
  struct Row {
    int64_t x_base;  // x offset of (n, channel g*Cin/G, voxel 0)
    int64_t y_base;  // y offset of (n, channel g*Cout/G, voxel (c + s*j))  (strides: P.xl, P.yl)
    int j[3];
  };
  struct Col {
    int64_t w_base;  // w offset of (g*Cin/G, co, tap 0)
    int co;
  };

  __device__ Sub sub(int z) const {
    const int nph = int(P.s[0] * P.s[1] * P.s[2]);
    Sub sb;
    sb.g = z / nph;
    int ph = z % nph;
    const int cw = ph % int(P.s[2]); ph /= int(P.s[2]);
    const int ch = ph % int(P.s[1]);
    const int cd = ph / int(P.s[1]);
    const int cs[3] = {cd, ch, cw};
    int64_t taps = 1, pos = 1;
#pragma unroll
    for (int e = 0; e < 3; ++e) {
      sb.ph[e] = phase_dim(cs[e], int(P.k[e]), int(P.s[e]), int(P.p[e]), int(P.d[e]), int(P.out[e]));
      taps *= sb.ph[e].T;
      pos *= sb.ph[e].P;
    }
    sb.M = P.N * pos;
    sb.Nn = P.cout_g();
    sb.k_begin = 0;
    sb.k_end = P.cin_g() * taps;
    return sb;
  }

  __device__ Row row(const Sub& sb, int64_t m) const {
    Row r;
    r.j[2] = int(m % sb.ph[2].P); m /= sb.ph[2].P;
    r.j[1] = int(m % sb.ph[1].P); m /= sb.ph[1].P;
    r.j[0] = int(m % sb.ph[0].P);
    const int64_t n = m / sb.ph[0].P;
    r.x_base = P.xl.at(n, int64_t(sb.g) * P.cin_g(), 0);
    const int64_t o0 = sb.ph[0].c + int64_t(P.s[0]) * r.j[0];
    const int64_t o1 = sb.ph[1].c + int64_t(P.s[1]) * r.j[1];
    const int64_t o2 = sb.ph[2].c + int64_t(P.s[2]) * r.j[2];
    r.y_base = P.yl.at(n, int64_t(sb.g) * P.cout_g(), (o0 * P.out[1] + o1) * P.out[2] + o2);
    return r;
  }

  // k = ci * taps + t,  t = (td * Th + th) * Tw + tw
  __device__ static int64_t decode_k(const Sub& sb, int64_t k, int& td, int& th, int& tw) {
    const int taps = sb.ph[0].T * sb.ph[1].T * sb.ph[2].T;
    const int64_t ci = k / taps;
    int t = int(k - ci * taps);
    tw = t % sb.ph[2].T;
    t /= sb.ph[2].T;
    th = t % sb.ph[1].T;
    td = t / sb.ph[1].T;
    return ci;
  }

  __device__ float a(const Sub& sb, const Row& r, int64_t k) const {
    int td, th, tw;
    const int64_t ci = decode_k(sb, k, td, th, tw);
    // Gather rule: tap t of this phase reads input i = j + off0 - t*doff.
    const int id = r.j[0] + sb.ph[0].off0 - td * sb.ph[0].doff;
    const int ih = r.j[1] + sb.ph[1].off0 - th * sb.ph[1].doff;
    const int iw = r.j[2] + sb.ph[2].off0 - tw * sb.ph[2].doff;
    if (unsigned(id) >= unsigned(P.in[0]) || unsigned(ih) >= unsigned(P.in[1]) ||
        unsigned(iw) >= unsigned(P.in[2]))
      return 0.f;
    const int vox = (id * int(P.in[1]) + ih) * int(P.in[2]) + iw;  // < 2^31 (make_problem)
    return float(x[r.x_base + ci * P.xl.c + vox * P.xl.v]);
  }

  __device__ Col col(const Sub& sb, int64_t n) const {
    Col c;
    c.co = int(n);
    c.w_base = (int64_t(sb.g) * P.cin_g() * P.cout_g() + n) * P.kvol();
    return c;
  }

  __device__ float b(const Sub& sb, const Col& c, int64_t k) const {
    int td, th, tw;
    const int64_t ci = decode_k(sb, k, td, th, tw);
    const int rd = sb.ph[0].r0 + td * sb.ph[0].rs;
    const int rh = sb.ph[1].r0 + th * sb.ph[1].rs;
    const int rw = sb.ph[2].r0 + tw * sb.ph[2].rs;
    return float(w[c.w_base + ci * P.cout_g() * P.kvol() + (int64_t(rd) * P.k[1] + rh) * P.k[2] + rw]);
  }

  __device__ void store(const Sub& sb, const Row& r, const Col& c, float acc) const {
    if (bias) acc += float(bias[int64_t(sb.g) * P.cout_g() + c.co]);
    y[r.y_base + int64_t(c.co) * P.yl.c] = T(acc);
  }
};


// ============================================================================
// Thin groups: every stride phase of an output tile in one block (tensor cores)
// ============================================================================
// For Cin/G <= 8 and Cout/G <= 8 (kb72: grouped, stride 2) the window kernel's sub-problems
// are too thin: one 32-byte chunk a stage, one or two stages a block, so its blocks spend
// their lives on prologue and copy latency, and each phase's stores land on every s-th
// element. Here a block owns one output depth plane od of one (n, g) and a tile of
// 8*sH rows x RW*sW columns, i.e. phase rows j_h in [jh0, jh0 + 8) and columns j_w in
// [jw0, jw0 + RW) of every (h, w) phase; warp u takes phase row jh0 + u of all phases (equal
// work per warp, and the phases of one output row are written by one warp back to back).
// GEMM view per (phase, row): M = RW = 16*MW positions j_w, N = 8 (Cout/G, zero-padded),
// K = 8 (Cin/G, zero-padded) per tap; one m16n8k8 TF32 MMA per 16 positions and tap.
// Shared memory: B of all taps of group g ([tap][lane][2 words], fragment order, from
// transform_weight_kernel; twice for 3xTF32), then the input window: the valid depth planes
// of od x (8 + span) rows x (RW + span) columns, 8 channels (fp32) a position, as two
// half planes of 16 bytes a position (thin_stage_window, window_tc.cuh): the 8
// consecutive positions an ldmatrix phase reads are 128 contiguous bytes.
// Precision: the window holds fp32. TF32 mode rounds x to nearest-even as it is staged
// (B by the transform): what cuDNN does. fp16/bf16 values are exact in TF32, so one TF32
// MMA on them is exact products with fp32 accumulation, as m16n8k16 would be (the shape is
// memory-bound; the halved MMA rate costs nothing). fp32 strict: 3xTF32 as in window_tc.cuh
// (big*big chain flushed every kFlushTaps taps), A split from the fragment by split_tf32.
constexpr int kThinMaxS = 8;    // largest stride (phases a dimension) the thin kernel takes

struct ThinParams {
  const void* x;
  const uint32_t* wt_big;    // [G][kvol][32 lanes][2 words]
  const uint32_t* wt_small;  // same, 3xTF32 only
  const void* bias;          // may be null
  void* y;
  Problem P;
  int tiles_h, tiles_w;      // tiles of an output plane: 8 phase rows, RW phase columns each
  int lo_h, lo_w;            // first window row / column, relative to jh0 / jw0
  ThinWindow win;            // the window's rows and columns (a plane), columns in order
  int w_words;               // B words of one group: kvol * 64
  PhaseDim ph[3][kThinMaxS]; // the phases of each dimension (phase_dim), made on the host
};

// One accumulator set: 3 blocks an SM (<= 80 registers); 3xTF32 (three sets, twice the B): 2.
template <typename T, int MW, bool SPLIT>
__global__ void __launch_bounds__(256, SPLIT ? 2 : 3) thin_fwd_kernel(const ThinParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int s_td[kThinMaxTd], s_id[kThinMaxTd], s_nvt;
  constexpr int RW = 16 * MW;
  constexpr bool kRoundA = std::is_same<T, float>::value && !SPLIT;  // TF32 mode
  const Problem& P = prm.P;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // ---- block -> (n, g, od, tile) ----
  uint32_t b = blockIdx.x;  // 32-bit divisions: the grid is below 2^31 blocks
  const int tw_i = int(b % uint32_t(prm.tiles_w)); b /= uint32_t(prm.tiles_w);
  const int th_i = int(b % uint32_t(prm.tiles_h)); b /= uint32_t(prm.tiles_h);
  const int od = int(b % uint32_t(P.out[0])); b /= uint32_t(P.out[0]);
  const int g = int(b % uint32_t(P.G));
  const int64_t n = b / uint32_t(P.G);
  const int jh0 = th_i * 8, jw0 = tw_i * RW;

  // ---- B of group g by cp.async; it lands while the window is staged ----
  uint32_t* wsm = reinterpret_cast<uint32_t*>(smem);
  thin_copy_weights(wsm, prm.wt_big, SPLIT ? prm.wt_small : nullptr, prm.w_words, g);

  // ---- depth: od = cd + sD*jd reads source plane jd + off0 - td*doff through tap td ----
  const PhaseDim qd = prm.ph[0][od % int(P.s[0])];
  if (tid == 0) {
    int nvt = 0;
    for (int td = 0; td < qd.T; ++td) {
      const int id = od / int(P.s[0]) + qd.off0 - td * qd.doff;
      if (unsigned(id) < unsigned(P.in[0])) { s_td[nvt] = td; s_id[nvt] = id; ++nvt; }
    }
    s_nvt = nvt;
  }
  __syncthreads();
  const int nvt = s_nvt;

  // ---- the window: position (plane pi, row r, column c) holds x at (s_id[pi], jh0 + lo_h + r,
  // jw0 + lo_w + c), channels 0..7 (0 outside x and past Cin/G) ----
  unsigned char* win = smem + (SPLIT ? 2 : 1) * prm.w_words * 4;
  const int cin_g = int(P.cin_g());
  thin_stage_window<T, kRoundA>(win, prm.win, static_cast<const T*>(prm.x) + n * P.xl.n + int64_t(g) * cin_g * P.xl.c,
                                uint32_t(P.xl.c), uint32_t(P.xl.v), cin_g, s_id, nvt,
                                jh0 + prm.lo_h, jw0 + prm.lo_w, int(P.in[0]), int(P.in[1]), int(P.in[2]));
  cp_async_wait(0);
  __syncthreads();

  // ---- MMAs: warp u, phase row jh0 + u of each (h, w) phase ----
  // This lane's ldmatrix row (position jw0 + a_row) and half (channels 0..3 or 4..7).
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_half = lane >> 4;
  const uint32_t a_lane = smem_u32(win) + thin_byte(prm.win, a_row, 4 * a_half);
  const int sH = int(P.s[1]), sW = int(P.s[2]), k1 = int(P.k[1]), k2 = int(P.k[2]);
  const int cout_g = int(P.cout_g());
  // Epilogue constants of this lane: its two output channels co0, co0 + 1 (n8 fragment
  // columns), whether they exist, their bias, and y at (n, g*Cout/G + co0, voxel 0).
  const int co0 = 2 * (lane % 4);
  const bool st0 = co0 < cout_g, st1 = co0 + 1 < cout_g;
  float bias0 = 0.f, bias1 = 0.f;
  if (prm.bias != nullptr) {
    const T* bp = static_cast<const T*>(prm.bias) + int64_t(g) * cout_g + co0;
    if (st0) bias0 = float(bp[0]);
    if (st1) bias1 = float(bp[1]);
  }
  T* const ylane = static_cast<T*>(prm.y) + n * P.yl.n + (int64_t(g) * cout_g + co0) * P.yl.c;
  const int64_t ysc = P.yl.c, ysv = P.yl.v;
  {
    const int u = warp, jh = jh0 + u;
    for (int ch = 0; ch < sH; ++ch)
    for (int cw = 0; cw < sW; ++cw) {
      const PhaseDim qh = prm.ph[1][ch], qw = prm.ph[2][cw];
      if (jh >= qh.P || jw0 >= qw.P) continue;
      float acc[MW][4], blk[MW][4], cor[MW][4];  // 3xTF32: acc += blk every kFlushTaps taps
#pragma unroll
      for (int i = 0; i < MW; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = blk[i][e] = cor[i][e] = 0.f;
      int taps = 0;
      for (int pi = 0; pi < nvt; ++pi) {
        const int rd = qd.r0 + s_td[pi] * qd.rs;
        for (int th = 0; th < qh.T; ++th) {
          // Gather rule: tap t of a phase reads source position j + off0 - t*doff. a_addr:
          // this lane's ldmatrix row at tap tw = 0, 16 bytes a slot; bw: its B fragment.
          uint32_t a_addr = a_lane + ((pi * prm.win.rows + u + qh.off0 - th * qh.doff - prm.lo_h) * prm.win.pitch +
                                      qw.off0 - prm.lo_w) * 16;
          const uint32_t* bw = wsm + ((rd * k1 + qh.r0 + th * qh.rs) * k2 + qw.r0) * 64 + lane * 2;
          for (int tw = 0; tw < qw.T; ++tw, a_addr -= qw.doff * 16, bw += qw.rs * 64) {
            const uint2 bb = *reinterpret_cast<const uint2*>(bw);
            uint2 bs = bb;
            if (SPLIT) bs = *reinterpret_cast<const uint2*>(bw + prm.w_words);
            thin_tap_mma<MW, SPLIT>(acc, blk, cor, taps, a_addr, bb, bs);
          }
        }
      }
      // ---- epilogue: bias, one rounding, y at (od, ch + sH*jh, cw + sW*jw) ----
      // Fragment rows lane/4 + 8k (k = 2*mt + hf) are positions jw0 + lane/4 + 8k.
      const int jw_l = jw0 + lane / 4;
      const int64_t qstep = int64_t(8 * sW) * ysv;
      T* q = ylane + ((int64_t(od) * P.out[1] + ch + int64_t(sH) * jh) * P.out[2] + cw + int64_t(sW) * jw_l) * ysv;
#pragma unroll
      for (int mt = 0; mt < MW; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf, q += qstep) {
          float v0 = acc[mt][2 * hf], v1 = acc[mt][2 * hf + 1];
          if (SPLIT) {
            v0 += blk[mt][2 * hf] + cor[mt][2 * hf];
            v1 += blk[mt][2 * hf + 1] + cor[mt][2 * hf + 1];
          }
          if (jw_l + 16 * mt + 8 * hf < qw.P) {
            if (st0) q[0] = T(v0 + bias0);
            if (st1) q[ysc] = T(v1 + bias1);
          }
        }
    }
  }
#endif
}

// ============================================================================
// The unit-tap forward: kernel size = stride, dilation 1 (U-Net upsampling)
// ============================================================================
// Where k = s in every dimension (unit_tap.cuh), the forward is one dense GEMM per (batch
// item, group), with no window, no halo and no phase split (the window kernel ran such
// layers as 8 one-tap phases, each reading x again, at ~14 TFLOP/s):
//   D[m][i] = sum_ci Wt[m][ci] * x[n, g*Cin/G + ci, i]
//   M = Cout/G * kvol rows m = (co, rd, rh, rw) (w's own inner order), N = the input
//   voxels i, K = Cin/G
//   y[n, g*Cout/G + co, id*sd - pd + rd, ih*sh - ph + rh, iw*sw - pw + rw] = D[m][i] + bias[co]
// where that output lies inside y (padding crops).
// Stages: As[m][k] (Wt) and Bs[k][i] (x as NCDHW lays it out, voxels contiguous), both by
// cp.async in a ring of Stages buffers (x rounded to TF32 in place by the thread that copied
// it; channels_last_3d or unaligned x element by element, rounded on the way).
// Epilogue: D through shared memory (it reuses the stage buffers), then 16-byte stores
// where y is NCDHW and nothing is cropped (unit_tap_vec_out): a thread writes the outputs
// that the kw rows of a row group (co, rd, rh) give for 16 bytes / kw consecutive voxels.
// Else one output at a time, consecutive threads along (input w, tap rw) of one row group,
// i.e. consecutive outputs in NCDHW; the address is a row part plus a column part, from
// tables made once a block. The per-element stores cost ~40 instructions an output and
// bounded the kernel at a tenth of copy bandwidth (NOTES.md, unit-tap forward).
// fp32 strict is not here (the window kernel's 3xTF32 runs it).
struct UnitTapParams {
  const void* x;
  const void* wt;    // [G][Mpad][Kpad]
  const void* bias;  // may be null
  void* y;
  Problem P;
  int64_t Mg, Mpad, Kpad;
  int vec;   // x by 16-byte pieces: NCDHW, voxels a multiple of VEC, aligned
  int crop;  // padding > 0: some taps' outputs fall outside y (checked in the epilogue)
  int vec_out_lkw;  // log2 kw where the epilogue stores 16 bytes at a time (unit_tap_vec_out), else -1
  int64_t ntiles;   // PERSIST: voxel tiles along x, taken blockIdx.x, + gridDim.x, ...
};

// PERSIST (opt-in, CT3D_UT_PERSIST=1, 16-bit): a block takes voxel
// tiles blockIdx.x, + gridDim.x, ... as one stream of K steps through the same ring, so the
// next tile's first steps are in flight during this tile's epilogue (D then has shared
// memory of its own, after the ring), and the row tables are made once a block. Why: a
// block of unet_64_32_64 lives ~5 us for 2 K steps (317 us / 62 waves), mostly fixed cost
// (tables, the ring's fill, the epilogue; NOTES.md, unit-tap grad input, profile). Two
// blocks an SM, as the default (128 registers: see P_cols). Measured (H200, bf16 forward
// pass): unet_64_32_64 0.336 -> 0.306 ms, unet_320_256_16 0.108 -> 0.116: the fill and the
// tables were not the cost, so it stays opt-in.
//
// MINB: blocks an SM the registers are bounded for: 2, or 3 (16-bit with x by 16-byte
// copies, prm.vec; not PERSIST, whose own D buffer lets only two fit). ncu of unet_64_32_64
// bf16 at two blocks (16 warps an SM): 7.6 cycles between a warp's instructions, stalls
// wait 25%, short scoreboard 20%, barrier 11%, DRAM 25% of peak: issue-latency-bound, so a
// third block's warps are the cheapest cover (prediction; opt-in through CT3D_UT_FWD_BLOCKS=3
// until measured: the device was lost before it ran). At 80 registers only the 16-byte path fits:
// the element-by-element path (channels_last, odd widths) spilled there, so a MINB = 3
// kernel has no such path (the launcher runs those at two).
template <typename T, bool PERSIST, int MINB = 2>
__global__ void __launch_bounds__(kUtThreads, MINB) unit_tap_fwd_kernel(const UnitTapParams prm) {
  using S = UtShape<T>;
  constexpr bool k16 = S::k16;
  constexpr bool kVecOnly = MINB > 2;  // x only by 16-byte copies (prm.vec)
  static_assert(!kVecOnly || (k16 && !PERSIST), "unit_tap_fwd_kernel: three blocks an SM is 16-bit, not persistent");
  extern __shared__ __align__(128) unsigned char smem[];
  // Epilogue tables: output offset = row_off[r] + col_off[c]; output coordinate e of
  // element (r, c) = col_o[e][c] + row_r[e][r] (far negative for rows / voxels past the end)
  __shared__ int64_t row_off[kUtBM], col_off[kUtBN];
  __shared__ int row_r[3][kUtBM], col_o[3][kUtBN];
  __shared__ float row_bias[kUtBM];
  const Problem& P = prm.P;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / kUtWarpsN, wn = warp % kUtWarpsN;
  const int64_t v0 = int64_t(blockIdx.x) * kUtBN, m0 = int64_t(blockIdx.y) * kUtBM;
  const int n = int(blockIdx.z / P.G), g = int(blockIdx.z % P.G);
  const int64_t vol = P.in_vol(), cin_g = P.cin_g();
  const int Ho = int(P.out[1]), Wo = int(P.out[2]);

  // ---- tables (read after the K loop's barriers) ----
  // column c of the tile at v0t, by thread kUtBM + c (PERSIST: in each tile's epilogue, from
  // a shared-memory copy of the problem: read from the parameters, its fields were hoisted out
  // of the tile loop into ~10 registers held throughout, and the kernel spilled)
  __shared__ Problem P_cols;
  if constexpr (PERSIST) {
    if (tid == 0) P_cols = P;  // read after the K loop's first barrier
  }
  auto col_entry = [&](int c, int64_t v0t) {
    const Problem& Q = PERSIST ? P_cols : P;
    col_off[c] = n * Q.yl.n + int64_t(g) * Q.cout_g() * Q.yl.c + ut_col_table(Q, v0t + c, col_o, c);
  };
  if (tid < kUtBM) {
    const int64_t m = m0 + tid;
    if (m < prm.Mg) {
      const int kvol = int(P.kvol()), khw = int(P.k[1] * P.k[2]);
      const int co = int(m / kvol), tap = int(m % kvol);
      const int rd = tap / khw, rh = (tap / int(P.k[2])) % int(P.k[1]), rw = tap % int(P.k[2]);
      row_r[0][tid] = rd, row_r[1][tid] = rh, row_r[2][tid] = rw;
      row_off[tid] = co * P.yl.c + ((int64_t(rd) * Ho + rh) * Wo + rw) * P.yl.v;
      row_bias[tid] = prm.bias ? float(static_cast<const T*>(prm.bias)[int64_t(g) * P.cout_g() + co]) : 0.f;
    } else {
      row_r[0][tid] = row_r[1][tid] = row_r[2][tid] = -(1 << 30);
    }
  } else if (!PERSIST && tid - kUtBM < kUtBN) {
    col_entry(tid - kUtBM, v0);
  }
  // PERSIST: this block's local tile lt is voxel tile blockIdx.x + lt * gridDim.x
  auto tile_v0 = [&](int lt) { return (int64_t(blockIdx.x) + int64_t(lt) * gridDim.x) * kUtBN; };

  // ---- stage copies ----
  const T* __restrict__ x = static_cast<const T*>(prm.x) + n * P.xl.n + int64_t(g) * cin_g * P.xl.c;
  const T* __restrict__ wt = static_cast<const T*>(prm.wt) + (int64_t(g) * prm.Mpad + m0) * prm.Kpad;
  const int nk = int(prm.Kpad / kUtBK);
  const uint32_t smem0 = smem_u32(smem);
  // Stage kk into buffer buf: the tile's 128 rows x 32 channels of Wt, 16-byte pieces by
  // cp.async; x's 32 channels x 64 voxels (0 past Cin/G or the last voxel), by cp.async in
  // 16-byte pieces (piece p: channel p / (BN / VEC), VEC voxels from (p % (BN / VEC)) * VEC)
  // where prm.vec, else one element at a time through registers (consecutive threads
  // along voxels in NCDHW, along channels in channels_last_3d; TF32-rounded on the way).
  const bool cl = P.xl.c == 1;
  auto load_stage = [&](int step, int buf) {
    const int kk = PERSIST ? step % nk : step;
    const int64_t vt = PERSIST ? tile_v0(step / nk) : v0;  // the step's tile
    const uint32_t dst = smem0 + buf * S::StageBytes;
    ut_copy_a<T>(dst, wt, prm.Kpad, kk, tid);
    const int64_t k0 = int64_t(kk) * kUtBK;
    if (kVecOnly || prm.vec) {
#pragma unroll
      for (int j = 0; j < S::BPer / S::VEC; ++j) {
        const int p = tid + j * kUtThreads, k = p / (kUtBN / S::VEC), c = (p % (kUtBN / S::VEC)) * S::VEC;
        const bool in = k0 + k < cin_g && vt + c < vol;
        cp_async16(dst + S::ABytes + (k * S::BPitch + c) * int(sizeof(T)), in ? x + (k0 + k) * P.xl.c + vt + c : x,
                   in ? 16 : 0);
      }
    } else if constexpr (!kVecOnly) {
      unsigned char* bs = smem + buf * S::StageBytes + S::ABytes;
#pragma unroll
      for (int j = 0; j < S::BPer; ++j) {
        const int e = tid + j * kUtThreads;
        const int k = cl ? e % kUtBK : e / kUtBN, c = cl ? e / kUtBK : e % kUtBN;
        const int64_t off = (k0 + k) * P.xl.c + (vt + c) * P.xl.v;
        const bool in = k0 + k < cin_g && vt + c < vol;
        if constexpr (k16)
          reinterpret_cast<unsigned short*>(bs)[k * S::BPitch + c] = in ? reinterpret_cast<const unsigned short*>(x)[off] : 0;
        else
          reinterpret_cast<uint32_t*>(bs)[k * S::BPitch + c] = in ? ut_stage_bits<T>(reinterpret_cast<const uint32_t*>(x)[off]) : 0u;
      }
    }
  };
  // TF32 with x by cp.async: each thread rounds the pieces of stage buf it copied (they
  // are visible to it once its copies have landed; to the others after the barrier)
  auto round_stage = [&](int buf) {
    if constexpr (!S::k16) {
      if (prm.vec) {
        unsigned char* bs = smem + buf * S::StageBytes + S::ABytes;
#pragma unroll
        for (int j = 0; j < S::BPer / S::VEC; ++j) {
          const int p = tid + j * kUtThreads, k = p / (kUtBN / S::VEC), c = (p % (kUtBN / S::VEC)) * S::VEC;
          float4* v = reinterpret_cast<float4*>(bs + (k * S::BPitch + c) * 4);
          *v = round_tf32_4(*v);
        }
      }
    }
  };

  // ---- epilogue: D (in shared memory at ds) to y, by the row tables and this tile's column tables ----
  auto store_tile = [&](const float* ds) {
    T* __restrict__ y = static_cast<T*>(prm.y);
    if (prm.vec_out_lkw >= 0) {
      // 16-byte stores (prm.vec_out_lkw = log2 kw; unit_tap_vec_out says where): a segment is
      // the VO = 16 / sizeof(T) consecutive outputs of one output row that the kw rows of a
      // row group rg = (co, rd, rh) give for Gv = VO / kw consecutive voxels of one input row:
      // output j = D[rg * kw + j % kw][c0 + j / kw]. Consecutive threads take consecutive
      // voxel groups (along output w). The per-element loop below spends ~40 instructions
      // an output, which bounded the kernel (NOTES.md, unit-tap forward).
      constexpr int VO = 16 / int(sizeof(T));
      const int lkw = prm.vec_out_lkw, lg = __ffs(VO) - 1 - lkw;  // log2 kw, log2 Gv
      const int ngroups_l = __ffs(kUtBN) - 1 - lg;                  // log2 of the voxel groups a tile
      for (int seg = tid; seg < (kUtBM * kUtBN) / VO; seg += kUtThreads) {
        const int r0 = (seg >> ngroups_l) << lkw, c0 = (seg & ((1 << ngroups_l) - 1)) << lg;
        if (row_r[0][r0] < 0 || col_o[0][c0] < 0) continue;  // rows of a group and voxels of a group are valid together
        const float b = row_bias[r0];
        float v[VO];
#pragma unroll
        for (int j = 0; j < VO; ++j) v[j] = ds[(r0 + (j & ((1 << lkw) - 1))) * S::DPitch + c0 + (j >> lkw)] + b;
        const uint4 out = ut_pack16<T>(v);
        *reinterpret_cast<uint4*>(y + row_off[r0] + col_off[c0]) = out;
      }
      return;
    }
    // Element e = ((row group rg) * BN + c) * kw + rw, row r = rg * kw + rw: consecutive
    // threads along (c, rw), i.e. along output w. Walked with counters, not divisions.
    const int kw = int(P.k[2]);
    const int step_c = kUtThreads / kw, step_rw = kUtThreads % kw;
    int rw = tid % kw, c = (tid / kw) % kUtBN, rg = tid / (kw * kUtBN);
    const int Do = int(P.out[0]);
    for (; rg * kw < kUtBM;) {
      const int r = rg * kw + rw;
      if (r < kUtBM) {
        // outside y: only past the last voxel or row, or (padding) cropped
        const bool inside = prm.crop ? unsigned(col_o[0][c] + row_r[0][r]) < unsigned(Do) &&
                                           unsigned(col_o[1][c] + row_r[1][r]) < unsigned(Ho) &&
                                           unsigned(col_o[2][c] + row_r[2][r]) < unsigned(Wo)
                                     : row_r[0][r] >= 0 && col_o[0][c] >= 0;
        if (inside) y[row_off[r] + col_off[c]] = T(ds[r * S::DPitch + c] + row_bias[r]);
      }
      rw += step_rw;
      c += step_c;
      if (rw >= kw) rw -= kw, ++c;
      while (c >= kUtBN) c -= kUtBN, ++rg;
    }
  };

  // ---- K loop (ut_k_loop): steps kk + 1 .. kk + Stages - 1 in flight while step kk is multiplied ----
  float acc[kUtMI][4][4] = {};
  if constexpr (PERSIST) {
    // D's own shared memory, after the ring: the next tile's steps land in the ring meanwhile
    float* ds = reinterpret_cast<float*>(smem + S::Stages * S::StageBytes);
    const int tiles = int((prm.ntiles - blockIdx.x + gridDim.x - 1) / gridDim.x);
    ut_k_loop<T>(tiles * nk, load_stage, round_stage, [&](int step, int buf) {
      ut_mma_stage<T>(acc, smem + buf * S::StageBytes, wm, wn, lane);
      if (step % nk == nk - 1) {  // the tile's last step: its epilogue (block-uniform)
        const int64_t vt = tile_v0(step / nk);
        if (tid >= kUtBM && tid - kUtBM < kUtBN) col_entry(tid - kUtBM, vt);  // everyone is past the
        // previous epilogue's reads of the tables and of D: a K step's barrier came between
        ut_acc_to_smem(ds, S::DPitch, acc, wm, wn, lane);
        __syncthreads();
        store_tile(ds);
#pragma unroll
        for (int mi = 0; mi < kUtMI; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
      }
    });
  } else {
    ut_k_loop<T>(nk, load_stage, round_stage,
                 [&](int, int buf) { ut_mma_stage<T>(acc, smem + buf * S::StageBytes, wm, wn, lane); });
    // D to shared memory (in the stage buffers), then y
    float* ds = reinterpret_cast<float*>(smem);
    ut_acc_to_smem(ds, S::DPitch, acc, wm, wn, lane);
    __syncthreads();
    store_tile(ds);
  }
}

// ============================================================================
// Launchers
// ============================================================================

// The unit-tap forward (unit_tap_fwd_kernel); false where it does not apply: a kernel size
// other than the stride in some dimension (or dilation with k > 1), output_padding above
// padding (outputs no tap reaches), fp32 strict, a GPU older than sm_80, CT3D_UNIT_TAP=0
// (A/B against the window kernel), or a grid past CUDA's limits.
static std::atomic<int64_t> g_unit_tap_launches{0};
int64_t unit_tap_launches() { return g_unit_tap_launches.load(); }

static std::atomic<int64_t> g_unit_tap_vec_out_launches{0};
int64_t unit_tap_vec_out_launches() { return g_unit_tap_vec_out_launches.load(); }

// Persistent unit-tap forward (unit_tap_fwd_kernel<T, true>): CT3D_UT_PERSIST=1 (opt-in, 16-bit
// only), with gridDim.x = the voxel tiles or fewer: two blocks an SM over (gy, gz), at most
// CT3D_UT_PERSIST_GRID where that is set (tests: several tiles a block).
static std::atomic<int64_t> g_unit_tap_persist_launches{0};
int64_t unit_tap_persist_launches() { return g_unit_tap_persist_launches.load(); }

template <typename T>
bool forward_unit_tap(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias, at::Tensor& y,
                      const Problem& P, bool tf32) {
  using S = UtShape<T>;
  static const int enabled = env_int("CT3D_UNIT_TAP", 1);
  if (enabled == 0 || !unit_tap_fits(P) || (std::is_same<T, float>::value && !tf32)) return false;
  if (at::cuda::getDeviceProperties(x.get_device())->major < 8) return false;
  const int64_t Mg = P.cout_g() * P.kvol();
  const int64_t Mpad = (Mg + kUtBM - 1) / kUtBM * kUtBM, Kpad = (P.cin_g() + kUtBK - 1) / kUtBK * kUtBK;
  const int64_t gx = (P.in_vol() + kUtBN - 1) / kUtBN, gy = Mpad / kUtBM, gz = P.N * P.G;
  if (gx >= (int64_t(1) << 31) || gy > 65535 || gz > 65535) return false;
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor wt = ut_arrange_weight<T>(w, P.G, P.cin_g() * Mg, 1, Mg, Mg, P.cin_g(), Mpad, Kpad);
  UnitTapParams prm{};
  prm.x = x.data_ptr();
  prm.wt = wt.data_ptr();
  prm.bias = bias ? bias->data_ptr() : nullptr;
  prm.y = y.data_ptr();
  prm.P = P;
  prm.Mg = Mg;
  prm.Mpad = Mpad;
  prm.Kpad = Kpad;
  prm.crop = P.p[0] > 0 || P.p[1] > 0 || P.p[2] > 0;
  prm.vec = P.xl.v == 1 && P.in_vol() % S::VEC == 0 && P.xl.c % S::VEC == 0 && P.xl.n % S::VEC == 0 &&
            reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  prm.vec_out_lkw = unit_tap_vec_out(P, y, S::VEC);
  if (prm.vec_out_lkw >= 0) ++g_unit_tap_vec_out_launches;
  prm.ntiles = gx;
  ++g_unit_tap_launches;
  if constexpr (S::k16) {
    static const int persist = env_int("CT3D_UT_PERSIST", 0), persist_grid = env_int("CT3D_UT_PERSIST_GRID", 0);
    if (persist == 1) {
      constexpr int smem = S::Stages * S::StageBytes + S::DBytes;
      const int64_t slots = 2 * int64_t(at::cuda::getDeviceProperties(x.get_device())->multiProcessorCount);
      int64_t bx = std::min(gx, std::max<int64_t>(1, slots / (gy * gz)));
      if (persist_grid > 0) bx = std::min<int64_t>(bx, persist_grid);
      auto kernel = unit_tap_fwd_kernel<T, true>;
      set_smem_limit(kernel, smem);
      kernel<<<dim3(unsigned(bx), unsigned(gy), unsigned(gz)), kUtThreads, smem, stream>>>(prm);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      ++g_unit_tap_persist_launches;
      return true;
    }
  }
  auto kernel = unit_tap_fwd_kernel<T, false>;
  if constexpr (S::k16) {  // CT3D_UT_FWD_BLOCKS=3 (opt-in, not yet run on a GPU): three blocks an SM where x goes by 16-byte copies
    static const int blocks_env = env_int("CT3D_UT_FWD_BLOCKS", 2);
    if (prm.vec && blocks_env == 3) kernel = unit_tap_fwd_kernel<T, false, 3>;
  }
  set_smem_limit(kernel, S::Smem);
  kernel<<<dim3(unsigned(gx), unsigned(gy), unsigned(gz)), kUtThreads, S::Smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// Thin groups (thin_fwd_kernel); false where it does not apply: Cin/G or Cout/G over 8, a
// GPU older than sm_80, more than kThinMaxTd depth taps a phase, or shared memory too small.
template <typename T, int MW, bool SPLIT>
static void launch_thin(const ThinParams& prm, int64_t blocks, int64_t smem, cudaStream_t stream) {
  auto kernel = thin_fwd_kernel<T, MW, SPLIT>;
  set_smem_limit(kernel, smem);
  kernel<<<unsigned(blocks), 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, bool SPLIT>
static void dispatch_thin(int mw, const ThinParams& prm, int64_t blocks, int64_t smem, cudaStream_t stream) {
  if (mw == 1) launch_thin<T, 1, SPLIT>(prm, blocks, smem, stream);
  else if (mw == 2) launch_thin<T, 2, SPLIT>(prm, blocks, smem, stream);
  else if (mw == 3) launch_thin<T, 3, SPLIT>(prm, blocks, smem, stream);
  else launch_thin<T, 4, SPLIT>(prm, blocks, smem, stream);
}

bool thin_fits(const Problem& P) { return P.cin_g() <= 8 && P.cout_g() <= 8; }

template <typename T>
bool forward_thin(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias, at::Tensor& y,
                  const Problem& P, bool tf32) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(x.get_device());
  if (prop->major < 8 || !thin_fits(P) || !thin_offsets_fit(P)) return false;
  const bool split = std::is_same<T, float>::value && !tf32;
  // Window extent per dimension: over the phases with taps, the lowest first-tap offset
  // (off0 - (T-1)*doff) and the highest off0; depth: the most taps of a phase.
  if (P.s[0] > kThinMaxS || P.s[1] > kThinMaxS || P.s[2] > kThinMaxS) return false;
  ThinParams prm{};
  int lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0}, pmax[3] = {0, 0, 0}, td_max = 0;
  for (int e = 0; e < 3; ++e) {
    bool any = false;
    for (int c = 0; c < int(P.s[e]); ++c) {
      const PhaseDim q = phase_dim(c, int(P.k[e]), int(P.s[e]), int(P.p[e]), int(P.d[e]), int(P.out[e]));
      prm.ph[e][c] = q;
      pmax[e] = std::max(pmax[e], q.P);
      if (e == 0) td_max = std::max(td_max, q.T);
      if (q.T == 0) continue;
      const int l = q.off0 - (q.T - 1) * q.doff;
      lo[e] = any ? std::min(lo[e], l) : l;
      hi[e] = any ? std::max(hi[e], q.off0) : q.off0;
      any = true;
    }
  }
  if (td_max > kThinMaxTd) return false;
  const int mw = int(std::min<int64_t>(4, std::max<int64_t>(1, (pmax[2] + 15) / 16)));
  prm.P = P;
  prm.lo_h = lo[1];
  prm.lo_w = lo[2];
  prm.win = make_thin_window(8 + hi[1] - lo[1], 16 * mw + hi[2] - lo[2], 1, std::max(td_max, 1));
  prm.tiles_h = (pmax[1] + 7) / 8;
  prm.tiles_w = (pmax[2] + 16 * mw - 1) / (16 * mw);
  prm.w_words = int(P.kvol() * 64);
  const int64_t smem = (split ? 2 : 1) * int64_t(prm.w_words) * 4 + thin_window_bytes(prm.win);
  if (smem > int64_t(prop->sharedMemPerBlockOptin)) return false;
  const int64_t blocks = P.N * P.G * P.out[0] * prm.tiles_h * prm.tiles_w;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "conv_transpose3d: problem too large for the thin-group grid");

  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor wt = thin_weights<T>(w, P, kJobForward, prm.w_words, split, stream, prm.wt_big, prm.wt_small);
  prm.x = x.data_ptr();
  prm.bias = bias ? bias->data_ptr() : nullptr;
  prm.y = y.data_ptr();
  if constexpr (std::is_same<T, float>::value) {
    if (split) {
      dispatch_thin<T, true>(mw, prm, blocks, smem, stream);
      return true;
    }
  }
  dispatch_thin<T, false>(mw, prm, blocks, smem, stream);
  return true;
}

// Tensor cores; false where the kernel does not fit (see run_window_tc). Thin groups take
// thin_fwd_kernel, kernel size = stride unit_tap_fwd_kernel (except under kTcMma /
// kTcWgmma, which test the window kernels).
template <typename T>
bool forward_tc(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias, at::Tensor& y,
                const Problem& P, bool tf32, int64_t algo) {
  if (algo != kTcMma && algo != kTcWgmma &&
      (forward_thin<T>(x, w, bias, y, P, tf32) || forward_unit_tap<T>(x, w, bias, y, P, tf32)))
    return true;
  const WinParams prm = win_params(kJobForward, bias ? bias->data_ptr<T>() : nullptr, y.data_ptr<T>(), P);
  return run_window_tc<T>(prm, x, w, tf32, algo);
}

template <typename T>
void forward_tiled(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias,
                   at::Tensor& y, const Problem& P, bool tf32) {
  FwdGemm<T> gm{x.data_ptr<T>(), w.data_ptr<T>(), bias ? bias->data_ptr<T>() : nullptr,
                y.data_ptr<T>(), P};
  // The largest phase has ceil(out/s) positions per dimension.
  int64_t max_pos = 1;
  for (int e = 0; e < 3; ++e) max_pos *= (P.out[e] + P.s[e] - 1) / P.s[e];
  const int64_t z = P.G * P.s[0] * P.s[1] * P.s[2];
  launch_igemm(gm, P.N * max_pos, P.cout_g(), z, tf32 && std::is_same<T, float>::value,
               at::cuda::getCurrentCUDAStream());
}

template bool forward_tc<float>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&,
                                const Problem&, bool, int64_t);
template bool forward_tc<at::Half>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&,
                                   const Problem&, bool, int64_t);
template bool forward_tc<at::BFloat16>(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                       at::Tensor&, const Problem&, bool, int64_t);
template void forward_tiled<float>(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                   at::Tensor&, const Problem&, bool);
template void forward_tiled<at::Half>(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                      at::Tensor&, const Problem&, bool);
template void forward_tiled<at::BFloat16>(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                          at::Tensor&, const Problem&, bool);

}  // namespace ct3d
