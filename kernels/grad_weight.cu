// grad_weight.cu: dw and dbias of y = conv_transpose3d(x, w) + bias, as a Conv3d wgrad.
//
// GEMM view (per group g; see common.cuh for the table):
//   M = Cin/G, N = Cout/G * kvol, K = N * D*H*W (batch and input voxels)
//   A[m, k] = x[n, g*Cin/G + ci, i]
//   B[k, n] = dy[n, g*Cout/G + co, o = i*s - p + r*d]    (gathered, 0 outside dy)
//   dw[g*Cin/G + ci, co, r] = sum_k A*B
// with column = co * kvol + r and k = n * D*H*W + i.
//
// K is long and M*N small, so K is split across blocks: blockIdx.x = split, each split
// writes its fp32 partial tile to a workspace [S, numel(dw)], and a second kernel adds
// the S partials in split order. No float atomics: the result is bitwise identical from
// run to run. S (at most kMaxSplits, so the workspace is at most kMaxSplits * numel(dw)
// floats) is chosen from the blocks that fit on the card at once so that no wave runs
// part-empty (wgrad_splits).
//
// Four kernels compute the split partials. thin_wgrad_kernel, where Cin/G and Cout/G are at
// most 8 (its section says how: x and dy read in place). On Hopper (sm_90a build)
// wgrad_wg_kernel, the same blocks on wgmma, turned around (its section says how), TF32,
// 3xTF32 and 16-bit. Elsewhere wgrad_tc_kernel (mma.sync):
// block (split, chunk of 8*NT dy channels, group g and tap group) walks tiles of 128 input
// positions (one plane of one batch item each). For each tile it has in shared memory
//   - the x tile xt[ci][position] (cp.async, 16-byte pieces, where x's positions are
//     contiguous and aligned; else through registers), all Cin/G channels (MT m16 tiles);
//   - the window of dy that the tile's positions reach through the group's taps
//     (window_tc.cuh's window, src = dy, multiplier s, offsets r*d - p), only the depth
//     planes of the group's taps: dy is packed channels-innermost in its own type once per
//     call (pack_src_kernel, TF32-rounded in TF32 mode), so the window is 16-byte cp.async
//     pieces.
// Both are in S buffers (up to 3): tile t + S - 1's copies are issued at tile t's start
// and run during its MMAs. Then per
// tap r, D[ci][co] += sum over positions of A[ci][p] * B[p][co], A = the x tile
// (ldmatrix), B = the window shifted by tap r. Warp w owns taps w, w+8, ... of the group
// (TPW at most) and all of ci, so the A fragments of a k-step serve every tap.
//   fp16/bf16: m16n8k16; B by ldmatrix.x4.trans (x2 for 8 channels): each lane gives
//     one position row's address plus the tap's shift, so any shift works.
//   fp32: m16n8k8 TF32 (3xTF32 in strict mode, big*big chain restarted every tile); B by
//     two 4-byte loads a fragment (ldmatrix cannot transpose 32-bit elements).
// More than 64 input channels a group run as blocks of at most 64, a launch each (see the
// launchers). grad_weight_tiled: common.cuh's FFMA tile, the fallback (windows too large).
//
// grad bias: with the kernels that pack dy (wgrad_wg, wgrad_tc), from the per-channel sums
// that the pack takes as it copies dy (fp64, fixed order: pack_src_kernel,
// pack_bias_kernel); with thin_wgrad_kernel, from the dy values its staging loads anyway,
// each tile summing the dy it owns (thin_bias_range; fp32 within a tile, fp64 across
// tiles, fixed order) where the windows hold it (thin_bias_covered); else (FFMA, only
// grad bias asked, or windows that miss dy) blocks of parts of each channel sum dy in a fixed order
// (grad_bias_kernel, fp64). The parts are then added in order (grad_bias_parts_kernel).
//
// Sections: the FFMA Gemm, the tensor-core kernels, the thin-group kernel, reduction
// kernels, launchers.
#include "common.cuh"
#include "window_tc.cuh"
#include "window_wg.cuh"

#include <atomic>
#include <type_traits>

namespace ct3d {

constexpr int kMaxSplits = 64;

// ============================================================================
// The Gemm: gather rule and epilogue
// ============================================================================
template <typename T>
struct WgradGemm {
  static constexpr int kMinBlocks = 2;  // see igemm_ffma_kernel
  const T* x;
  const T* dy;
  float* ws;  // [S, numel(dw)]
  Problem P;
  int splits;
  int64_t chunk;  // K per split, a multiple of the tile depth

  struct Sub {
    int64_t M, Nn, k_begin, k_end;
    int g, split;
  };
  struct Row {
    int64_t x_base;  // x offset of (n = 0, channel g*Cin/G + ci, voxel 0)  (strides: P.xl, P.yl)
    int64_t ci;
  };
  struct Col {
    int64_t dy_base;  // dy offset of (n = 0, channel g*Cout/G + co, voxel 0)
    int64_t col;
    int q[3];         // r*d - p: o = i*s + q
  };

  __device__ Sub sub(int z) const {
    Sub sb;
    sb.g = z / splits;
    sb.split = z % splits;
    sb.M = P.cin_g();
    sb.Nn = P.cout_g() * P.kvol();
    const int64_t K = P.N * P.in_vol();
    sb.k_begin = min(K, sb.split * chunk);
    sb.k_end = min(K, sb.k_begin + chunk);
    return sb;
  }

  __device__ Row row(const Sub& sb, int64_t m) const {
    return Row{(int64_t(sb.g) * P.cin_g() + m) * P.xl.c, m};
  }

  __device__ float a(const Sub&, const Row& r, int64_t k) const {
    const int64_t n = k / P.in_vol();
    const int64_t vox = k - n * P.in_vol();
    return float(x[n * P.xl.n + r.x_base + vox * P.xl.v]);
  }

  __device__ Col col(const Sub& sb, int64_t nn) const {
    Col c;
    c.col = nn;
    const int64_t co = nn / P.kvol();
    int t = int(nn - co * P.kvol());
    const int rw = t % int(P.k[2]); t /= int(P.k[2]);
    const int rh = t % int(P.k[1]);
    const int rd = t / int(P.k[1]);
    c.q[0] = rd * int(P.d[0]) - int(P.p[0]);
    c.q[1] = rh * int(P.d[1]) - int(P.p[1]);
    c.q[2] = rw * int(P.d[2]) - int(P.p[2]);
    c.dy_base = (int64_t(sb.g) * P.cout_g() + co) * P.yl.c;
    return c;
  }

  __device__ float b(const Sub&, const Col& c, int64_t k) const {
    const int64_t n = k / P.in_vol();
    const int64_t vox = k - n * P.in_vol();
    const int iw = int(vox % P.in[2]);
    const int ih = int((vox / P.in[2]) % P.in[1]);
    const int id = int(vox / (P.in[2] * P.in[1]));
    // Gather rule (1): input voxel i with tap r lands on o = i*s - p + r*d.
    const int od = id * int(P.s[0]) + c.q[0];
    const int oh = ih * int(P.s[1]) + c.q[1];
    const int ow = iw * int(P.s[2]) + c.q[2];
    if (unsigned(od) >= unsigned(P.out[0]) || unsigned(oh) >= unsigned(P.out[1]) ||
        unsigned(ow) >= unsigned(P.out[2]))
      return 0.f;
    return float(dy[n * P.yl.n + c.dy_base + ((int64_t(od) * P.out[1] + oh) * P.out[2] + ow) * P.yl.v]);
  }

  __device__ void store(const Sub& sb, const Row& r, const Col& c, float acc) const {
    const int64_t numel = P.Cin * P.cout_g() * P.kvol();
    ws[sb.split * numel + (int64_t(sb.g) * P.cin_g() + r.ci) * P.cout_g() * P.kvol() + c.col] = acc;
  }
};

// ============================================================================
// Tensor-core kernel
// ============================================================================
constexpr int kWgBM = 128;               // input positions per tile: 16 k8 or 8 k16 steps
constexpr int kWgXStride = kWgBM + 4;    // fp32 x-tile row, floats (528 B: ldmatrix conflict-free)
constexpr int kWgXStride16 = kWgBM + 8;  // 16-bit x-tile row, elements (272 B: likewise)

// Elements per dy-window position for NT n8 tiles of dy channels. fp32 (NT = 1): 8
// channels + 4 pad, 48 B, so the scalar B loads of a warp hit 32 distinct banks. 16-bit:
// ldmatrix.trans reads 8 positions' 16-byte rows at once: 16 B a position (NT = 1) are
// 128 contiguous bytes; 16 channels + 8 pad (48 B, NT = 2) put the 8 rows in 8 distinct
// 16-byte bank groups.
__host__ __device__ constexpr int wgrad_rs(bool k16, int nt) { return !k16 ? 12 : nt == 1 ? 8 : 24; }

struct WgradTcParams {
  const void* x;
  const void* dyp;         // dy packed channels-innermost in its own type (window_tc.cuh's pack_src):
  int64_t pk_n, pk_v, cg_pad;  // element n*pk_n + position*pk_v + g*cg_pad + channel
  float* ws;               // [splits, numel(dw)]
  Problem P;
  int tiles_per_plane;     // ceil(H*W / kWgBM)
  int64_t total_tiles;     // N * D * tiles_per_plane
  int64_t tiles_per_split;
  // Tap groups (blocks along the taps), in flat tap order. Whole kernel-depth planes a
  // group where a plane's taps fit in a block (sub_groups = 1): group tg has taps
  // [tg * taps_per_group, ...) and its window only the planes those taps reach; else each
  // plane splits into sub_groups groups of taps_per_group taps (the last fewer).
  int tap_groups, sub_groups;
  int taps_per_group;      // <= 8 * TPW
  int win_planes;          // depth planes in a window: the most any group needs
  int R, C;                // window rows and columns (fixed: the most any tile needs)
  int window_bytes;        // shared memory: windows | x tiles | tap table | position table
  int windows;             // buffers (1..3): with S > 1, tile t + S - 1 is copied during tile t's MMAs
  bool x_async;            // x tiles copied with cp.async beside the windows (as many buffers);
                           // needs positions contiguous and 16-byte aligned; else one x tile
                           // loaded through registers
  bool round_a;            // TF32: round the x tile (the pack rounds dy)
  // wgrad_wg_kernel only:
  int ch;                  // dy channels a block (a multiple of 8)
  int rs;                  // window elements a position (ch, or more: 8 mod 16)
  int xt_bytes;            // an x tile
  int64_t slice;           // dy packed slice-major (PackSlices): elements a (group, chunk) slice
  bool bulk;               // window rows by bulk copies (each row inside dy: see plan_wgrad_wg)
  const void* zrow;        // zeros, a window row's worth: the source of rows outside dy
};

// Taps per warp. One block per SM (the default): as many as keep the accumulators
// (TPW * MT * NT * 4 floats) at 64 (fp32) or 96 (16-bit) a thread, at most 8; 3xTF32 keeps
// three sets of 16 at most. Two blocks per SM (two: TF32 with MT <= 2): 32 accumulator
// floats, so 128 registers hold them; the second block's warps hide the B loads' latency,
// which pays more than the extra x and window reads cost (kb68 grad weight 40 -> 21 ms on
// an H100; 16-bit, MT = 3 and 3xTF32 with three sets of 8 lose).
__host__ __device__ constexpr int wgrad_tpw(int mt, int nt, bool k16, bool split3, bool two) {
  if (split3) return mt >= 4 ? 1 : 4 / mt;
  const int t = (two ? 8 : k16 ? 24 : 16) / (mt * nt);
  return t < 1 ? 1 : t < 8 ? t : 8;
}
// Blocks per SM the launch bounds ask for: two where the accumulators are 32 floats or fewer.
__host__ __device__ constexpr int wgrad_min_blocks(int mt, int tpw, int nt, bool split3) {
  return tpw * mt * nt * 4 * (split3 ? 3 : 1) <= 32 ? 2 : 1;
}

// The taps of tap group tg: tap0 .. tap0 + ntaps - 1 (flat order; see WgradTcParams).
__device__ __forceinline__ void wgrad_group_taps(const WgradTcParams& prm, int tg, int& tap0, int& ntaps) {
  const int kvol = int(prm.P.kvol()), ptaps = int(prm.P.k[1] * prm.P.k[2]);
  if (prm.sub_groups > 1) {  // part sub of plane tg / sub_groups
    const int sub = tg % prm.sub_groups;
    tap0 = (tg / prm.sub_groups) * ptaps + sub * prm.taps_per_group;
    ntaps = min(prm.taps_per_group, ptaps - sub * prm.taps_per_group);
  } else {  // whole planes
    tap0 = tg * prm.taps_per_group;
    ntaps = min(prm.taps_per_group, kvol - tap0);
  }
}
// Window shift (positions) of tap `tap` in a window of R rows x C columns a plane whose
// first plane is the one kernel-depth plane rd0 reaches.
__device__ __forceinline__ int wgrad_tap_shift(const Problem& P, const WinDim (&wd)[3], int tap, int rd0, int R, int C) {
  const int ptaps = int(P.k[1] * P.k[2]);
  const int rw = tap % int(P.k[2]), rh = (tap / int(P.k[2])) % int(P.k[1]), rd = tap / ptaps - rd0;
  const int sh = wd[1].off0 + rh * wd[1].dstep - win_off_min(wd[1]);
  const int sw = wd[2].off0 + rw * wd[2].dstep - win_off_min(wd[2]);
  return (rd * R + sh) * C + sw;
}

// A tile of the grad-weight reduction: batch item n, input plane jd, first position m0 of
// the plane (tiles_per_plane tiles of bm positions a plane).
struct WgradTile { int64_t n; int jd, m0; };
__device__ __forceinline__ WgradTile wgrad_tile(int64_t tile, int tiles_per_plane, int pd, int bm) {
  const int64_t rest = tile / tiles_per_plane;
  return WgradTile{rest / pd, int(rest % pd), int(tile % tiles_per_plane) * bm};
}

// One 16-byte piece (pc) of window position p of a tile's dy window (planes x R rows x C
// columns; c_magic, r_magic = fast_div_magic of C and R), copied by cp.async to the
// window at wdst (pos_bytes a position) from the packed dy at base (pk_v elements a
// position, the window's corner at output (od0, oh0, ow0), planes dstep apart); zero
// outside dy. Both tensor-core grad-weight kernels.
template <typename W>
__device__ __forceinline__ void wgrad_dy_piece(uint32_t wdst, int pos_bytes, const W* base, int64_t pk_v, int p,
                                               int pc, int C, int R, uint32_t c_magic, uint32_t r_magic, int od0,
                                               int oh0, int ow0, int dstep, const Problem& P) {
  const int rr = fast_div(p, c_magic), c = p - rr * C;
  const int td = fast_div(rr, r_magic), r = rr - td * R;
  const int od = od0 + td * dstep, oh = oh0 + r, ow = ow0 + c;
  const bool ok = unsigned(od) < unsigned(P.out[0]) && unsigned(oh) < unsigned(P.out[1]) &&
                  unsigned(ow) < unsigned(P.out[2]);
  const W* src = ok ? base + ((int64_t(od) * P.out[1] + oh) * P.out[2] + ow) * pk_v + pc * (16 / int(sizeof(W))) : base;
  cp_async16(wdst + p * pos_bytes + pc * 16, src, ok ? 16 : 0);
}

// MT m16 tiles of input channels (all of Cin/G), NT n8 tiles of dy channels (the chunk),
// TPW taps a warp. fp32: m16n8k8 TF32 (or 3xTF32), B by two 4-byte loads a fragment (a
// tap's shift breaks ldmatrix's 16-byte alignment in fp32). 16-bit: m16n8k16, B by
// ldmatrix.trans, which takes one address per position row, so any shift works.
template <typename T, int MT, int TPW, int NT, bool SPLIT3>
__global__ void __launch_bounds__(256, wgrad_min_blocks(MT, TPW, NT, SPLIT3)) wgrad_tc_kernel(const WgradTcParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr bool K16 = !std::is_same<T, float>::value;
  using W = typename WinElem<T>::type;         // dy window element: dy's own type
  using XT = typename std::conditional<K16, W, float>::type;  // x tile element
  constexpr int RS = wgrad_rs(K16, NT);
  constexpr int XS = K16 ? kWgXStride16 : kWgXStride;
  constexpr int CH = NT * 8;                              // dy channels a block
  constexpr int PIECES = CH * int(sizeof(W)) / 16;        // 16-byte cp.async pieces a position
  static_assert(!K16 || !SPLIT3, "3xTF32 is fp32 only");
  static_assert(K16 || NT == 1, "fp32 windows hold one n8 tile");
  extern __shared__ __align__(16) unsigned char smem[];
  // S = windows dy windows [position][RS] (with S > 1, tile t + S - 1's is copied while
  // tile t's MMAs run), then the x tile(s) [MT*16 channels][XS] (as many as windows when
  // x_async) and the position table (kWgBM ints: window offset of each tile position, in
  // elements)
  constexpr int XT_ELEMS = MT * 16 * XS;
  XT* xt0 = reinterpret_cast<XT*>(smem + prm.windows * prm.window_bytes);
  int* pos_tab = reinterpret_cast<int*>(xt0 + (prm.x_async ? prm.windows : 1) * XT_ELEMS);
  const int S = prm.windows;
  const Problem& P = prm.P;
  WinDim wd[3];
  win_dims(P, kJobGradInput, 0, wd);  // positions = input voxels, multiplier s, taps r
  const int g = blockIdx.z / prm.tap_groups, tg = blockIdx.z % prm.tap_groups;
  const int chunk = blockIdx.y, split = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, tq = lane % 4;
  const int kvol = int(P.kvol()), R = prm.R, C = prm.C;
  int tap0, ntaps;  // the group's taps: tap0 .. tap0 + ntaps - 1
  wgrad_group_taps(prm, tg, tap0, ntaps);
  const int rd0 = tap0 / int(P.k[1] * P.k[2]);  // the window's first plane
  const int Wd = wd[2].P, plane = wd[1].P * wd[2].P;
  const int cin_g = int(P.cin_g()), cout_g = int(P.cout_g());

  // Window shift (elements) of this warp's taps: block taps warp, warp + 8, ... (tap tap0 + q)
  int shw[TPW];
#pragma unroll
  for (int t = 0; t < TPW; ++t) {
    const int q = t * 8 + warp, tap = tap0 + q;
    shw[t] = q < ntaps ? wgrad_tap_shift(P, wd, tap, rd0, R, C) * RS : 0;
  }

  float acc[TPW][MT][NT][4], blk[SPLIT3 ? TPW : 1][MT][4], cor[SPLIT3 ? TPW : 1][MT][4];
#pragma unroll
  for (int q = 0; q < TPW; ++q)
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
#pragma unroll
        for (int j = 0; j < NT; ++j) acc[q][i][j][e] = 0.f;
        if constexpr (SPLIT3) blk[q][i][e] = cor[q][i][e] = 0.f;
      }

  const T* __restrict__ x = static_cast<const T*>(prm.x);
  const int64_t t_begin = split * prm.tiles_per_split;
  const int64_t t_end = min(prm.total_tiles, t_begin + prm.tiles_per_split);

  // The dy window of a tile: the group's planes (win_planes from rd0) x R rows x C columns
  // of this chunk's CH channels, copied with cp.async from the packed dy in 16-byte pieces
  // (zero outside dy).
  const int Td = prm.win_planes;
  const W* dy_g = static_cast<const W*>(prm.dyp) + int64_t(g) * prm.cg_pad + chunk * CH;
  auto tile_pos = [&](int64_t tile) { return wgrad_tile(tile, prm.tiles_per_plane, wd[0].P, kWgBM); };
  // A tile's copies: (x_async) x_pieces 16-byte pieces of the x tile, then win_pieces of
  // window; thread t copies pieces t, t + 256, ... (so the x pieces a thread rounds in TF32
  // mode are the ones it copied). The row and plane of a window position come from
  // multiply-highs (fast_div: a window fits in shared memory, so p, C, R < 2^16), not
  // divisions.
  constexpr int EP = 16 / int(sizeof(T)), XPR = kWgBM / EP;  // x: elements a piece, pieces a row
  const int win_pieces = Td * R * C * PIECES, x_pieces = prm.x_async ? MT * 16 * XPR : 0;
  const int iters = (win_pieces + x_pieces + 255) / 256;
  const uint32_t c_magic = fast_div_magic(uint32_t(C)), r_magic = fast_div_magic(uint32_t(R));
  auto issue_tile = [&](const WgradTile& tp, int b) {
    const int jd = tp.jd, m0 = tp.m0, jh0 = m0 / Wd;
    const int od0 = jd * wd[0].mult + wd[0].off0 + rd0 * wd[0].dstep, oh0 = jh0 * wd[1].mult + win_off_min(wd[1]);
    const int ow0 = win_off_min(wd[2]);
    const W* base = dy_g + tp.n * prm.pk_n;
    const uint32_t wdst = smem_u32(smem + b * prm.window_bytes);
    const T* xb = x + P.xl.at(tp.n, int64_t(g) * cin_g, int64_t(jd) * plane);
    const uint32_t xdst = smem_u32(xt0 + b * XT_ELEMS);
    for (int it = 0; it < iters; ++it) {
      const int q = threadIdx.x + it * 256;
      if (q < x_pieces) {
        // the x tile: EP positions of one channel a piece; a piece that runs past the
        // plane's end copies what is left and zero-fills the rest
        const int ci = q / XPR, pp = (q % XPR) * EP, left = plane - (m0 + pp);
        const int bytes = ci < cin_g && left > 0 ? min(left, EP) * int(sizeof(T)) : 0;
        cp_async16(xdst + (ci * XS + pp) * int(sizeof(T)), bytes ? xb + ci * P.xl.c + m0 + pp : x, bytes);
      } else if (q - x_pieces < win_pieces) {  // the dy window: planes x R rows x C columns, zero outside dy
        const int qw = q - x_pieces;
        wgrad_dy_piece(wdst, RS * int(sizeof(W)), base, prm.pk_v, qw / PIECES, qw % PIECES, C, R, c_magic, r_magic,
                       od0, oh0, ow0, wd[0].dstep, P);
      }
    }
  };
  for (int st = 0; st + 1 < S; ++st) {  // the first S - 1 tiles
    if (t_begin + st < t_end) issue_tile(tile_pos(t_begin + st), st);
    cp_async_commit();
  }
  int buf = 0;
  for (int64_t tile = t_begin; tile < t_end; ++tile, buf = buf + 1 == S ? 0 : buf + 1) {
    const WgradTile tp = tile_pos(tile);
    const int jd = tp.jd, m0 = tp.m0, jh0 = m0 / Wd;
    const int64_t n = tp.n;
    __syncthreads();  // the previous tile's MMAs are done with xt, pos_tab and its buffer
    if (S == 1) issue_tile(tp, 0);
    else if (tile + S - 1 < t_end) issue_tile(tile_pos(tile + S - 1), buf == 0 ? S - 1 : buf - 1);  // tile - 1's buffer
    cp_async_commit();  // one group a tile, empty or not: the wait below counts groups
    const unsigned char* win = smem + buf * prm.window_bytes;
    XT* xt = xt0 + (prm.x_async ? buf : 0) * XT_ELEMS;
    // window offset of each tile position (one division each, once per tile)
    for (int p = threadIdx.x; p < kWgBM; p += blockDim.x) {
      const int m = min(m0 + p, plane - 1);
      pos_tab[p] = ((m / Wd - jh0) * wd[1].mult * C + (m % Wd) * wd[2].mult) * RS;
    }
    // x tile through registers: rows = channels, columns = the tile's positions
    if (!prm.x_async) {
      const T* xb = x + P.xl.at(n, int64_t(g) * cin_g, int64_t(jd) * plane);
      XT v[MT * 8];
#pragma unroll
      for (int u = 0; u < MT * 8; ++u) {
        const int e = threadIdx.x + 256 * u, ci = e / kWgBM, p = e % kWgBM;
        v[u] = (ci < cin_g && m0 + p < plane) ? XT(xb[ci * P.xl.c + (m0 + p) * P.xl.v]) : XT(0.f);
      }
#pragma unroll
      for (int u = 0; u < MT * 8; ++u) {
        const int e = threadIdx.x + 256 * u;
        XT val = v[u];
        if constexpr (!K16) val = prm.round_a ? round_tf32(val) : val;
        xt[(e / kWgBM) * XS + e % kWgBM] = val;
      }
    }
    cp_async_wait(S - 1);  // this tile's copies have landed (the next S - 1 tiles' may be in flight)
    if constexpr (!K16) {
      if (prm.x_async && prm.round_a) {  // TF32: each thread rounds the x pieces it copied
        for (int q = threadIdx.x; q < MT * 16 * XPR; q += blockDim.x) {
          float4* v = reinterpret_cast<float4*>(xt + (q / XPR) * XS + (q % XPR) * EP);
          float4 f = *v;
          f.x = round_tf32(f.x), f.y = round_tf32(f.y), f.z = round_tf32(f.z), f.w = round_tf32(f.w);
          *v = f;
        }
      }
    }
    __syncthreads();

    // ldmatrix row of this lane: A (x tile) channel row, B (window) tile-position row
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8;
    if constexpr (K16) {
      // D[ci][co] += sum over 16 positions of x[ci][p] * dy[p + shift][co], per tap
      const uint32_t xs_a = smem_u32(xt) + (lrow * XS + (lane >> 4) * 8) * 2;
      const uint32_t col_b = NT == 2 ? (lane >> 4) * 8 * 2 : 0;  // second n8 tile: channels 8..15
#pragma unroll 2
      for (int k0 = 0; k0 < kWgBM; k0 += 16) {
        uint32_t a[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) ldmatrix_x4(a[i], xs_a + (i * 16 * XS + k0) * 2);
        const uint32_t row_b = smem_u32(win) + pos_tab[k0 + lrow] * 2 + col_b;
        // All of the k-step's B fragments first, then the MMAs: the asm statements keep
        // their order, so a load right before its MMAs left each tap waiting on it.
        uint32_t b[TPW][4];
#pragma unroll
        for (int q = 0; q < TPW; ++q) {
          if (q * 8 + warp >= ntaps) continue;  // warp-uniform
          if constexpr (NT == 2) ldmatrix_x4_trans(b[q], row_b + shw[q] * 2);
          else ldmatrix_x2_trans(reinterpret_cast<uint32_t (&)[2]>(b[q]), row_b + shw[q] * 2);
        }
#pragma unroll
        for (int q = 0; q < TPW; ++q) {
          if (q * 8 + warp >= ntaps) continue;
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma_k16<T>(acc[q][i][0], a[i], b[q][0], b[q][1]);
            if constexpr (NT == 2) mma_k16<T>(acc[q][i][1], a[i], b[q][2], b[q][3]);
          }
        }
      }
    } else {
      const float* xs = reinterpret_cast<const float*>(win);
      for (int k0 = 0; k0 < kWgBM; k0 += 8) {
        uint32_t a[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
          ldmatrix_x4(a[i], smem_u32(xt + (i * 16 + lrow) * XS + k0 + (lane >> 4) * 4));
        // B rows of this lane: tile positions k0 + tq and k0 + tq + 4, channel gq
        const int pb[2] = {pos_tab[k0 + tq] + gq, pos_tab[k0 + tq + 4] + gq};
        uint32_t ab[MT][4], as[MT][4];
        if constexpr (SPLIT3) {
#pragma unroll
          for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              ab[i][e] = tf32_rna(__uint_as_float(a[i][e]));
              as[i][e] = tf32_rna(__uint_as_float(a[i][e]) - __uint_as_float(ab[i][e]));
            }
        }
#pragma unroll
        for (int q = 0; q < TPW; ++q) {
          if (q * 8 + warp >= ntaps) continue;  // warp-uniform
          const int sh = shw[q];
          const float f0 = xs[pb[0] + sh], f1 = xs[pb[1] + sh];
          if constexpr (SPLIT3) {
            const uint32_t bb0 = tf32_rna(f0), bb1 = tf32_rna(f1);
            const uint32_t bs0 = tf32_rna(f0 - __uint_as_float(bb0)), bs1 = tf32_rna(f1 - __uint_as_float(bb1));
#pragma unroll
            for (int i = 0; i < MT; ++i) {
              mma_tf32(blk[q][i], ab[i], bb0, bb1);
              mma_tf32(cor[q][i], as[i], bb0, bb1);
              mma_tf32(cor[q][i], ab[i], bs0, bs1);
            }
          } else {
#pragma unroll
            for (int i = 0; i < MT; ++i) mma_tf32(acc[q][i][0], a[i], __float_as_uint(f0), __float_as_uint(f1));
          }
        }
      }
      if constexpr (SPLIT3) {  // bounded big*big chains: one tile's 16 k-steps
#pragma unroll
        for (int q = 0; q < TPW; ++q)
#pragma unroll
          for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              acc[q][i][0][e] += blk[q][i][e];
              blk[q][i][e] = 0.f;
            }
      }
    }
  }
  cp_async_wait(0);  // no copy may be in flight when the block exits

  // ---- partials of this split: ws[split][g*Cin/G + ci][co][tap] ----
  const int64_t numel = P.Cin * P.cout_g() * P.kvol();
#pragma unroll
  for (int q = 0; q < TPW; ++q) {
    if (q * 8 + warp >= ntaps) continue;
    const int tap = tap0 + q * 8 + warp;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ci = i * 16 + gq + 8 * (e / 2), co = chunk * CH + j * 8 + 2 * tq + e % 2;
          float v = acc[q][i][j][e];
          if constexpr (SPLIT3) v += cor[q][i][e];
          if (ci < cin_g && co < cout_g)
            prm.ws[split * numel + ((int64_t(g) * cin_g + ci) * cout_g + co) * kvol + tap] = v;
        }
  }
#endif
}

// ============================================================================
// Tensor-core kernel on wgmma (sm_90a)
// ============================================================================
// wgrad_wg_kernel: wgrad_tc_kernel's blocks, tiles, windows and copies, with the GEMM
// turned around so that the operand that does not move with the tap -- the x tile -- is
// the one wgmma reads through a descriptor:
//   D[row (tap t, dy channel co)][ci] += sum over the tile's positions p of
//                                        dyw[p + shift(t)][co] * x[p][ci]
//   M: the block's taps x CH dy channels, row = t * CH + co, in sets of 64 (wgmma M); the
//      2 warpgroups take sets wg, wg + 2, ... (at most NS each)
//   N: Cin/G, padded to NW = 32, 48 or 64
//   K: a tile's BM input positions (of one plane), 16 (16-bit) or 8 (TF32) a wgmma
// A comes from registers, so each 8-row group of a set is its own (tap, 8 channels) pair,
// loaded from the dy window at that tap's shift: ldmatrix.trans in 16-bit (one address a
// position row, so any shift works); in TF32 two 8-byte loads, as the pack puts channels
// co and co + 8 (A's rows gq and gq + 8) side by side (PackSlices::pair8; CH a multiple
// of 16, RS = 8 mod 16 elements a position: a half-warp's loads hit 32 distinct banks).
// A set may mix taps, so thin dy (kb58: 16 channels, 4 taps a set) fills M as well as
// wide dy does. Every warp loads all NS sets' fragments (rows past the block's taps read
// its first tap): no branch a set in the k-loop.
// B: the x tile as [position / EP][NW channels][EP positions] (EP positions = 16 bytes):
// wgmma's no-swizzle K-major core matrices, LBO = NW * 16 bytes, SBO = 128. Channels past
// Cin/G and positions past the plane are zero-filled by the copies.
// A k-step: each warpgroup loads its sets' A fragments, fences, issues one wgmma a set in
// straight-line code (a switch over the set count) and waits for them before the next
// k-step's loads overwrite A; the other warpgroup's wgmmas keep the tensor pipe busy
// meanwhile.
// 3xTF32 (SPLIT): the x tile is split in place once it lands (big parts where they were,
// small parts after them: twice the x tile), A fragments as they are loaded (split_tf32);
// three wgmmas a set and k-step: the small products into their own accumulators, big x
// big into a chain of one tile (16 k-steps), which is added into a register sum and
// restarted after each tile, as wgrad_tc_kernel restarts its big*big chain. (With all three
// products in one chain, the small products' truncation at the chain's magnitude made
// grad weight less accurate than cuDNN's FFMA on a test case.)
template <typename T> __host__ __device__ constexpr int wgrad_wg_bm() { return std::is_same<T, float>::value ? 128 : 256; }
// Sets (64 rows of M) a warpgroup: NS * NW / 2 accumulator floats, 112-128 a thread.
// 3xTF32 keeps three sets of accumulators (the tile's big x big chain, the small products
// and the sum): 3 * NS * NW / 2 floats, 96-144 a thread.
__host__ __device__ constexpr int wgrad_wg_sets(int nw, bool split) {
  return split ? (nw == 32 ? 3 : nw == 48 ? 2 : 1) : nw == 32 ? 7 : nw == 48 ? 5 : 4;
}

// f(std::integral_constant<int, u>{}) for a runtime set count u in 1..NS: each count gets
// its wgmmas in straight-line code (a set count is fixed a launch; the three k-loops below
// take it this way, every k-step).
template <int NS, typename F>
__device__ __forceinline__ void with_set_count(int u, F&& f) {
  switch (u) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: if constexpr (NS >= 2) f(std::integral_constant<int, 2>{}); break;
    case 3: if constexpr (NS >= 3) f(std::integral_constant<int, 3>{}); break;
    case 4: if constexpr (NS >= 4) f(std::integral_constant<int, 4>{}); break;
    case 5: if constexpr (NS >= 5) f(std::integral_constant<int, 5>{}); break;
    case 6: if constexpr (NS >= 6) f(std::integral_constant<int, 6>{}); break;
    case 7: if constexpr (NS >= 7) f(std::integral_constant<int, 7>{}); break;
    default: break;
  }
}

// The wgmmas of U sets after one fence, then their commit: acc += A x (the x tile through
// db), A from a (TF32: rounded). 3xTF32: a and db are the big parts, as and dbs the small
// ones; acc gets big x big, cor the two small products (a chain of its own, whose
// truncation errors are ~2^-11 of acc's).
template <typename T, int NW, int NS, int NC, int U, bool SPLIT>
__device__ __forceinline__ void wgrad_wg_mmas(float (&acc)[NS][NW / 2], float (&cor)[NC][NW / 2],
                                              const uint32_t (&a)[NS][4], const uint32_t (&as)[NS][4],
                                              uint64_t db, uint64_t dbs) {
  wg_fence();
#pragma unroll
  for (int s = 0; s < U; ++s) {
    if constexpr (SPLIT) {
      wgmma_rs<T, NW>(cor[s], as[s], db);
      wgmma_rs<T, NW>(cor[s], a[s], dbs);
    }
    wgmma_rs<T, NW>(acc[s], a[s], db);
  }
  wg_commit();
}
template <typename T, int NW, int NS, int NC, bool SPLIT>
__device__ __forceinline__ void wgrad_wg_step(float (&acc)[NS][NW / 2], float (&cor)[NC][NW / 2],
                                              const uint32_t (&a)[NS][4], const uint32_t (&as)[NS][4],
                                              uint64_t db, uint64_t dbs, int u) {
  if (!SPLIT && u == NS) {  // most warpgroups: one compare, not the switch's jump table (in 3xTF32
                            // ptxas serializes the wgmmas after this branch: C7520)
    wgrad_wg_mmas<T, NW, NS, NC, NS, SPLIT>(acc, cor, a, as, db, dbs);
    return;
  }
  with_set_count<NS>(u, [&](auto c) { wgrad_wg_mmas<T, NW, NS, NC, decltype(c)::value, SPLIT>(acc, cor, a, as, db, dbs); });
}

template <typename T, int NW, bool SPLIT>
__global__ void __launch_bounds__(256, 1) wgrad_wg_kernel(const WgradTcParams prm) {
#ifdef CT3D_WGMMA
  constexpr bool K16 = !std::is_same<T, float>::value;
  static_assert(!K16 || !SPLIT, "3xTF32 is fp32 only");
  using W = typename WinElem<T>::type;
  constexpr int NS = wgrad_wg_sets(NW, SPLIT), BM = wgrad_wg_bm<T>();
  constexpr int KW = K16 ? 16 : 8;         // positions a wgmma
  constexpr int EP = 16 / int(sizeof(W));  // positions a 16-byte piece
  constexpr int XPR = BM / EP;             // pieces a channel row of the x tile
  static_assert(XPR % 2 == 0, "x pieces go in pairs");
  extern __shared__ __align__(128) unsigned char smem[];
  // S windows, S x tiles, the position table (BM ints), S mbarriers (bulk copies)
  const int S = prm.windows;
  unsigned char* xt0 = smem + S * prm.window_bytes;
  int* pos_tab = reinterpret_cast<int*>(xt0 + S * prm.xt_bytes);
  const uint32_t bars = smem_u32(pos_tab + BM);
  const Problem& P = prm.P;
  WinDim wd[3];
  win_dims(P, kJobGradInput, 0, wd);  // positions = input voxels, multiplier s, taps r
  const int g = blockIdx.z / prm.tap_groups, tg = blockIdx.z % prm.tap_groups;
  const int chunk = blockIdx.y, split = blockIdx.x;
  if (prm.bulk && threadIdx.x == 0) {
    for (int b = 0; b < S; ++b) mbar_init(bars + 8 * b, 1);
    mbar_fence_init();
  }
  __syncthreads();
  const int wg = threadIdx.x / 128, w4 = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int gq = lane / 4, tq = lane % 4;
  const int R = prm.R, C = prm.C, CH = prm.ch, RS = prm.rs;
  int tap0, ntaps;
  wgrad_group_taps(prm, tg, tap0, ntaps);
  const int rd0 = tap0 / int(P.k[1] * P.k[2]);
  const int Wd = wd[2].P, plane = wd[1].P * wd[2].P;
  const int cin_g = int(P.cin_g()), cout_g = int(P.cout_g()), kvol = int(P.kvol());
  const int nsets = (ntaps * CH + 63) / 64;
  const int my_sets = nsets > wg ? (nsets - wg + 1) / 2 : 0;  // sets wg, wg + 2, ...

  // Window byte offset of block row m = (tap m / CH, channel m % CH); rows past the
  // group's taps read its first tap (their sums are never stored). TF32: the slot of the
  // channel pair (co, co + 8) that holds it (pair8: m % 16 < 8).
  auto row_off = [&](int m) {
    const int tl = m / CH, co = m - tl * CH;
    const int slot = K16 ? co : int(pair8_slot(co));
    return (wgrad_tap_shift(P, wd, tap0 + (tl < ntaps ? tl : 0), rd0, R, C) * RS + slot) * int(sizeof(W));
  };
  // 16-bit: ldmatrix.x4.trans matrix j = lane / 8 is A's rows 8 * (j % 2) .. + 7 (of the
  // warp's 16) at positions 8 * (j / 2) .. + 7, and this lane addresses its row lane % 8
  // (a position): a0..a3 as m16n8k16's A. TF32: this lane's rows gq and gq + 8 (one pair).
  int off[NS];
#pragma unroll
  for (int s = 0; s < NS; ++s) off[s] = row_off((2 * s + wg) * 64 + 16 * w4 + (K16 ? 8 * ((lane >> 3) & 1) : gq));

  // acc: the sums. 3xTF32: acc is the big x big chain of the current tile, added into sum
  // and restarted after each tile (as wgrad_tc_kernel's blk: the tensor core's truncating
  // alignment makes a chain's error grow with its length), cor the small products.
  constexpr int NC = SPLIT ? NS : 1;
  float acc[NS][NW / 2], sum[NC][NW / 2], cor[NC][NW / 2];
#pragma unroll
  for (int s = 0; s < NS; ++s)
#pragma unroll
    for (int i = 0; i < NW / 2; ++i) acc[s][i] = 0.f;
  if constexpr (SPLIT) {
#pragma unroll
    for (int s = 0; s < NS; ++s)
#pragma unroll
      for (int i = 0; i < NW / 2; ++i) sum[s][i] = cor[s][i] = 0.f;
  }

  const T* __restrict__ x = static_cast<const T*>(prm.x);
  const int64_t t_begin = split * prm.tiles_per_split;
  const int64_t t_end = min(prm.total_tiles, t_begin + prm.tiles_per_split);
  const int Td = prm.win_planes, Ho = int(P.out[1]), Wo = int(P.out[2]);
  const W* dy_g = static_cast<const W*>(prm.dyp) + (int64_t(g) * gridDim.y + chunk) * prm.slice;  // pk_v = RS
  // tiles walked one at a time (next) rather than divided out each tile
  auto next = [&](WgradTile& tp) {
    tp.m0 += BM;
    if (tp.m0 >= prm.tiles_per_plane * BM) {
      tp.m0 = 0;
      if (++tp.jd == wd[0].P) tp.jd = 0, ++tp.n;
    }
  };
  // A tile's copies: x_pieces 16-byte pieces of x tile, then win_pieces of window; thread t
  // copies pieces t, t + 256, ... x piece q: positions 2 * (q / 2 / NW) + q % 2 (in EP
  // units) of channel q / 2 % NW -- a lane pair reads one 32-byte sector, and the pieces
  // of a warp land in 16 distinct 16-byte bank groups twice. With prm.bulk, warp 0's
  // lanes copy the window a row each (C positions x RS elements, contiguous in the
  // slice-major pack) instead, completing on the buffer's mbarrier. (From thread 0 alone,
  // a loop of ~250 instructions a tile, the other warps waited for it at the tile's second
  // barrier: 15% of kb68's stall samples.)
  const int pieces = CH * int(sizeof(W)) / 16;  // a window position's
  const int win_pieces = prm.bulk ? 0 : Td * R * C * pieces, x_pieces = NW * XPR;
  const uint32_t row_bytes = uint32_t(C * RS * int(sizeof(W)));
  const int iters = (win_pieces + x_pieces + 255) / 256;
  const uint32_t c_magic = fast_div_magic(uint32_t(C)), r_magic = fast_div_magic(uint32_t(R));
  const uint32_t p_magic = fast_div_magic(uint32_t(pieces));
  auto issue_tile = [&](const WgradTile& tp, int b) {
    const int jd = tp.jd, m0 = tp.m0, jh0 = m0 / Wd;
    const int od0 = jd * wd[0].mult + wd[0].off0 + rd0 * wd[0].dstep, oh0 = jh0 * wd[1].mult + win_off_min(wd[1]);
    const int ow0 = win_off_min(wd[2]);
    const W* base = dy_g + tp.n * prm.pk_n;
    const uint32_t wdst = smem_u32(smem + b * prm.window_bytes);
    const T* xb = x + P.xl.at(tp.n, int64_t(g) * cin_g, int64_t(jd) * plane);
    const uint32_t xdst = smem_u32(xt0 + b * prm.xt_bytes);
    if (prm.bulk && threadIdx.x < 32) {  // warp 0: a copy a window row, one a lane, so no
                                         // warp waits on a serial loop
      const uint32_t bar = bars + 8 * b;
      const int ncp = Td * R;
      if (lane == 0) mbar_arrive_expect(bar, uint32_t(ncp) * row_bytes);
      __syncwarp();
      for (int rr = lane; rr < ncp; rr += 32) {
        const int td = rr / R, od = od0 + td * wd[0].dstep, oh = oh0 + rr - td * R;
        const bool ok = unsigned(od) < unsigned(P.out[0]) && unsigned(oh) < unsigned(Ho);
        bulk_copy_g2s(wdst + rr * row_bytes, ok ? base + ((int64_t(od) * Ho + oh) * Wo + ow0) * RS : prm.zrow,
                      row_bytes, bar);
      }
    }
    for (int it = 0; it < iters; ++it) {
      const int q = threadIdx.x + it * 256;
      if (q < x_pieces) {
        const int ci = (q >> 1) % NW, kc = 2 * ((q >> 1) / NW) + (q & 1), pp = kc * EP, left = plane - (m0 + pp);
        const int bytes = ci < cin_g && left > 0 ? min(left, EP) * int(sizeof(T)) : 0;
        cp_async16(xdst + (kc * NW + ci) * 16, bytes ? xb + ci * P.xl.c + m0 + pp : x, bytes);
      } else if (q - x_pieces < win_pieces) {  // the dy window: planes x R rows x C columns, zero outside dy
        const int qw = q - x_pieces, p = fast_div(qw, p_magic);
        wgrad_dy_piece(wdst, RS * int(sizeof(W)), base, int64_t(RS), p, qw - p * pieces, C, R, c_magic, r_magic,
                       od0, oh0, ow0, wd[0].dstep, P);
      }
    }
  };
  // Window byte offset of each tile position. Tiles of whole rows (BM a multiple of W, and no
  // more rows than the plane: the window has min(H, BM / W) rows' worth, see
  // wgrad_geometry) all have the same table, made once: positions past the plane's end
  // fall on window rows that exist and are copied (x is zero there, and the dy values
  // are finite). Else made each tile, positions past the end clamped to the last one.
  const bool row_tiles = BM % Wd == 0 && BM / Wd <= wd[1].P;
  auto make_pos_tab = [&](int m0) {
    const int jh0 = m0 / Wd;
    for (int p = threadIdx.x; p < BM; p += blockDim.x) {
      const int m = row_tiles ? m0 + p : min(m0 + p, plane - 1);
      pos_tab[p] = ((m / Wd - jh0) * wd[1].mult * C + (m % Wd) * wd[2].mult) * RS * int(sizeof(W));
    }
  };
  if (row_tiles) make_pos_tab(0);  // read after the first tile's barrier
  WgradTile ahead = wgrad_tile(t_begin, prm.tiles_per_plane, wd[0].P, BM);  // the next tile to copy
  for (int st = 0; st + 1 < S; ++st) {  // the first S - 1 tiles
    if (t_begin + st < t_end) issue_tile(ahead, st);
    cp_async_commit();
    next(ahead);
  }
  WgradTile tp = wgrad_tile(t_begin, prm.tiles_per_plane, wd[0].P, BM);
  int buf = 0;
  for (int64_t tile = t_begin; tile < t_end; ++tile, buf = buf + 1 == S ? 0 : buf + 1, next(tp)) {
    __syncthreads();  // the previous tile's loads and wgmmas are done with pos_tab and its buffer
    if (S == 1) issue_tile(tp, 0);
    else if (tile + S - 1 < t_end) issue_tile(ahead, buf == 0 ? S - 1 : buf - 1);
    if (S > 1) next(ahead);
    cp_async_commit();  // one group a tile, empty or not: the wait below counts groups
    if (!row_tiles) make_pos_tab(tp.m0);
    cp_async_wait(S - 1);  // this tile's copies have landed
    if (prm.bulk) mbar_wait(bars + 8 * buf, uint32_t((tile - t_begin) / S) & 1u);  // and its window rows
    if constexpr (SPLIT) {  // 3xTF32: each thread splits the x pieces it copied, small parts NW * BM floats on
      uint4* xf = reinterpret_cast<uint4*>(xt0 + buf * prm.xt_bytes);
      for (int q = threadIdx.x; q < x_pieces; q += 256) {
        const int ci = (q >> 1) % NW, kc = 2 * ((q >> 1) / NW) + (q & 1);
        uint4 big = xf[kc * NW + ci], small;
        split_tf32_4(big, small);
        xf[kc * NW + ci] = big;
        xf[x_pieces + kc * NW + ci] = small;
      }
    } else if constexpr (!K16) {
      if (prm.round_a) {  // TF32: each thread rounds the x pieces it copied (the pack rounds dy)
        float* xf = reinterpret_cast<float*>(xt0 + buf * prm.xt_bytes);
        for (int q = threadIdx.x; q < x_pieces; q += 256) {
          const int ci = (q >> 1) % NW, kc = 2 * ((q >> 1) / NW) + (q & 1);
          float4* v = reinterpret_cast<float4*>(xf + (kc * NW + ci) * 4);
          *v = round_tf32_4(*v);
        }
      }
    }
    fence_proxy_async();  // the x tile (cp.async and the rounding) visible to wgmma
    __syncthreads();

    const uint32_t win = smem_u32(smem + buf * prm.window_bytes);
    const uint32_t xt = smem_u32(xt0 + buf * prm.xt_bytes);
    // A fragments of the k-step at positions k0 .. k0 + KW - 1 (3xTF32: split into big in
    // a, small in as)
    auto load_a = [&](uint32_t (&a)[NS][4], uint32_t (&as)[NS][4], int k0) {
      if constexpr (K16) {
        const uint32_t row = win + pos_tab[k0 + (lane & 7) + 8 * (lane >> 4)];
#pragma unroll
        for (int s = 0; s < NS; ++s) ldmatrix_x4_trans(a[s], row + off[s]);
      } else {  // positions tq and tq + 4, rows gq and gq + 8 (a pair) of each set
        const unsigned char* wb = smem + buf * prm.window_bytes;
        const unsigned char *pa = wb + pos_tab[k0 + tq], *pb = wb + pos_tab[k0 + tq + 4];
#pragma unroll
        for (int s = 0; s < NS; ++s) {
          const uint2 u = *reinterpret_cast<const uint2*>(pa + off[s]);
          const uint2 v = *reinterpret_cast<const uint2*>(pb + off[s]);
          a[s][0] = u.x, a[s][1] = u.y, a[s][2] = v.x, a[s][3] = v.y;
          if constexpr (SPLIT) {
#pragma unroll
            for (int e = 0; e < 4; ++e) split_tf32(a[s][e], a[s][e], as[s][e]);
          }
        }
      }
    };
    // k-step k0's wgmmas (A from a; B = the x tile's core matrices of its positions), then
    // the next k-step's A into the other buffer once k-step k0 - KW's wgmmas (which read
    // it) are done: the loads run while k-step k0's wgmmas do.
    auto step = [&](const uint32_t (&a)[NS][4], const uint32_t (&as)[NS][4], uint32_t (&next)[NS][4],
                    uint32_t (&nexts)[NS][4], int k0) {
      const uint32_t xb = xt + (k0 / EP) * NW * 16;
      wgrad_wg_step<T, NW, NS, NC, SPLIT>(acc, cor, a, as, wg_desc(xb, NW * 16, 128),
                                      wg_desc(xb + (SPLIT ? x_pieces * 16 : 0), NW * 16, 128), my_sets);
      wg_wait<1>();
      if (k0 + KW < BM) load_a(next, nexts, k0 + KW);
    };
    if (my_sets > 0) {
      static_assert((BM / KW) % 2 == 0, "k-steps go in pairs");
      uint32_t a0[NS][4], a1[NS][4], s0[NS][4], s1[NS][4];  // s0, s1: 3xTF32 only
      load_a(a0, s0, 0);
      for (int k0 = 0; k0 < BM; k0 += 2 * KW) {
        step(a0, s0, a1, s1, k0);
        step(a1, s1, a0, s0, k0 + KW);
      }
      wg_wait<0>();  // this tile's wgmmas are done with the buffer
      if constexpr (SPLIT) {  // the tile's chain into the sum; a new chain
#pragma unroll
        for (int s = 0; s < NS; ++s) {
          wg_fence_operands(acc[s]);
#pragma unroll
          for (int i = 0; i < NW / 2; ++i) {
            sum[s][i] += acc[s][i];
            acc[s][i] = 0.f;
          }
        }
      }
    }
  }
  cp_async_wait(0);  // no copy may be in flight when the block exits

  // ---- partials of this split: ws[split][g*Cin/G + ci][co][tap] ----
  // accumulator d[4i + 2h + e] of set s holds D[row 16 * w4 + gq + 8h][column 8i + 2tq + e]
  const int64_t numel = P.Cin * P.cout_g() * P.kvol();
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    if (s >= my_sets) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = (2 * s + wg) * 64 + 16 * w4 + gq + 8 * h, tl = m / CH, co = chunk * CH + m - tl * CH;
      if (tl >= ntaps || co >= cout_g) continue;
#pragma unroll
      for (int i = 0; i < NW / 8; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int ci = 8 * i + 2 * tq + e;
          if (ci < cin_g) {
            float v;
            if constexpr (SPLIT) v = sum[s][4 * i + 2 * h + e] + cor[s][4 * i + 2 * h + e];
            else v = acc[s][4 * i + 2 * h + e];
            prm.ws[split * numel + ((int64_t(g) * cin_g + ci) * cout_g + co) * kvol + tap0 + tl] = v;
          }
        }
    }
  }
#endif
}

// ============================================================================
// Thin groups: x tiles and dy windows read in place (tensor cores)
// ============================================================================
// For Cin/G <= 8 and Cout/G <= 8 (kb72: grouped, stride 2) the kernels above pack dy (the
// largest tensor) first and give each block one chunk of 8 dy channels: kb72's grad weight
// took ~15x its memory floor. Here block (split, part, g) walks tiles split * tiles_per_split
// onwards, a tile being 8 rows x RW = 16*MW columns of one input depth plane id of one batch
// item n (grad_input.cu's thin_dgrad_kernel tiles), and for each stages
//   - the x tile, 8 rows x RW positions of 8 ci (thin_stage_window, plane id);
//   - the dy window every tap of the tile reaches, as thin_dgrad_kernel stages it but with
//     all kD planes od = id*sD - pD + rd*dD (zero where od is outside dy), so tap r's
//     window slot for position (u, j) is a fixed offset: toff(r) + u*sH*pitch + j.
// GEMM view per tap r: M = ci (8 of 16 rows used), N = co (8), K = the tile's positions,
// 8 a k-step (one row u, columns j0 .. j0 + 7); one m16n8k8 TF32 MMA per tap and k-step.
// Warp w owns taps w, w + 8, ... of the block's part (TPW at most): the A fragment (x, two
// 4-byte loads: rows 8..15 are zero) is loaded once a k-step for all of them, B (dy at the
// tap's shift, two 4-byte loads, conflict-free at any shift: channels gq < 4 of four
// consecutive slots are 64 contiguous bytes, and channels 4..7 sit in the other half, 64
// bytes past a multiple of 128 on) once a tap. The sums stay in registers across the block's
// tiles; each block writes its fp32 partial dw to ws[split] and sum_splits_kernel adds
// the splits in order (deterministic). Grad bias, where asked: the blocks of part 0 add,
// as they stage dy, the unrounded values of the box of dy each tile owns
// (thin_bias_range) into per-thread fp32 sums of 8 channels; a warp reduces them by
// shuffles (lane l: channel (l >> 2) & 7) into an fp64 sum across tiles, and the 8 warps'
// sums go, in warp order, to bias_ws[channel][split], added in order by
// grad_bias_parts_kernel (deterministic). A dy element's load serves both: measured on
// kb72, a separate read of the box from global memory cost more than the pass it saved.
// 3xTF32 needs two accumulator sets a tap (acc, cor)
// and runs taps outer in a row (below): fewer taps a warp (kThinWgradTpwSplit), the taps
// split over `parts` blocks that stage the same tiles.
// Precision as the other thin kernels: TF32 mode rounds x and dy to nearest-even as they
// are staged; fp32 strict splits each fragment (big*big summed over <= 4 k-steps of a row
// on the tensor core, then added into a register sum). fp32 only
// (grad_weight_thin says why); 16-bit values would be exact in TF32 if it took them.
constexpr int kThinWgradTpw = 16;       // taps a warp, one accumulator set
constexpr int kThinWgradTpwSplit = 8;   // taps a warp, 3xTF32 (CT3D_THIN_WGRAD_TPW=6: 6, A/B)

struct ThinWgradParams {
  const void* x;
  const void* dy;
  float* ws;                 // [splits][numel(dw)]
  Problem P;
  ThinBackPlan pl;           // tiles, the dy window, col_off (thin_back_plan, as thin_dgrad_kernel)
  int64_t total_tiles, tiles_per_split;
  int taps_per_part;         // taps a block: 8 * TPW, the last part fewer
  ThinWindow xwin;           // the x tile: 8 rows x RW columns, in order
  double* bias_ws;           // [Cout][splits]: grad bias parts; null where not asked
};

// Grad bias in thin_wgrad_kernel: along one dimension, the dy indices that x indices [i0,
// i1) own: from i0*s - p (0 where i0 = 0) to i1*s - p (the end of dy where i1 = in),
// clamped to [0, out). The bounds grow with i and the tiles meet end to end, so the tiles'
// boxes partition dy, including the dy elements that no tap of any x reaches (padding,
// output_padding), which the tiles' windows would miss or count twice.
__host__ __device__ __forceinline__ int2 thin_bias_range(int i0, int i1, int64_t in, int64_t s, int64_t p, int64_t out) {
  const int64_t lo = i0 == 0 ? 0 : std::min(std::max(i0 * s - p, int64_t(0)), out);
  const int64_t hi = i1 >= in ? out : std::min(std::max(i1 * s - p, int64_t(0)), out);
  return make_int2(int(lo), int(hi));
}

// Whether every tile's window holds the dy box it owns, so the staging can sum grad bias:
// along depth each owned od is one of the tile's planes id*sD - pD + kd*dD (kd < kD), along
// h and w the owned range lies within the window's rows (columns). Not so where the stride
// passes the dilated kernel (dy the taps skip) or output_padding passes what the last
// tile's window reaches; grad bias then takes its own pass.
inline bool thin_bias_covered(const Problem& P, const ThinBackPlan& pl, int rw) {
  for (int64_t id = 0; id < P.in[0]; ++id) {
    const int2 b = thin_bias_range(int(id), int(id) + 1, P.in[0], P.s[0], P.p[0], P.out[0]);
    for (int64_t od = b.x; od < b.y; ++od) {
      const int64_t t = od - (id * P.s[0] - P.p[0]);
      if (t < 0 || t % P.d[0] != 0 || t / P.d[0] >= P.k[0]) return false;
    }
  }
  auto fits = [&](int64_t in, int64_t tiles, int64_t len, int64_t s, int64_t p, int64_t out, int64_t span) {
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t i0 = t * len, start = i0 * s - p;
      const int2 b = thin_bias_range(int(i0), int(std::min(i0 + len, in)), in, s, p, out);
      if (b.y > b.x && (b.x < start || b.y > start + span)) return false;
    }
    return true;
  };
  return fits(P.in[1], pl.tiles_h, 8, P.s[1], P.p[1], P.out[1], pl.win.rows) &&
         fits(P.in[2], pl.tiles_w, rw, P.s[2], P.p[2], P.out[2], pl.win.cols);
}

template <typename T, int MW, int TPW, bool SPLIT>
__global__ void __launch_bounds__(256, 2) thin_wgrad_kernel(const ThinWgradParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int s_od[kThinMaxTd], s_id[1];
  constexpr int RW = 16 * MW;
  constexpr bool kRound = std::is_same<T, float>::value && !SPLIT;  // TF32 mode
  const Problem& P = prm.P;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
  const int split = blockIdx.x, part = blockIdx.y, g = blockIdx.z;
  const int cin_g = int(P.cin_g()), cout_g = int(P.cout_g()), kvol = int(P.kvol());
  const int k1 = int(P.k[1]), k2 = int(P.k[2]), pitch = prm.pl.win.pitch;
  unsigned char* win = smem;  // the dy window, then the x tile
  unsigned char* xt = smem + 2 * prm.pl.win.half;
  // Word gq (this lane's channel) of slot 0 of the dy window (B) and of the x tile (A).
  const uint32_t* ww = reinterpret_cast<const uint32_t*>(win + thin_byte(prm.pl.win, 0, gq));
  const uint32_t* xw = reinterpret_cast<const uint32_t*>(xt + thin_byte(prm.xwin, 0, gq));

  // This warp's taps: tap0 + warp + 8 i, i < TPW; s_toff: the tap's window slot at (0, 0).
  // Grad bias: the blocks of part 0 sum the dy their tiles own (thin_bias_range) as they
  // stage it; s_bacc[w][c]: warp w's sum of channel c over the block's tiles (fp64, one
  // writing lane each; in shared memory, as the registers are all taken).
  const bool bias_blk = prm.bias_ws != nullptr && part == 0;
  __shared__ double s_bacc[8][8];
  __shared__ ThinBiasBox s_box;
  if (tq == 0) s_bacc[warp][gq] = 0.0;
  const int tap0 = part * prm.taps_per_part;
  const int tap_end = min(kvol, tap0 + prm.taps_per_part);
  // toff lives in shared memory, read once a tile after staging: in registers it took 16
  // of the 128 that the staging (and grad bias's sums) need beside the accumulators.
  __shared__ int s_toff[8][TPW];
  if (lane < TPW) {
    const int tap = min(tap0 + warp + 8 * lane, kvol - 1);
    const int rw = tap % k2, rh = (tap / k2) % k1, rd = tap / (k1 * k2);
    s_toff[warp][lane] = (rd * prm.pl.win.rows + rh * int(P.d[1])) * pitch + prm.pl.col_off[rw];
  }
  float acc[TPW][4], cor[TPW][4];  // cor: 3xTF32's big*small + small*big
#pragma unroll
  for (int i = 0; i < TPW; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = cor[i][e] = 0.f;

  const int64_t t_begin = split * prm.tiles_per_split;
  const int64_t t_end = min(prm.total_tiles, t_begin + prm.tiles_per_split);
  for (int64_t t = t_begin; t < t_end; ++t) {
    // ---- tile -> (n, id, rows ih0.., columns iw0..) ----
    int64_t b = t;
    const int tw_i = int(b % prm.pl.tiles_w); b /= prm.pl.tiles_w;
    const int th_i = int(b % prm.pl.tiles_h); b /= prm.pl.tiles_h;
    const int id = int(b % P.in[0]);
    const int64_t n = b / P.in[0];
    const int ih0 = th_i * 8, iw0 = tw_i * RW;
    __syncthreads();  // the previous tile's window and x tile have been read
    if (tid < int(P.k[0])) s_od[tid] = id * int(P.s[0]) - int(P.p[0]) + tid * int(P.d[0]);
    if (tid == 0) s_id[0] = id;
    if (tid == 32) {
      // ---- grad bias: the box of dy this tile owns (thin_bias_range) as window planes (bit
      // kd), rows and columns; the staging sums it from the values it loads anyway. In
      // shared memory: beside the accumulators its 3 registers spilled. ----
      ThinBiasBox box{};
      if (bias_blk) {
        const int2 bd = thin_bias_range(id, id + 1, P.in[0], P.s[0], P.p[0], P.out[0]);
        const int2 bh = thin_bias_range(ih0, ih0 + 8, P.in[1], P.s[1], P.p[1], P.out[1]);
        const int2 bw = thin_bias_range(iw0, iw0 + RW, P.in[2], P.s[2], P.p[2], P.out[2]);
        for (int kd = 0; kd < int(P.k[0]); ++kd) {
          const int od = id * int(P.s[0]) - int(P.p[0]) + kd * int(P.d[0]);
          if (od >= bd.x && od < bd.y) box.planes |= 1u << kd;
        }
        // >= 0 where the box is not empty (thin_bias_covered)
        const int r0 = bh.x - (ih0 * int(P.s[1]) - int(P.p[1])), c0 = bw.x - (iw0 * int(P.s[2]) - int(P.p[2]));
        box.rows = bh.y > bh.x ? uint32_t(r0) | uint32_t(bh.y - bh.x) << 16 : 0u;
        box.cols = bw.y > bw.x ? uint32_t(c0) | uint32_t(bw.y - bw.x) << 16 : 0u;
      }
      s_box = box;
    }
    __syncthreads();
    const T* dyg = static_cast<const T*>(prm.dy) + n * P.yl.n + int64_t(g) * cout_g * P.yl.c;
    const int wr0 = ih0 * int(P.s[1]) - int(P.p[1]), wc0 = iw0 * int(P.s[2]) - int(P.p[2]);
    if (!bias_blk) {
      thin_stage_window<T, kRound>(win, prm.pl.win, dyg, uint32_t(P.yl.c), uint32_t(P.yl.v), cout_g, s_od,
                                   int(P.k[0]), wr0, wc0, int(P.out[0]), int(P.out[1]), int(P.out[2]));
    } else {
      // With grad bias the staging takes one position at a time where TF32's 16 taps a warp
      // hold 64 accumulators: two at a time, the 8 sums (bsum) spilled 8 bytes.
      constexpr int kBiasBatch = TPW > 8 ? 1 : kThinBatch;
      float bsum[8];  // this thread's sums of the 8 channels over the box
#pragma unroll
      for (int c = 0; c < 8; ++c) bsum[c] = 0.f;
      thin_stage_window<T, kRound, kBiasBatch, true>(win, prm.pl.win, dyg, uint32_t(P.yl.c), uint32_t(P.yl.v),
                                                     cout_g, s_od, int(P.k[0]), wr0, wc0, int(P.out[0]),
                                                     int(P.out[1]), int(P.out[2]), s_box, bsum);
      // The warp's 8 channel sums, halved by lane bit 16, 8, 4 (each lane keeps the half its
      // bit picks and sends the other), then summed over lane bits 2, 1: lane l ends with
      // the warp's sum of channel (l >> 2) & 7.
#pragma unroll
      for (int m = 16, h = 4; m >= 4; m >>= 1, h >>= 1) {
        const bool hi = (lane & m) != 0;
#pragma unroll
        for (int c = 0; c < h; ++c) {
          const float keep = hi ? bsum[c + h] : bsum[c], send = hi ? bsum[c] : bsum[c + h];
          bsum[c] = keep + __shfl_xor_sync(0xffffffffu, send, m);
        }
      }
      float s = bsum[0];
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      if (tq == 0) s_bacc[warp][gq] += double(s);
    }
    thin_stage_window<T, kRound>(xt, prm.xwin, static_cast<const T*>(prm.x) + n * P.xl.n + int64_t(g) * cin_g * P.xl.c,
                                 uint32_t(P.xl.c), uint32_t(P.xl.v), cin_g, s_id, 1,
                                 ih0, iw0, int(P.in[0]), int(P.in[1]), int(P.in[2]));
    __syncthreads();

    // ---- MMAs: every k-step (row u, columns j0 .. j0 + 7) for this warp's taps ----
    // A[m = ci][k = position] = x tile: a0 = (gq, tq), a2 = (gq, tq + 4); rows 8..15 zero.
    // B[k = position][n = co] = dy window at the tap's slot: b0 = (tq, gq), b1 = (tq + 4, gq).
    for (int u = 0; u < 8; ++u) {
      if (ih0 + u >= int(P.in[1])) break;  // x rows past the plane are zero: nothing to add
      const int urow = u * int(P.s[1]) * pitch;
      if constexpr (SPLIT) {
        // 3xTF32, taps outer: KC k-steps' A fragments split once (big ab, small as), then
        // per tap big*big summed over those k-steps in a temporary t (KC <= 4 chained MMAs)
        // and added into acc, big*small + small*big into cor. One temporary instead of a
        // big*big set a tap is what lets a warp hold TPW = 8 taps; KC = 2 past MW = 2 keeps
        // the fragments in registers (all 2*MW of them spilled at MW = 3, 4).
        constexpr int KC = MW <= 2 ? 2 * MW : 2;
#pragma unroll
        for (int c0 = 0; c0 < 2 * MW; c0 += KC) {
          uint32_t ab[KC][2], as[KC][2];
#pragma unroll
          for (int kk = 0; kk < KC; ++kk) {
            const int xs = u * RW + (c0 + kk) * 8 + tq;
            split_tf32(xw[xs * 4], ab[kk][0], as[kk][0]);
            split_tf32(xw[xs * 4 + 16], ab[kk][1], as[kk][1]);
          }
#pragma unroll
          for (int i = 0; i < TPW; ++i) {
            if (tap0 + warp + 8 * i >= tap_end) break;  // uniform in the warp
            float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int kk = 0; kk < KC; ++kk) {
              const int p0 = s_toff[warp][i] + urow + (c0 + kk) * 8 + tq;
              uint32_t bb0, bs0, bb1, bs1;
              split_tf32(ww[p0 * 4], bb0, bs0);
              split_tf32(ww[p0 * 4 + 16], bb1, bs1);
              const uint32_t fb[4] = {ab[kk][0], 0u, ab[kk][1], 0u}, fs[4] = {as[kk][0], 0u, as[kk][1], 0u};
              mma_tf32(t, fb, bb0, bb1);
              mma_tf32(cor[i], fs, bb0, bb1);
              mma_tf32(cor[i], fb, bs0, bs1);
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][e] += t[e];
          }
        }
      } else {
#pragma unroll
        for (int ks = 0; ks < 2 * MW; ++ks) {
          // Slots xs and xs + 4 (16 words on); channel gq of each (xw, ww: 4 words a slot).
          const int xs = u * RW + ks * 8 + tq;
          uint32_t a[4];
          a[0] = xw[xs * 4];
          a[2] = xw[xs * 4 + 16];
          a[1] = a[3] = 0u;
#pragma unroll
          for (int i = 0; i < TPW; ++i) {
            if (tap0 + warp + 8 * i >= tap_end) break;  // uniform in the warp
            const int p0 = s_toff[warp][i] + urow + ks * 8 + tq;
            mma_tf32(acc[i], a, ww[p0 * 4], ww[p0 * 4 + 16]);
          }
        }
      }
    }
  }

  // ---- epilogue: this block's partial dw, rows ci = gq, columns co = 2 tq, 2 tq + 1 ----
  const int64_t numel = P.Cin * P.cout_g() * P.kvol();
  float* wsp = prm.ws + split * numel + (int64_t(g) * cin_g + gq) * cout_g * kvol;
#pragma unroll
  for (int i = 0; i < TPW; ++i) {
    const int tap = tap0 + warp + 8 * i;
    if (tap >= tap_end || gq >= cin_g) continue;
    const float v0 = SPLIT ? acc[i][0] + cor[i][0] : acc[i][0];
    const float v1 = SPLIT ? acc[i][1] + cor[i][1] : acc[i][1];
    if (2 * tq < cout_g) wsp[int64_t(2 * tq) * kvol + tap] = v0;
    if (2 * tq + 1 < cout_g) wsp[int64_t(2 * tq + 1) * kvol + tap] = v1;
  }
  if (bias_blk) {  // the 8 warps' sums of each channel, added in warp order
    __syncthreads();
    if (tid < cout_g) {
      double b = 0.0;
      for (int w = 0; w < 8; ++w) b += s_bacc[w][tid];
      prm.bias_ws[(int64_t(g) * cout_g + tid) * gridDim.x + split] = b;
    }
  }
#endif
}

// ============================================================================
// Reduction kernels (fixed order: deterministic)
// ============================================================================
template <typename T>
__global__ void sum_splits_kernel(const float* __restrict__ ws, T* __restrict__ dw,
                                  int64_t numel, int splits) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < numel;
       j += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int sp = 0; sp < splits; ++sp) acc += ws[sp * numel + j];
    dw[j] = T(acc);
  }
}

// db[c] = sum over n and voxels of dy[n, c, :], in two steps with a fixed order: block
// (c, s) sums part s of channel c's N * vol values, the positions [s * chunk, (s + 1) *
// chunk) of its flattened (n, voxel) range, into part[c * parts + s] (fp64), and
// grad_bias_parts_kernel adds a channel's parts in order (one block a channel left most
// of the card idle: kb72's 32 channels read 113 MB on 32 SMs).
template <typename T>
__global__ void __launch_bounds__(256) grad_bias_kernel(const T* __restrict__ dy, double* __restrict__ part,
                                                        int64_t N, Layout yl, int64_t vol, int64_t chunk) {
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const int64_t k0 = s * chunk, k1 = min(N * vol, k0 + chunk);
  double acc = 0.0;
  for (int64_t n = k0 / vol; n < N && n * vol < k1; ++n) {
    const T* row = dy + yl.at(n, c, 0);
    const int64_t v_end = min(vol, k1 - n * vol);
    for (int64_t v = max(int64_t(0), k0 - n * vol) + threadIdx.x; v < v_end; v += blockDim.x)
      acc += double(row[v * yl.v]);
  }
  const double sum = block_sum_256(acc);
  if (threadIdx.x == 0) part[c * gridDim.y + s] = sum;
}

template <typename T>
__global__ void grad_bias_parts_kernel(const double* __restrict__ part, T* __restrict__ db, int64_t C, int parts) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  double acc = 0.0;
  for (int s = 0; s < parts; ++s) acc += part[c * parts + s];
  db[c] = cast_out<T>(acc);
}

// ============================================================================
// Launchers
// ============================================================================
// What both tensor-core launchers work out the same way: the tap groups (see
// WgradTcParams) for blocks of at most `cap` taps, the window (rows and columns: the most
// a tile of bm positions needs) and whether x tiles can come by cp.async.
struct WgradGeometry {
  int64_t bm, tap_groups, sub_groups, taps_per_group, win_planes, rows, cols;
  bool x_async;  // positions contiguous and every 16-byte piece of a channel row aligned
  void fill(WgradTcParams& prm, const Problem& P) const {
    prm.tiles_per_plane = int((P.in[1] * P.in[2] + bm - 1) / bm);
    prm.total_tiles = P.N * P.in[0] * prm.tiles_per_plane;
    prm.tap_groups = int(tap_groups);
    prm.sub_groups = int(sub_groups);
    prm.taps_per_group = int(taps_per_group);
    prm.win_planes = int(win_planes);
    prm.R = int(rows);
    prm.C = int(cols);
  }
};
inline WgradGeometry wgrad_geometry(const Problem& P, const at::Tensor& x, int64_t bm, int64_t cap, int64_t elem) {
  WgradGeometry geo{bm, 0, 1, 0, 1, 0, 0, false};
  WinDim wd[3];
  win_dims(P, kJobGradInput, 0, wd);
  // rows a tile reaches: bm / W when tiles are whole rows, else one more than they span
  const int64_t trows = bm % wd[2].P == 0 ? bm / wd[2].P : (bm + wd[2].P - 1) / wd[2].P + 1;
  geo.rows = (std::min<int64_t>(wd[1].P, trows) - 1) * wd[1].mult + win_span(wd[1]) + 1;
  geo.cols = int64_t(wd[2].P - 1) * wd[2].mult + win_span(wd[2]) + 1;
  // taps split evenly over the fewest blocks that hold them: whole planes where a plane's
  // taps fit in a block, as many as fit and divide kD (equal groups); else parts of planes
  const int64_t ptaps = P.k[1] * P.k[2];
  if (ptaps <= cap) {
    geo.win_planes = std::min<int64_t>(P.k[0], cap / ptaps);
    while (P.k[0] % geo.win_planes != 0) --geo.win_planes;
    geo.tap_groups = P.k[0] / geo.win_planes;
    geo.taps_per_group = geo.win_planes * ptaps;
  } else {
    geo.sub_groups = (ptaps + cap - 1) / cap;
    geo.taps_per_group = (ptaps + geo.sub_groups - 1) / geo.sub_groups;
    geo.tap_groups = P.k[0] * geo.sub_groups;
  }
  const int64_t ep = 16 / elem;
  geo.x_async = P.xl.v == 1 && P.xl.c % ep == 0 && P.xl.n % ep == 0 && (P.in[1] * P.in[2]) % ep == 0 &&
                reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  return geo;
}

using WgradKernel = void (*)(WgradTcParams);
using WgradThinKernel = void (*)(ThinWgradParams);
template <typename T> void grad_bias(const at::Tensor& dy, at::Tensor& db, const Problem& P);

template <typename T, int MT, int NT, bool SPLIT3, bool TWO>
static WgradKernel wgrad_instance() {
  return wgrad_tc_kernel<T, MT, wgrad_tpw(MT, NT, !std::is_same<T, float>::value, SPLIT3, TWO), NT, SPLIT3>;
}

template <typename T, int NT, bool SPLIT3>
static WgradKernel wgrad_kernel_mt(int mt) {
  if (mt == 1) return wgrad_instance<T, 1, NT, SPLIT3, false>();
  if (mt == 2) return wgrad_instance<T, 2, NT, SPLIT3, false>();
  if (mt == 3) return wgrad_instance<T, 3, NT, SPLIT3, false>();
  return wgrad_instance<T, 4, NT, SPLIT3, false>();
}

// The instance for mt m16 tiles of input channels, nt n8 tiles of dy channels; two: the
// two-blocks-per-SM variant (TF32, mt <= 2 only).
template <typename T>
static WgradKernel wgrad_kernel(int mt, int nt, bool split3, bool two) {
  if constexpr (std::is_same<T, float>::value) {
    if (two) return mt == 1 ? wgrad_instance<T, 1, 1, false, true>() : wgrad_instance<T, 2, 1, false, true>();
    return split3 ? wgrad_kernel_mt<T, 1, true>(mt) : wgrad_kernel_mt<T, 1, false>(mt);
  } else {
    return nt == 2 ? wgrad_kernel_mt<T, 2, false>(mt) : wgrad_kernel_mt<T, 1, false>(mt);
  }
}

// Splits of the position range: the count s (at most most) whose waves, ceil(base * s /
// slots), take the least time, time ~ waves / s, taking the smallest s within 4% of the
// best (fewer partials to add). A third wave of 8 blocks costs a third of the run.
inline int64_t wgrad_splits(int64_t base, int64_t slots, int64_t most) {
  auto cost = [&](int64_t sp) { return double((base * sp + slots - 1) / slots) / double(sp); };
  double best = cost(1);
  for (int64_t sp = 2; sp <= most; ++sp) best = std::min(best, cost(sp));
  int64_t sp = 1;
  while (cost(sp) > 1.04 * best) ++sp;
  return sp;
}

// A grad weight launch on tensor cores: the kernel and what its parameters need beyond the
// problem and the tensors.
struct WgradPlan {
  WgradKernel kernel = nullptr;
  WgradGeometry geo{};
  int64_t chunk_ch = 0;  // dy channels a block (blockIdx.y: chunks of them)
  int64_t window_bytes = 0, xt_bytes = 0, smem = 0;
  int windows = 0;
  bool wg = false;       // wgrad_wg_kernel (dy packed slice-major, RS elements a position)
  int64_t rs = 0;
  bool bulk = false;     // wgrad_wg_kernel: window rows by bulk copies
  bool one_plane = false;  // wgrad_wg_kernel: a window of one depth plane (CT3D_WGRAD_ONE_PLANE=1)
};

template <typename T, int NW>
static WgradKernel wgrad_wg_instance(bool split) {
  if constexpr (std::is_same<T, float>::value) {
    if (split) return wgrad_wg_kernel<T, NW, true>;
  }
  return wgrad_wg_kernel<T, NW, false>;
}

// Where the window of the depth planes a block's taps reach does not fit in shared memory
// beside the x tiles (stride 2 with whole-plane tiles: a 16 x 16 plane's 256 positions reach
// a 32 x 32 dy window, U-Net layers), plan a window of one plane instead (each plane's taps
// a tap group of their own) rather than leave grad weight to mma.sync. Measured (H200,
// NOTES.md 2026-12-04): unet_64_32_64 TF32 1.106 -> 0.849 ms, bf16 0.537 -> 0.501;
// unet_320_256_16 bf16 0.301 -> 0.274. CT3D_WGRAD_ONE_PLANE=0 turns it off (A/B).
inline int wgrad_one_plane_env() {
  static const int v = env_int("CT3D_WGRAD_ONE_PLANE", 1);
  return v;
}
static std::atomic<int64_t> g_wgrad_one_plane_launches{0};
int64_t wgrad_one_plane_launches() { return g_wgrad_one_plane_launches.load(); }

// wgrad_wg_kernel where it runs: a wgmma build on an sm_90 GPU, TF32, 3xTF32 or 16-bit, 17..64
// input channels a group (N = 32, 48 or 64), x tiles by cp.async, two buffers in shared
// memory. The dy channels a block (chunks of at most 64, multiples of 8; of 16 in TF32, for
// the channel pairs): the count of chunks whose blocks issue the fewest sets of 64 rows in
// all (fewer chunks on ties).
template <typename T>
bool plan_wgrad_wg(const at::Tensor& x, const Problem& P, bool tf32, int dev, const cudaDeviceProp* prop, WgradPlan& pl) {
  constexpr bool k16 = !std::is_same<T, float>::value;
  if (P.cin_g() < 17 || P.cin_g() > 64 || !wgmma_available(dev)) return false;
  const bool split = !k16 && !tf32;  // 3xTF32
  const int nw = P.cin_g() <= 32 ? 32 : P.cin_g() <= 48 ? 48 : 64;
  const int64_t rows_cap = 2 * int64_t(wgrad_wg_sets(nw, split)) * 64;  // M rows a block
  const int64_t bm = wgrad_wg_bm<T>(), optin = int64_t(prop->sharedMemPerBlockOptin);
  const int64_t cout_g = P.cout_g(), kvol = P.kvol(), ptaps = P.k[1] * P.k[2];
  int64_t best = -1;
  const int64_t q = k16 ? 8 : 16;  // chunk granule; TF32: channel pairs (co, co + 8), see the kernel
  WinDim wd[3];
  win_dims(P, kJobGradInput, 0, wd);
  // Window rows whole from dy where each row's C columns lie inside dy's width (rows
  // outside dy come from a zero row): one bulk copy a row instead of 16-byte pieces
  auto bulk_rows = [&](int64_t cols) { return win_off_min(wd[2]) >= 0 && win_off_min(wd[2]) + cols <= P.out[2]; };
  for (int64_t chunks = (cout_g + 63) / 64; chunks <= (cout_g + 63) / 64 + 3; ++chunks) {
    const int64_t ch = ((cout_g + chunks - 1) / chunks + q - 1) / q * q;
    if (ch < 8 || (chunks - 1) * ch >= cout_g) break;  // a chunk would be empty
    WgradGeometry geo = wgrad_geometry(P, x, bm, rows_cap / ch, int64_t(sizeof(T)));
    if (!geo.x_async) return false;
    // window bytes: [position][rs channels]
    const int64_t rs = ch % 16 == 8 ? ch : ch + 8;
    auto window_bytes = [&](const WgradGeometry& g) {
      return (g.win_planes * g.rows * g.cols * rs * int64_t(sizeof(T)) + 127) / 128 * 128;
    };
    int64_t wbytes = window_bytes(geo);
    const int64_t xt = int64_t(nw) * bm * int64_t(sizeof(T)) * (split ? 2 : 1);  // 3xTF32: big, small
    auto smem_for = [&](int64_t w) { return w * (wbytes + xt) + bm * 4 + w * 8; };  // + position table, mbarriers
    auto windows_fit = [&] { return smem_for(3) <= optin ? 3 : smem_for(2) <= optin ? 2 : 0; };
    int windows = windows_fit();
    bool one_plane = false;
    if (windows == 0 && wgrad_one_plane_env() != 0 && geo.sub_groups == 1 && geo.win_planes > 1) {
      geo = wgrad_geometry(P, x, bm, ptaps, int64_t(sizeof(T)));  // one plane's taps a group
      wbytes = window_bytes(geo);
      windows = windows_fit();
      one_plane = true;
    }
    if (windows == 0) continue;
    int64_t sets = 0;  // sets issued a tile position, all blocks
    for (int64_t tg = 0; tg < geo.tap_groups; ++tg) {
      const int64_t ntaps = geo.sub_groups > 1
                                ? std::min(geo.taps_per_group, ptaps - (tg % geo.sub_groups) * geo.taps_per_group)
                                : std::min(geo.taps_per_group, kvol - tg * geo.taps_per_group);
      sets += (ntaps * ch + 63) / 64;
    }
    sets *= chunks;
    if (best >= 0 && sets >= best) continue;
    best = sets;
    pl.geo = geo;
    pl.chunk_ch = ch;
    pl.rs = rs;
    pl.window_bytes = wbytes;
    pl.xt_bytes = xt;
    pl.windows = windows;
    pl.smem = smem_for(windows);
    pl.one_plane = one_plane;
  }
  if (best < 0) return false;
  pl.wg = true;
  pl.bulk = bulk_rows(pl.geo.cols);
  pl.kernel = nw == 32   ? wgrad_wg_instance<T, 32>(split)
              : nw == 48 ? wgrad_wg_instance<T, 48>(split)
                         : wgrad_wg_instance<T, 64>(split);
  return true;
}

// wgrad_tc_kernel (mma.sync) where it fits: sm >= 80, Cin/G <= 64, the buffers in shared
// memory.
template <typename T>
bool plan_wgrad_mma(const at::Tensor& x, const Problem& P, bool tf32, const cudaDeviceProp* prop, WgradPlan& pl) {
  if (prop->major < 8 || P.cin_g() > 64) return false;
  constexpr bool k16 = !std::is_same<T, float>::value;
  const int mt = int((P.cin_g() + 15) / 16);
  const bool split3 = !k16 && !tf32;
  const int nt = k16 && P.cout_g() > 8 ? 2 : 1;  // dy channels a block: 8 * nt
  const bool two = !k16 && !split3 && mt <= 2;  // two blocks per SM (see wgrad_tpw)
  const int tpw = wgrad_tpw(mt, nt, k16, split3, two);
  pl.geo = wgrad_geometry(P, x, kWgBM, 8 * int64_t(tpw), int64_t(sizeof(T)));
  using W = typename WinElem<T>::type;  // dy window element (see the kernel)
  pl.window_bytes = (pl.geo.win_planes * pl.geo.rows * pl.geo.cols * wgrad_rs(k16, nt) * int64_t(sizeof(W)) + 15) / 16 * 16;
  pl.xt_bytes = int64_t(mt) * 16 * (k16 ? kWgXStride16 * int64_t(sizeof(W)) : kWgXStride * 4);
  auto smem_for = [&](int64_t windows) {
    return windows * pl.window_bytes + (pl.geo.x_async ? windows : 1) * pl.xt_bytes + kWgBM * 4;
  };
  // Buffers: three where they fit beside the blocks per SM we aim for (two for TF32 with
  // mt <= 2), else two, else one.
  const int64_t optin = int64_t(prop->sharedMemPerBlockOptin);
  const int64_t per_block = two ? std::min<int64_t>(optin, int64_t(prop->sharedMemPerMultiprocessor) / 2 - 1024) : optin;
  pl.windows = smem_for(3) <= per_block ? 3 : smem_for(2) <= optin ? 2 : 1;
  pl.smem = smem_for(pl.windows);
  if (pl.smem > optin) return false;
  pl.chunk_ch = 8 * nt;
  pl.kernel = wgrad_kernel<T>(mt, nt, split3, two);
  return true;
}

// Thin groups (thin_wgrad_kernel); false where it does not apply: Cin/G or Cout/G over 8, a
// GPU older than sm_80, or no tile whose window fits (thin_back_plan, window_tc.cuh).
// CT3D_THIN_WGRAD=0 turns it off (A/B timing). Grad bias, where asked, in the same kernel
// where every tile's window holds the dy it owns (thin_bias_covered; the blocks of part 0
// sum it while staging), then its parts in order (grad_bias_parts_kernel); else its own pass.
static bool thin_wgrad_enabled() {
  static const int v = env_int("CT3D_THIN_WGRAD", 1);
  return v != 0;
}

// CT3D_THIN_WGRAD_BIAS=0: grad bias by grad_bias's own pass instead (A/B timing, debugging).
static bool thin_wgrad_bias_enabled() {
  static const int v = env_int("CT3D_THIN_WGRAD_BIAS", 1);
  return v != 0;
}

static std::atomic<int64_t> g_thin_wgrad_launches{0};
int64_t thin_wgrad_launches() { return g_thin_wgrad_launches.load(); }

template <typename T, int MW, int TPW, bool SPLIT>
static WgradThinKernel thin_wgrad_instance() { return thin_wgrad_kernel<T, MW, TPW, SPLIT>; }

// 3xTF32's taps a warp: kThinWgradTpwSplit, or 6 under CT3D_THIN_WGRAD_TPW=6 (A/B timing).
static int thin_wgrad_tpw(bool split) {
  static const int v = env_int("CT3D_THIN_WGRAD_TPW", kThinWgradTpwSplit);
  return split ? (v == 6 ? 6 : kThinWgradTpwSplit) : kThinWgradTpw;
}

template <typename T, int TPW, bool SPLIT>
static WgradThinKernel thin_wgrad_pick_mw(int mw) {
  if (mw == 1) return thin_wgrad_instance<T, 1, TPW, SPLIT>();
  if (mw == 2) return thin_wgrad_instance<T, 2, TPW, SPLIT>();
  if (mw == 3) return thin_wgrad_instance<T, 3, TPW, SPLIT>();
  return thin_wgrad_instance<T, 4, TPW, SPLIT>();
}

template <typename T>
static WgradThinKernel thin_wgrad_pick(bool split, int tpw, int mw) {
  if (!split) return thin_wgrad_pick_mw<T, kThinWgradTpw, false>(mw);
  if (tpw == 6) return thin_wgrad_pick_mw<T, 6, true>(mw);
  return thin_wgrad_pick_mw<T, kThinWgradTpwSplit, true>(mw);
}

// fp32 only (TF32 and 3xTF32): in fp16/bf16 the packing kernels ran kb72 faster (bf16 grad
// weight 0.25 ms against 0.42 here, H200: this kernel is issue-bound, NOTES.md).
static bool grad_weight_thin(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw, at::Tensor* db,
                             const Problem& P, bool tf32) {
  using T = float;
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dy.get_device());
  if (!thin_wgrad_enabled() || prop->major < 8 || P.cin_g() > 8 || P.cout_g() > 8 || P.G > 65535)
    return false;
  const bool split = !tf32;
  ThinWgradParams prm{};
  // + the x tile: 8 x 16*mw positions, 32 bytes each, and its halves' 64-byte pads
  if (!thin_back_plan(P, prop, 128, 8 * 16 * 32, prm.pl)) return false;
  const int mw = prm.pl.mw;
  const int64_t smem = prm.pl.smem;
  prm.P = P;
  prm.xwin = make_thin_window(8, 16 * mw, 1, 1);
  prm.total_tiles = P.N * P.in[0] * prm.pl.tiles_h * prm.pl.tiles_w;
  const int tpw = thin_wgrad_tpw(split);
  prm.taps_per_part = 8 * tpw;
  const int64_t parts = (P.kvol() + prm.taps_per_part - 1) / prm.taps_per_part;
  if (parts > 65535) return false;

  const WgradThinKernel kernel = thin_wgrad_pick<T>(split, tpw, mw);
  set_smem_limit(kernel, smem);
  const int64_t resident = int64_t(std::max(blocks_per_sm(kernel, 256, smem), 1)) * prop->multiProcessorCount;
  int64_t splits = std::min<int64_t>({kMaxSplits, prm.total_tiles, std::max<int64_t>(1, resident / (parts * P.G))});
  prm.tiles_per_split = (prm.total_tiles + splits - 1) / splits;
  splits = (prm.total_tiles + prm.tiles_per_split - 1) / prm.tiles_per_split;

  auto stream = at::cuda::getCurrentCUDAStream();
  auto ws = at::empty({splits, dw.numel()}, dy.options().dtype(at::kFloat));
  if (poison_enabled()) ws.fill_(std::numeric_limits<float>::quiet_NaN());
  at::Tensor bias_ws;
  const bool fuse_bias = db != nullptr && thin_wgrad_bias_enabled() && thin_bias_covered(P, prm.pl, 16 * mw);
  if (fuse_bias) {
    bias_ws = at::empty({P.Cout * splits}, dy.options().dtype(at::kDouble));
    if (poison_enabled()) bias_ws.fill_(std::numeric_limits<double>::quiet_NaN());
    prm.bias_ws = bias_ws.data_ptr<double>();
  }
  prm.x = x.data_ptr();
  prm.dy = dy.data_ptr();
  prm.ws = ws.data_ptr<float>();
  kernel<<<dim3(unsigned(splits), unsigned(parts), unsigned(P.G)), 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ++g_thin_wgrad_launches;
  const int64_t blocks = std::min<int64_t>((dw.numel() + 255) / 256, 65535);
  sum_splits_kernel<T><<<blocks, 256, 0, stream>>>(ws.data_ptr<float>(), dw.data_ptr<T>(), dw.numel(), int(splits));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (fuse_bias) {
    grad_bias_parts_kernel<T><<<unsigned((P.Cout + 255) / 256), 256, 0, stream>>>(
        prm.bias_ws, db->data_ptr<T>(), P.Cout, int(splits));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (db != nullptr) {
    grad_bias<T>(dy, *db, P);
  }
  return true;
}

// More than 64 input channels a group: the tensor-core kernels take at most 64 (N of a
// wgmma, or four m16 tiles), so a group's channels run as nb equal blocks of at most 64, each
// block its own launch of the same kernel on a sub-problem of one group (Cin = the block's
// channels, Cout = Cout/G): x from the block's first channel, dy from the group's part of
// the one dy pack, partials into the block's rows of dw (contiguous: dw is [Cin][Cout/G][kvol]).
// dw[ci] depends on x[ci] alone, so the blocks are independent; the result is the same
// function, computed by the kernels the tests run at Cin/G <= 64. CT3D_WGRAD_CIN_BLOCKS=0
// restores the FFMA fallback there (A/B timing). Read once.
inline int wgrad_cin_blocks_env() {
  static const int v = env_int("CT3D_WGRAD_CIN_BLOCKS", 1);
  return v;
}
static std::atomic<int64_t> g_wgrad_cin_block_launches{0};
int64_t wgrad_cin_block_launches() { return g_wgrad_cin_block_launches.load(); }

// Tensor cores; false (launching nothing) where no kernel fits (see the plans). algo:
// kTcMma takes mma.sync, kTcWgmma wgmma wherever it runs, the others wgmma where it runs.
// With db (not null), grad bias comes from the dy pack's channel sums.
template <typename T>
bool grad_weight_tc(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw, at::Tensor* db,
                    const Problem& P, bool tf32, int64_t algo) {
  const int dev = dy.get_device();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  if (dw.numel() == 0 || P.N * P.in_vol() == 0 || P.N > 65535) return false;
  if constexpr (std::is_same<T, float>::value) {
    if (algo != kTcMma && algo != kTcWgmma && grad_weight_thin(dy, x, dw, db, P, tf32)) return true;
  }
  constexpr bool k16 = !std::is_same<T, float>::value;
  // ---- input-channel blocks (see above): the problem each launch sees ----
  const int64_t cin_g = P.cin_g(), cout_g = P.cout_g(), kvol = P.kvol();
  const int64_t nb = (cin_g + 63) / 64, cb = (cin_g + nb - 1) / nb;
  if (nb > 1 && wgrad_cin_blocks_env() == 0) return false;
  Problem Pb = P;
  if (nb > 1) {
    Pb.G = 1;
    Pb.Cin = cb;
    Pb.Cout = cout_g;
  }
  WgradPlan pl;
  const bool planned = (algo != kTcMma && plan_wgrad_wg<T>(x, Pb, tf32, dev, prop, pl)) ||
                       plan_wgrad_mma<T>(x, Pb, tf32, prop, pl);
  if (!planned) return false;
  set_smem_limit(pl.kernel, pl.smem);
  const int per_sm = blocks_per_sm(pl.kernel, 256, pl.smem);
  auto stream = at::cuda::getCurrentCUDAStream();

  // dy packed channels-innermost in its own type (fp32 TF32: rounded to nearest-even),
  // zero-padded to whole chunks, so the window copies are 16-byte cp.async pieces
  // (wgmma: slice-major, each (group, chunk) slice [N][vol][RS], so a window row is contiguous)
  // One pack of all G groups, whatever the input-channel blocks.
  const int64_t chunks = (cout_g + pl.chunk_ch - 1) / pl.chunk_ch, out_vol = P.out_vol();
  const int64_t cg_pad = pl.wg ? pl.rs : chunks * pl.chunk_ch, gc = P.G * (pl.wg ? chunks : 1) * cg_pad;
  const at::Tensor dyp =
      pack_src<T, T>(dy, P.yl, P.N, out_vol, P.G, cout_g, cg_pad, !k16 && tf32, stream, db,
                     pl.wg ? PackSlices{chunks, pl.chunk_ch, true, !k16} : PackSlices{1, 0, false});
  at::Tensor zrow;
  if (pl.bulk) zrow = at::zeros({pl.geo.cols * pl.rs}, dy.options());

  WgradTcParams prm{};
  prm.pk_n = out_vol * gc;
  prm.pk_v = gc;
  prm.cg_pad = cg_pad;
  prm.slice = out_vol * cg_pad;
  prm.bulk = pl.bulk;
  prm.zrow = pl.bulk ? zrow.data_ptr() : nullptr;
  prm.P = Pb;
  pl.geo.fill(prm, Pb);
  prm.window_bytes = int(pl.window_bytes);
  prm.windows = pl.windows;
  prm.x_async = pl.geo.x_async;
  prm.round_a = !k16 && tf32;
  prm.ch = int(pl.chunk_ch);
  prm.rs = int(pl.rs);
  prm.xt_bytes = int(pl.xt_bytes);
  const int64_t base = chunks * Pb.G * prm.tap_groups;
  int64_t splits = wgrad_splits(base, int64_t(std::max(per_sm, 1)) * prop->multiProcessorCount,
                                std::min<int64_t>(prm.total_tiles, kMaxSplits));
  prm.tiles_per_split = (prm.total_tiles + splits - 1) / splits;
  splits = (prm.total_tiles + prm.tiles_per_split - 1) / prm.tiles_per_split;
  TORCH_CHECK(chunks <= 65535 && Pb.G * prm.tap_groups <= 65535, "conv_transpose3d: grad weight grid too large");

  // Partials of one launch: [splits][numel of its dw rows] (launches on one stream reuse it;
  // the tests poison it before each).
  auto ws = at::empty({splits, Pb.Cin * cout_g * kvol}, dy.options().dtype(at::kFloat));
  prm.ws = ws.data_ptr<float>();
  const dim3 grid{unsigned(splits), unsigned(chunks), unsigned(Pb.G * prm.tap_groups)};
  const int64_t launches = nb > 1 ? P.G * nb : 1;
  for (int64_t j = 0; j < launches; ++j) {
    // Launch j: group g, input channels [c0, c0 + Pb.Cin) of it (all of them where nb = 1).
    const int64_t g = nb > 1 ? j / nb : 0, c0 = nb > 1 ? j % nb * cb : 0;
    if (nb > 1) prm.P.Cin = std::min(cb, cin_g - c0);
    const int64_t row0 = g * cin_g + c0, numel = prm.P.Cin * cout_g * kvol;
    prm.x = x.data_ptr<T>() + row0 * P.xl.c;
    // group g's part of the pack (the kernels add g * cg_pad, or (g * chunks + chunk) * slice)
    prm.dyp = dyp.data_ptr<T>() + (pl.wg ? g * chunks * prm.slice : g * cg_pad);
    if (poison_enabled()) ws.fill_(std::numeric_limits<float>::quiet_NaN());
    pl.kernel<<<grid, 256, pl.smem, stream>>>(prm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (pl.one_plane) ++g_wgrad_one_plane_launches;
    if (nb > 1) ++g_wgrad_cin_block_launches;
    const int64_t blocks = std::min<int64_t>((numel + 255) / 256, 65535);
    sum_splits_kernel<T><<<blocks, 256, 0, stream>>>(ws.data_ptr<float>(), dw.data_ptr<T>() + row0 * cout_g * kvol,
                                                     numel, int(splits));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return true;
}

template <typename T>
void grad_weight_tiled(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw,
                       const Problem& P, bool tf32) {
  const int64_t M = P.cin_g(), Nn = P.cout_g() * P.kvol(), K = P.N * P.in_vol();
  if (dw.numel() == 0) return;
  if (K == 0) { dw.zero_(); return; }
  // Splits: enough blocks for ~4 per SM, at least 8 K-tiles per split, capped.
  const int64_t bm = Nn <= 16 ? TileNarrow::BM : TileWide::BM;
  const int64_t bn = Nn <= 16 ? TileNarrow::BN : TileWide::BN;
  constexpr int64_t BK = TileWide::BK;
  static_assert(TileWide::BK == TileNarrow::BK, "one tile depth for the split size");
  const int64_t tiles = ((M + bm - 1) / bm) * ((Nn + bn - 1) / bn) * P.G;
  const int64_t want = (4 * int64_t(num_sms(dy.get_device())) + tiles - 1) / tiles;
  const int64_t most = std::max<int64_t>(1, K / (8 * BK));
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, most, kMaxSplits}));
  while (P.G * splits > 65535) --splits;
  int64_t chunk = (K + splits - 1) / splits;
  chunk = (chunk + BK - 1) / BK * BK;
  splits = (K + chunk - 1) / chunk;

  auto ws = at::empty({splits, dw.numel()}, dy.options().dtype(at::kFloat));
  if (poison_enabled()) ws.fill_(std::numeric_limits<float>::quiet_NaN());
  WgradGemm<T> gm{x.data_ptr<T>(), dy.data_ptr<T>(), ws.data_ptr<float>(), P, int(splits), chunk};
  auto stream = at::cuda::getCurrentCUDAStream();
  launch_igemm(gm, M, Nn, P.G * splits, tf32 && std::is_same<T, float>::value, stream);

  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((dw.numel() + threads - 1) / threads, 65535);
  sum_splits_kernel<T><<<blocks, threads, 0, stream>>>(ws.data_ptr<float>(), dw.data_ptr<T>(),
                                                       dw.numel(), int(splits));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Parts a channel: about four blocks an SM in all, at most 64, at least 64K values a part.
template <typename T>
void grad_bias(const at::Tensor& dy, at::Tensor& db, const Problem& P) {
  if (db.numel() == 0) return;
  const int64_t total = P.N * P.out_vol();
  int64_t parts = (4 * int64_t(num_sms(dy.get_device())) + P.Cout - 1) / P.Cout;
  parts = std::max<int64_t>(1, std::min<int64_t>({parts, 64, (total + 65535) / 65536}));
  const int64_t chunk = std::max<int64_t>(1, (total + parts - 1) / parts);
  parts = std::max<int64_t>(1, (total + chunk - 1) / chunk);
  TORCH_CHECK(P.Cout <= INT_MAX, "conv_transpose3d: too many output channels for grad bias");
  auto stream = at::cuda::getCurrentCUDAStream();
  auto part = at::empty({P.Cout * parts}, dy.options().dtype(at::kDouble));
  grad_bias_kernel<T><<<dim3(unsigned(P.Cout), unsigned(parts)), 256, 0, stream>>>(
      dy.data_ptr<T>(), part.data_ptr<double>(), P.N, P.yl, P.out_vol(), chunk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  grad_bias_parts_kernel<T><<<unsigned((P.Cout + 255) / 256), 256, 0, stream>>>(
      part.data_ptr<double>(), db.data_ptr<T>(), P.Cout, int(parts));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define CT3D_INSTANTIATE_WGRAD(T)                                                            \
  template void grad_weight_tiled<T>(const at::Tensor&, const at::Tensor&, at::Tensor&,      \
                                     const Problem&, bool);                                  \
  template bool grad_weight_tc<T>(const at::Tensor&, const at::Tensor&, at::Tensor&,         \
                                  at::Tensor*, const Problem&, bool, int64_t);
CT3D_INSTANTIATE_WGRAD(float)
CT3D_INSTANTIATE_WGRAD(at::Half)
CT3D_INSTANTIATE_WGRAD(at::BFloat16)
template void grad_bias<float>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<double>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::Half>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::BFloat16>(const at::Tensor&, at::Tensor&, const Problem&);

}  // namespace ct3d
