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
// the window does not fit in shared memory, and algo="tiled".
//
// Sections: the FFMA Gemm (gather rule + epilogue), the thin-group kernel, launchers.
#include "common.cuh"
#include "window_tc.cuh"
#include "window_wg.cuh"

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
// Launchers
// ============================================================================
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
  const int64_t wt_numel = P.G * w_words;
  auto wt = at::empty({split ? 2 * wt_numel : wt_numel}, w.options().dtype(at::kInt));
  uint32_t* wt_ptr = reinterpret_cast<uint32_t*>(wt.data_ptr<int>());
  transform_weight_kernel<T><<<unsigned(std::min<int64_t>((wt_numel + 255) / 256, 4096)), 256, 0, stream>>>(
      w.data_ptr<T>(), wt_ptr, split ? wt_ptr + wt_numel : nullptr, P, kJobGradInput, 1, 1,
      split ? kWeightSplit : kWeightTf32);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  prm.dy = dy.data_ptr();
  prm.wt_big = wt_ptr;
  prm.wt_small = split ? wt_ptr + wt_numel : nullptr;
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
// thin_dgrad_kernel (except under kTcMma / kTcWgmma, which test the window kernels).
template <typename T>
bool grad_input_tc(const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx, const Problem& P,
                   bool tf32, int64_t algo) {
  if (algo != kTcMma && algo != kTcWgmma && grad_input_thin<T>(dy, w, dx, P, tf32)) return true;
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
