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
// Two kernels compute the split partials. grad_weight_tc (tensor cores, the default):
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
// grad_weight_tiled: common.cuh's FFMA tile, the fallback (Cin/G > 64, windows too large).
//
// grad bias: with the tensor-core grad weight, from the per-channel sums that the dy pack
// takes as it copies dy (fp64, fixed order: pack_src_kernel, pack_bias_kernel); else one
// block per output channel sums dy in a fixed order (grad_bias_kernel, fp64).
//
// Sections: the FFMA Gemm, the tensor-core kernel, reduction kernels, launchers.
#include "common.cuh"
#include "window_tc.cuh"

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
  const int ptaps = int(P.k[1] * P.k[2]);  // taps a kernel-depth plane
  int tap0, ntaps;  // the group's taps: tap0 .. tap0 + ntaps - 1
  if (prm.sub_groups > 1) {  // part sub of plane tg / sub_groups
    const int sub = tg % prm.sub_groups;
    tap0 = (tg / prm.sub_groups) * ptaps + sub * prm.taps_per_group;
    ntaps = min(prm.taps_per_group, ptaps - sub * prm.taps_per_group);
  } else {  // whole planes
    tap0 = tg * prm.taps_per_group;
    ntaps = min(prm.taps_per_group, kvol - tap0);
  }
  const int rd0 = tap0 / ptaps;  // the window's first plane
  const int Wd = wd[2].P, plane = wd[1].P * wd[2].P;
  const int cin_g = int(P.cin_g()), cout_g = int(P.cout_g());

  // Window shift (elements) of this warp's taps: block taps warp, warp + 8, ... (tap tap0 + q)
  int shw[TPW];
#pragma unroll
  for (int t = 0; t < TPW; ++t) {
    const int q = t * 8 + warp, tap = tap0 + q;
    shw[t] = 0;
    if (q < ntaps) {
      const int rw = tap % int(P.k[2]), rh = (tap / int(P.k[2])) % int(P.k[1]), rd = tap / ptaps - rd0;
      const int sh = wd[1].off0 + rh * wd[1].dstep - win_off_min(wd[1]);
      const int sw = wd[2].off0 + rw * wd[2].dstep - win_off_min(wd[2]);
      shw[t] = ((rd * R + sh) * C + sw) * RS;
    }
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
  const int Td = prm.win_planes, Ho = int(P.out[1]), Wo = int(P.out[2]);
  const W* dy_g = static_cast<const W*>(prm.dyp) + int64_t(g) * prm.cg_pad + chunk * CH;
  // tile -> batch item n, input plane jd, first position m0 of the plane
  struct TilePos { int64_t n; int jd, m0; };
  auto tile_pos = [&](int64_t tile) {
    const int64_t rest = tile / prm.tiles_per_plane;
    return TilePos{rest / wd[0].P, int(rest % wd[0].P), int(tile % prm.tiles_per_plane) * kWgBM};
  };
  // A tile's copies: (x_async) x_pieces 16-byte pieces of the x tile, then win_pieces of
  // window; thread t copies pieces t, t + 256, ... (so the x pieces a thread rounds in TF32
  // mode are the ones it copied). The row and plane of a window position come from
  // multiply-highs (fast_div: a window fits in shared memory, so p, C, R < 2^16), not
  // divisions.
  constexpr int EP = 16 / int(sizeof(T)), XPR = kWgBM / EP;  // x: elements a piece, pieces a row
  const int win_pieces = Td * R * C * PIECES, x_pieces = prm.x_async ? MT * 16 * XPR : 0;
  const int iters = (win_pieces + x_pieces + 255) / 256;
  const uint32_t c_magic = fast_div_magic(uint32_t(C)), r_magic = fast_div_magic(uint32_t(R));
  auto issue_tile = [&](const TilePos& tp, int b) {
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
        const int qw = q - x_pieces, p = qw / PIECES, pc = qw % PIECES;
        const int rr = fast_div(p, c_magic), c = p - rr * C;
        const int td = fast_div(rr, r_magic), r = rr - td * R;
        const int od = od0 + td * wd[0].dstep, oh = oh0 + r, ow = ow0 + c;
        const bool ok = unsigned(od) < unsigned(P.out[0]) && unsigned(oh) < unsigned(Ho) && unsigned(ow) < unsigned(Wo);
        const W* src = ok ? base + ((int64_t(od) * Ho + oh) * Wo + ow) * prm.pk_v + pc * (16 / int(sizeof(W))) : base;
        cp_async16(wdst + p * (RS * int(sizeof(W))) + pc * 16, src, ok ? 16 : 0);
      }
    }
  };
  for (int st = 0; st + 1 < S; ++st) {  // the first S - 1 tiles
    if (t_begin + st < t_end) issue_tile(tile_pos(t_begin + st), st);
    cp_async_commit();
  }
  int buf = 0;
  for (int64_t tile = t_begin; tile < t_end; ++tile, buf = buf + 1 == S ? 0 : buf + 1) {
    const TilePos tp = tile_pos(tile);
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

// One block per output channel: db[c] = sum over n and voxels of dy[n, c, :].
template <typename T>
__global__ void __launch_bounds__(256) grad_bias_kernel(const T* __restrict__ dy, T* __restrict__ db,
                                                        int64_t N, Layout yl, int64_t vol) {
  const int64_t c = blockIdx.x;
  double acc = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = dy + yl.at(n, c, 0);
    for (int64_t v = threadIdx.x; v < vol; v += blockDim.x) acc += double(row[v * yl.v]);
  }
  const double sum = block_sum_256(acc);
  if (threadIdx.x == 0) db[c] = cast_out<T>(sum);
}

// ============================================================================
// Launchers
// ============================================================================
using WgradKernel = void (*)(WgradTcParams);

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

// Tensor cores; false (launching nothing) where the kernel does not fit: sm < 80,
// Cin/G > 64, or a window larger than shared memory. With db (not null), grad bias comes
// from the dy pack's channel sums.
template <typename T>
bool grad_weight_tc(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw, at::Tensor* db,
                    const Problem& P, bool tf32) {
  const int dev = dy.get_device();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  if (prop->major < 8 || P.cin_g() > 64 || dw.numel() == 0 || P.N * P.in_vol() == 0) return false;
  constexpr bool k16 = !std::is_same<T, float>::value;
  const int mt = int((P.cin_g() + 15) / 16);
  const bool split3 = !k16 && !tf32;
  const int nt = k16 && P.cout_g() > 8 ? 2 : 1;  // dy channels a block: 8 * nt
  const bool two = !k16 && !split3 && mt <= 2;  // two blocks per SM (see wgrad_tpw)
  const int tpw = wgrad_tpw(mt, nt, k16, split3, two);
  WinDim wd[3];
  win_dims(P, kJobGradInput, 0, wd);
  const int64_t rows = (std::min<int64_t>(wd[1].P, (kWgBM + wd[2].P - 1) / wd[2].P + 1) - 1) * wd[1].mult +
                       win_span(wd[1]) + 1;
  const int64_t cols = int64_t(wd[2].P - 1) * wd[2].mult + win_span(wd[2]) + 1;
  using W = typename WinElem<T>::type;  // dy window element (see the kernel)
  // tap groups (see WgradTcParams): whole planes where a plane's taps fit in a block
  const int64_t ptaps = P.k[1] * P.k[2], cap = 8 * int64_t(tpw);
  int64_t tap_groups, sub_groups = 1, taps_per_group, win_planes = 1;
  if (ptaps <= cap) {
    // planes a group: the most that fit and divide kD (equal groups)
    win_planes = std::min<int64_t>(P.k[0], cap / ptaps);
    while (P.k[0] % win_planes != 0) --win_planes;
    tap_groups = P.k[0] / win_planes;
    taps_per_group = win_planes * ptaps;
  } else {
    sub_groups = (ptaps + cap - 1) / cap;
    taps_per_group = (ptaps + sub_groups - 1) / sub_groups;
    tap_groups = P.k[0] * sub_groups;
  }
  const int64_t wbytes = (win_planes * rows * cols * wgrad_rs(k16, nt) * int64_t(sizeof(W)) + 15) / 16 * 16;
  const int64_t xt_bytes = int64_t(mt) * 16 * (k16 ? kWgXStride16 * int64_t(sizeof(W)) : kWgXStride * 4);
  // x by cp.async: positions contiguous, every 16-byte piece of a channel row aligned
  const int64_t ep = 16 / int64_t(sizeof(T));
  const bool x_async = P.xl.v == 1 && P.xl.c % ep == 0 && P.xl.n % ep == 0 && (P.in[1] * P.in[2]) % ep == 0 &&
                       reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  auto smem_for = [&](int64_t windows) {
    return windows * wbytes + (x_async ? windows : 1) * xt_bytes + kWgBM * 4;
  };
  // Buffers: three where they fit beside the blocks per SM we aim for (two for TF32 with
  // mt <= 2), else two, else one.
  const int64_t optin = int64_t(prop->sharedMemPerBlockOptin);
  const int64_t per_block = two ? std::min<int64_t>(optin, int64_t(prop->sharedMemPerMultiprocessor) / 2 - 1024) : optin;
  const int windows = smem_for(3) <= per_block ? 3 : smem_for(2) <= optin ? 2 : 1;
  const int64_t smem = smem_for(windows);
  if (smem > int64_t(prop->sharedMemPerBlockOptin) || P.N > 65535) return false;
  const WgradKernel kernel = wgrad_kernel<T>(mt, nt, split3, two);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 256, smem));
  auto stream = at::cuda::getCurrentCUDAStream();

  // dy packed channels-innermost in its own type (fp32 TF32: rounded to nearest-even),
  // zero-padded to whole chunks, so the window copies are 16-byte cp.async pieces
  const int64_t chunk_ch = 8 * nt, chunks = (P.cout_g() + chunk_ch - 1) / chunk_ch;
  const int64_t cg_pad = chunks * chunk_ch, gc = P.G * cg_pad, out_vol = P.out_vol();
  const at::Tensor dyp = pack_src<T, T>(dy, P.yl, P.N, out_vol, P.G, P.cout_g(), cg_pad, !k16 && tf32, stream, db);

  WgradTcParams prm{};
  prm.x = x.data_ptr<T>();
  prm.dyp = dyp.data_ptr<T>();
  prm.pk_n = out_vol * gc;
  prm.pk_v = gc;
  prm.cg_pad = cg_pad;
  prm.P = P;
  prm.tiles_per_plane = int((int64_t(wd[1].P) * wd[2].P + kWgBM - 1) / kWgBM);
  prm.total_tiles = P.N * P.in[0] * prm.tiles_per_plane;
  // taps split evenly over the fewest blocks that hold them
  prm.tap_groups = int(tap_groups);
  prm.sub_groups = int(sub_groups);
  prm.taps_per_group = int(taps_per_group);
  prm.win_planes = int(win_planes);
  prm.R = int(rows);
  prm.C = int(cols);
  prm.window_bytes = int(wbytes);
  prm.windows = windows;
  prm.x_async = x_async;
  prm.round_a = !k16 && tf32;
  const int64_t base = chunks * P.G * prm.tap_groups;
  int64_t splits = wgrad_splits(base, int64_t(std::max(per_sm, 1)) * prop->multiProcessorCount,
                                std::min<int64_t>(prm.total_tiles, kMaxSplits));
  prm.tiles_per_split = (prm.total_tiles + splits - 1) / splits;
  splits = (prm.total_tiles + prm.tiles_per_split - 1) / prm.tiles_per_split;
  TORCH_CHECK(chunks <= 65535 && P.G * prm.tap_groups <= 65535, "conv_transpose3d: grad weight grid too large");

  auto ws = at::empty({splits, dw.numel()}, dy.options().dtype(at::kFloat));
  if (poison_enabled()) ws.fill_(std::numeric_limits<float>::quiet_NaN());
  prm.ws = ws.data_ptr<float>();
  const dim3 grid{unsigned(splits), unsigned(chunks), unsigned(P.G * prm.tap_groups)};
  kernel<<<grid, 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((dw.numel() + threads - 1) / threads, 65535);
  sum_splits_kernel<T><<<blocks, threads, 0, stream>>>(ws.data_ptr<float>(), dw.data_ptr<T>(),
                                                       dw.numel(), int(splits));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

template <typename T>
void grad_bias(const at::Tensor& dy, at::Tensor& db, const Problem& P) {
  if (db.numel() == 0) return;
  grad_bias_kernel<T><<<P.Cout, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      dy.data_ptr<T>(), db.data_ptr<T>(), P.N, P.yl, P.out_vol());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define CT3D_INSTANTIATE_WGRAD(T)                                                            \
  template void grad_weight_tiled<T>(const at::Tensor&, const at::Tensor&, at::Tensor&,      \
                                     const Problem&, bool);                                  \
  template bool grad_weight_tc<T>(const at::Tensor&, const at::Tensor&, at::Tensor&,         \
                                  at::Tensor*, const Problem&, bool);
CT3D_INSTANTIATE_WGRAD(float)
CT3D_INSTANTIATE_WGRAD(at::Half)
CT3D_INSTANTIATE_WGRAD(at::BFloat16)
template void grad_bias<float>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<double>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::Half>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::BFloat16>(const at::Tensor&, at::Tensor&, const Problem&);

}  // namespace ct3d
