// grad_weight.cu: dw and dbias of y = conv_transpose3d(x, w) + bias, as a Conv3d wgrad.
//
// GEMM view (per group g; see common.cuh for the table):
//   M = Cin/G, N = Cout/G * kvol, K = N * D*H*W (batch and input voxels)
//   A[m, k] = x[n, g*Cin/G + ci, i]
//   B[k, n] = dy[n, g*Cout/G + co, o = i*s - p + r*d]    (gathered, 0 outside dy)
//   dw[g*Cin/G + ci, co, r] = sum_k A*B
// with column = co * kvol + r and k = n * D*H*W + i.
//
// K is long and M*N small, so K is split across blocks: blockIdx.z = g * S + split,
// each split writes its fp32 partial tile to a workspace [S, numel(dw)], and a
// second kernel adds the S partials in split order. No float atomics: the
// result is bitwise identical from run to run. S is chosen to fill the card
// (about 4 blocks per SM) and capped, so the workspace is at most
// kMaxSplits * numel(dw) floats.
//
// Two kernels compute the split partials. grad_weight_tc (tensor cores, the default):
// per split, per 8-channel chunk of dy and per group of taps, a block walks tiles of 128
// input positions (one plane of one batch item each). For each tile it stages the x tile
// xt[ci][position] and the window of dy that the tile's positions reach through the
// block's taps (window_tc.cuh's window, src = dy, multiplier s, offsets r*d - p): dy is
// packed channels-innermost in its own type once per call (pack_src_kernel), so the
// window is copied with cp.async, the next tile's while this tile's MMAs run (two window
// buffers); 16-bit values become fp32 (exactly) when a lane reads its B element. Then,
// per tap r, MMA D[ci][co] += sum over positions of A[ci][p] * B[p][co] with A = the x tile
// (ldmatrix) and B = the dy window shifted by tap r (two 4-byte loads a fragment: a shift
// breaks ldmatrix's 16-byte alignment). Warp w owns taps w, w+8, ... of the group and
// all of ci, so the A fragments of a k-step serve every tap. TF32 rounding / 3xTF32 as
// window_tc.cuh; the 3xTF32 big*big chain restarts every tile.
// grad_weight_tiled: common.cuh's FFMA tile, the fallback (Cin/G > 64, windows too large).
//
// grad bias: one block per output channel sums dy over batch and voxels in a
// fixed order (fp64 accumulation: this pass is memory-bound, so it is free).
//
// Sections: the FFMA Gemm, the tensor-core kernel, reduction kernels, launchers.
#include "common.cuh"
#include "window_tc.cuh"

namespace ct3d {

constexpr int kMaxSplits = 32;

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
constexpr int kWgBM = 128;             // input positions per tile: 16 k8 steps
constexpr int kWgXStride = kWgBM + 4;  // floats per x-tile row: 528 B keeps ldmatrix conflict-free

struct WgradTcParams {
  const void* x;
  const void* dyp;         // dy packed channels-innermost in its own type (window_tc.cuh's pack_src):
  int64_t pk_n, pk_v, cg_pad;  // element n*pk_n + position*pk_v + g*cg_pad + channel
  float* ws;               // [splits, numel(dw)]
  Problem P;
  int tiles_per_plane;     // ceil(H*W / kWgBM)
  int64_t total_tiles;     // N * D * tiles_per_plane
  int64_t tiles_per_split;
  int tap_groups;          // ceil(kvol / (8 * TPW))
  int R, C;                // window rows and columns (fixed: the most any tile needs)
  int window_floats;       // shared memory (in floats): windows | x tile | tap table | position table
  int windows;             // 2: the next tile's window is copied during this tile's MMAs; 1: no room
  bool round_a;            // TF32: round the x tile (the pack rounds dy)
};

template <typename T, int MT, int TPW, bool SPLIT3>
__global__ void __launch_bounds__(256, 1) wgrad_tc_kernel(const WgradTcParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // The dy window holds dy's own type (fp32, or 16-bit: converted when read, exactly):
  // RS = 12 elements a position (8 channels + 4 pad; 48 or 24 bytes, B loads conflict-free).
  using W = typename WinElem<T>::type;
  constexpr int RS = kTcRowStride;
  constexpr int PIECE = 4 * int(sizeof(W));  // bytes of 4 channels: two cp.async pieces a position
  extern __shared__ __align__(16) float sm[];
  // one or two dy windows [position][8 channels + 4 pad] (with two, the next tile's is
  // copied while this tile's MMAs run), then the x tile [MT*16 channels][kWgXStride]
  float* xt = sm + prm.windows * prm.window_floats;
  const bool two = prm.windows == 2;
  // then the tap table (8*TPW ints) and the position table (kWgBM ints)
  int* tab = reinterpret_cast<int*>(xt + MT * 16 * kWgXStride);  // window shift per block tap
  int* pos_tab = tab + 8 * TPW;  // window position (floats) of each tile position, per tile
  const Problem& P = prm.P;
  WinDim wd[3];
  win_dims(P, kJobGradInput, 0, wd);  // positions = input voxels, multiplier s, taps r
  const int g = blockIdx.z / prm.tap_groups, tg = blockIdx.z % prm.tap_groups;
  const int chunk = blockIdx.y, split = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, tq = lane % 4;
  const int kvol = int(P.kvol()), R = prm.R, C = prm.C;
  const int Wd = wd[2].P, plane = wd[1].P * wd[2].P;
  const int cin_g = int(P.cin_g()), cout_g = int(P.cout_g());

  // Tap table: window shift of block tap q (tap tg*8*TPW + q), in floats.
  for (int q = threadIdx.x; q < 8 * TPW; q += blockDim.x) {
    const int tap = tg * 8 * TPW + q;
    int shift = 0;
    if (tap < kvol) {
      const int rw = tap % int(P.k[2]), rh = (tap / int(P.k[2])) % int(P.k[1]), rd = tap / int(P.k[2] * P.k[1]);
      const int sh = wd[1].off0 + rh * wd[1].dstep - win_off_min(wd[1]);
      const int sw = wd[2].off0 + rw * wd[2].dstep - win_off_min(wd[2]);
      shift = ((rd * R + sh) * C + sw) * RS;
    }
    tab[q] = shift;
  }

  float acc[TPW][MT][4], blk[TPW][MT][4], cor[TPW][MT][4];
#pragma unroll
  for (int q = 0; q < TPW; ++q)
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[q][i][e] = blk[q][i][e] = cor[q][i][e] = 0.f;

  const T* __restrict__ x = static_cast<const T*>(prm.x);
  const int64_t t_begin = split * prm.tiles_per_split;
  const int64_t t_end = min(prm.total_tiles, t_begin + prm.tiles_per_split);

  // The dy window of a tile: kD planes x R rows x C columns of this chunk's 8 channels,
  // copied with cp.async from the packed dy (two pieces of 4 channels a position, 16 or 8
  // bytes each; zero outside dy).
  const int Td = int(P.k[0]), Ho = int(P.out[1]), Wo = int(P.out[2]);
  const W* dy_g = static_cast<const W*>(prm.dyp) + int64_t(g) * prm.cg_pad + chunk * kTcBK;
  auto issue_window = [&](int64_t tile, int buf) {
    const int pt = int(tile % prm.tiles_per_plane);
    const int64_t rest = tile / prm.tiles_per_plane;
    const int jd = int(rest % wd[0].P);
    const int64_t n = rest / wd[0].P;
    const int jh0 = pt * kWgBM / Wd;
    const int od0 = jd * wd[0].mult + wd[0].off0, oh0 = jh0 * wd[1].mult + win_off_min(wd[1]);
    const int ow0 = win_off_min(wd[2]);
    const W* base = dy_g + n * prm.pk_n;
    const uint32_t dst = smem_u32(sm + buf * prm.window_floats);
    for (int q = threadIdx.x; q < Td * R * C * 2; q += blockDim.x) {
      const int p = q >> 1, c = p % C, rr = p / C, r = rr % R, td = rr / R;
      const int od = od0 + td * wd[0].dstep, oh = oh0 + r, ow = ow0 + c;
      const bool ok = unsigned(od) < unsigned(P.out[0]) && unsigned(oh) < unsigned(Ho) && unsigned(ow) < unsigned(Wo);
      const W* src = ok ? base + ((int64_t(od) * Ho + oh) * Wo + ow) * prm.pk_v + (q & 1) * 4 : base;
      if constexpr (PIECE == 16) cp_async16(dst + p * (RS * 4) + (q & 1) * 16, src, ok ? 16 : 0);
      else cp_async8(dst + p * (RS * 2) + (q & 1) * 8, src, ok ? 8 : 0);
    }
  };
  if (two && t_begin < t_end) issue_window(t_begin, 0);
  cp_async_commit();
  int buf = 0;
  for (int64_t tile = t_begin; tile < t_end; ++tile, buf ^= 1) {
    const int pt = int(tile % prm.tiles_per_plane);
    const int64_t rest = tile / prm.tiles_per_plane;
    const int jd = int(rest % wd[0].P);
    const int64_t n = rest / wd[0].P;
    const int m0 = pt * kWgBM, jh0 = m0 / Wd;
    __syncthreads();  // the previous tile's MMAs are done with xt, pos_tab and the other window
    if (!two) issue_window(tile, 0);
    else if (tile + 1 < t_end) issue_window(tile + 1, buf ^ 1);
    cp_async_commit();
    const W* xs = reinterpret_cast<const W*>(sm + (two ? buf : 0) * prm.window_floats);
    // window position of each tile position (one division each, once per tile)
    for (int p = threadIdx.x; p < kWgBM; p += blockDim.x) {
      const int m = min(m0 + p, plane - 1);
      pos_tab[p] = ((m / Wd - jh0) * wd[1].mult * C + (m % Wd) * wd[2].mult) * RS;
    }
    // x tile: rows = channels, columns = the tile's positions (coalesced both ways)
    {
      const T* xb = x + P.xl.at(n, int64_t(g) * cin_g, int64_t(jd) * plane);
      float v[MT * 8];
#pragma unroll
      for (int u = 0; u < MT * 8; ++u) {
        const int e = threadIdx.x + 256 * u, ci = e / kWgBM, p = e % kWgBM;
        v[u] = (ci < cin_g && m0 + p < plane) ? float(xb[ci * P.xl.c + (m0 + p) * P.xl.v]) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < MT * 8; ++u) {
        const int e = threadIdx.x + 256 * u;
        xt[(e / kWgBM) * kWgXStride + e % kWgBM] = prm.round_a ? round_tf32(v[u]) : v[u];
      }
    }
    cp_async_wait(two ? 1 : 0);  // this tile's window has landed (the next one may be in flight)
    __syncthreads();

    for (int k0 = 0; k0 < kWgBM; k0 += 8) {
      uint32_t a[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i)
        ldmatrix_x4(a[i], smem_u32(xt + (i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kWgXStride +
                                   k0 + (lane >> 4) * 4));
      // B rows of this lane: tile positions k0 + tq and k0 + tq + 4, channel gq
      const int pb[2] = {pos_tab[k0 + tq] + gq, pos_tab[k0 + tq + 4] + gq};
      uint32_t ab[MT][4], as[MT][4];
      if (SPLIT3) {
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
        if (tg * 8 * TPW + q * 8 + warp >= kvol) continue;  // warp-uniform
        const int sh = tab[q * 8 + warp];
        const float f0 = float(xs[pb[0] + sh]), f1 = float(xs[pb[1] + sh]);
        if (SPLIT3) {
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
          for (int i = 0; i < MT; ++i) mma_tf32(acc[q][i], a[i], __float_as_uint(f0), __float_as_uint(f1));
        }
      }
    }
    if (SPLIT3) {  // bounded big*big chains: one tile's 16 k-steps
#pragma unroll
      for (int q = 0; q < TPW; ++q)
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            acc[q][i][e] += blk[q][i][e];
            blk[q][i][e] = 0.f;
          }
    }
  }
  cp_async_wait(0);  // no copy may be in flight when the block exits

  // ---- partials of this split: ws[split][g*Cin/G + ci][co][tap] ----
  const int64_t numel = P.Cin * P.cout_g() * P.kvol();
#pragma unroll
  for (int q = 0; q < TPW; ++q) {
    const int tap = tg * 8 * TPW + q * 8 + warp;
    if (tap >= kvol) continue;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ci = i * 16 + gq + 8 * (e / 2), co = chunk * kTcBK + 2 * tq + e % 2;
        if (ci < cin_g && co < cout_g)
          prm.ws[split * numel + ((int64_t(g) * cin_g + ci) * cout_g + co) * kvol + tap] =
              acc[q][i][e] + (SPLIT3 ? cor[q][i][e] : 0.f);
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
template <typename T, int MT, int TPW, bool SPLIT3>
static void launch_wgrad_tc(const WgradTcParams& prm, dim3 grid, int64_t smem, cudaStream_t stream) {
  auto kernel = wgrad_tc_kernel<T, MT, TPW, SPLIT3>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Taps per warp: 8 MMAs per k-step for every MT (the accumulators, TPW * MT * 4 floats,
// stay at 32 a set); 3xTF32 keeps three sets, so half the taps.
__host__ __device__ constexpr int wgrad_tpw(int mt, bool split3) {
  return split3 ? (mt >= 4 ? 1 : 4 / mt) : 8 / mt;
}

template <typename T, bool SPLIT3>
static void dispatch_wgrad_mt(int mt, const WgradTcParams& prm, dim3 grid, int64_t smem, cudaStream_t s) {
  if (mt == 1) launch_wgrad_tc<T, 1, wgrad_tpw(1, SPLIT3), SPLIT3>(prm, grid, smem, s);
  else if (mt == 2) launch_wgrad_tc<T, 2, wgrad_tpw(2, SPLIT3), SPLIT3>(prm, grid, smem, s);
  else launch_wgrad_tc<T, 4, wgrad_tpw(4, SPLIT3), SPLIT3>(prm, grid, smem, s);
}

// Tensor cores; false (launching nothing) where the kernel does not fit: sm < 80,
// Cin/G > 64, or a window larger than shared memory.
template <typename T>
bool grad_weight_tc(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw, const Problem& P,
                    bool tf32) {
  const int dev = dy.get_device();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  if (prop->major < 8 || P.cin_g() > 64 || dw.numel() == 0 || P.N * P.in_vol() == 0) return false;
  const int mt = P.cin_g() <= 16 ? 1 : P.cin_g() <= 32 ? 2 : 4;
  const bool fp32 = std::is_same<T, float>::value, split3 = fp32 && !tf32;
  const int tpw = wgrad_tpw(mt, split3);
  WinDim wd[3];
  win_dims(P, kJobGradInput, 0, wd);
  const int64_t rows = (std::min<int64_t>(wd[1].P, (kWgBM + wd[2].P - 1) / wd[2].P + 1) - 1) * wd[1].mult +
                       win_span(wd[1]) + 1;
  const int64_t cols = int64_t(wd[2].P - 1) * wd[2].mult + win_span(wd[2]) + 1;
  using W = typename WinElem<T>::type;  // dy window element (see the kernel)
  const int64_t wfloats = (P.k[0] * rows * cols * kTcRowStride * int64_t(sizeof(W)) / 4 + 3) / 4 * 4;
  auto smem_for = [&](int64_t windows) {
    return (windows * wfloats + int64_t(mt) * 16 * kWgXStride + 8 * tpw + kWgBM) * int64_t(sizeof(float));
  };
  const int windows = smem_for(2) <= int64_t(prop->sharedMemPerBlockOptin) ? 2 : 1;
  const int64_t smem = smem_for(windows);
  if (smem > int64_t(prop->sharedMemPerBlockOptin) || P.N > 65535) return false;
  auto stream = at::cuda::getCurrentCUDAStream();

  // dy packed channels-innermost in its own type (fp32 TF32: rounded to nearest-even),
  // zero-padded to whole 8-channel chunks, so the window copies are cp.async pieces
  const int64_t chunks = (P.cout_g() + kTcBK - 1) / kTcBK;
  const int64_t cg_pad = chunks * kTcBK, gc = P.G * cg_pad, out_vol = P.out_vol();
  const at::Tensor dyp = pack_src<T, T>(dy, P.yl, P.N, out_vol, P.G, P.cout_g(), cg_pad, fp32 && tf32, stream);

  WgradTcParams prm{};
  prm.x = x.data_ptr<T>();
  prm.dyp = dyp.data_ptr<T>();
  prm.pk_n = out_vol * gc;
  prm.pk_v = gc;
  prm.cg_pad = cg_pad;
  prm.P = P;
  prm.tiles_per_plane = int((int64_t(wd[1].P) * wd[2].P + kWgBM - 1) / kWgBM);
  prm.total_tiles = P.N * P.in[0] * prm.tiles_per_plane;
  prm.tap_groups = int((P.kvol() + 8 * tpw - 1) / (8 * tpw));
  prm.R = int(rows);
  prm.C = int(cols);
  prm.window_floats = int(wfloats);
  prm.windows = windows;
  prm.round_a = fp32 && tf32;
  const int64_t base = chunks * P.G * prm.tap_groups;
  // Splits of the position range: about two blocks per SM in all, at most kMaxSplits.
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({(2 * int64_t(prop->multiProcessorCount) + base - 1) / base,
                                                             prm.total_tiles, int64_t(kMaxSplits)}));
  prm.tiles_per_split = (prm.total_tiles + splits - 1) / splits;
  splits = (prm.total_tiles + prm.tiles_per_split - 1) / prm.tiles_per_split;
  TORCH_CHECK(chunks <= 65535 && P.G * prm.tap_groups <= 65535, "conv_transpose3d: grad weight grid too large");

  auto ws = at::empty({splits, dw.numel()}, dy.options().dtype(at::kFloat));
  if (poison_enabled()) ws.fill_(std::numeric_limits<float>::quiet_NaN());
  prm.ws = ws.data_ptr<float>();
  const dim3 grid{unsigned(splits), unsigned(chunks), unsigned(P.G * prm.tap_groups)};
  if constexpr (std::is_same<T, float>::value) {
    if (split3) dispatch_wgrad_mt<T, true>(mt, prm, grid, smem, stream);
    else dispatch_wgrad_mt<T, false>(mt, prm, grid, smem, stream);
  } else {
    dispatch_wgrad_mt<T, false>(mt, prm, grid, smem, stream);
  }
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
                                  const Problem&, bool);
CT3D_INSTANTIATE_WGRAD(float)
CT3D_INSTANTIATE_WGRAD(at::Half)
CT3D_INSTANTIATE_WGRAD(at::BFloat16)
template void grad_bias<float>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<double>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::Half>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::BFloat16>(const at::Tensor&, at::Tensor&, const Problem&);

}  // namespace ct3d
