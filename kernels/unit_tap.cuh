// unit_tap.cuh: the GEMM tile shared by the unit-tap kernels, where the kernel size is the
// stride in every dimension (dilation 1 where k > 1; U-Net upsampling): every output voxel
// o then receives exactly one tap, r = (o + p) mod s, from input voxel (o + p) / s, so each
// job is a plain GEMM per (batch item, group) over the input voxels, no window, no phases:
//   forward     (forward.cu, unit_tap_fwd_kernel):     D[(co, r)][i] = sum_ci  w[ci][(co, r)] x[ci][i]
//   grad input  (grad_input.cu, unit_tap_dgrad_kernel): D[ci][i]     = sum_(co,r) w[ci][(co, r)] dy[co][o(i, r)]
// M = the rows above (128 a block), N = input voxels i (64 a block), K in steps of 32.
// A (the weight, K contiguous) is arranged once a call by unit_tap_weight_kernel (rows and
// K zero-padded, TF32-rounded); each kernel stages its own B (x, or dy gathered) as
// Bs[k][i] and scatters or stores D its own way. Here: the tile constants, the shared-
// memory shape, the MMAs of one K step, D to shared memory, and 16-byte output packing.
// 8 warps as 4 (M) x 2 (N), each 32 x 32 (2 m16 x 4 n8 MMA tiles, 32 accumulators a
// thread: 128 x 128 tiles needed 64 and spilled at two blocks an SM). Fragments: 16-bit, A
// by ldmatrix and B by ldmatrix.trans (m16n8k16), or by 32-bit loads where B is staged in
// row groups (grad input: see ut_mma_stage); TF32, both by 32-bit loads (m16n8k8). The
// pitches (K + 8 or + 4 elements, 64 + 8) keep all of them conflict-free.
#pragma once
#include "window_tc.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ct3d {

constexpr int kUtBM = 128, kUtBN = 64, kUtBK = 32, kUtThreads = 256;
constexpr int kUtWarpsN = 2, kUtMI = 2;  // warps along N; m16 tiles a warp (warp tile 32 x 32)
static_assert(kUtBN == 32 * kUtWarpsN && kUtBM == 16 * kUtMI * (kUtThreads / 32 / kUtWarpsN),
              "unit-tap kernels: warp tiles of 32 x 32 cover the block tile");
static_assert(kUtThreads >= kUtBM + kUtBN, "unit-tap kernels: a thread a table row");

template <typename T>
struct UtShape {
  static constexpr bool k16 = !std::is_same<T, float>::value;
  static constexpr int APitch = kUtBK + (k16 ? 8 : 4);  // elements
  static constexpr int BPitch = kUtBN + 8;              // elements
  static constexpr int ABytes = kUtBM * APitch * int(sizeof(T));
  static constexpr int StageBytes = ABytes + kUtBK * BPitch * int(sizeof(T));
  static constexpr int DPitch = kUtBN + 8;  // floats
  static constexpr int DBytes = kUtBM * DPitch * 4;
  static constexpr int Stages = k16 ? 4 : 3;  // cp.async ring: 59 KB (16-bit), 83 KB (fp32)
  static constexpr int Smem = Stages * StageBytes > DBytes ? Stages * StageBytes : DBytes;
  static constexpr int VEC = 16 / int(sizeof(T));                 // elements of a 16-byte piece
  static constexpr int BPer = kUtBK * kUtBN / kUtThreads;         // B elements a thread a step
};

// Where the unit-tap kernels apply: kernel = stride in every dimension (dilation 1 where
// k > 1), and output_padding <= padding (the taps cover outputs [-p, in*s - p), so then
// every output is one tap's).
inline bool unit_tap_fits(const Problem& P) {
  for (int e = 0; e < 3; ++e)
    if (P.k[e] != P.s[e] || (P.k[e] > 1 && P.d[e] != 1) || P.op[e] > P.p[e]) return false;
  return true;
}

// log2 kw where 16 bytes (vo values) of an output-shaped tensor t (y in the forward, dy in
// grad input; layout P.yl) are the kw taps rw of vo / kw consecutive input voxels of one
// input row, else -1: t in NCDHW (output w contiguous) with 16-byte aligned rows, no padding
// (nothing cropped; with op <= p, no output_padding either), kw a power of two dividing
// vo, and the input width a multiple of vo / kw (a piece's voxels in one input row and one
// tile). The forward then stores 16 bytes at a time, grad input loads them.
// CT3D_UT_VEC_OUT=0 turns it off (A/B).
inline int unit_tap_vec_out(const Problem& P, const at::Tensor& t, int vo) {
  static const int enabled = env_int("CT3D_UT_VEC_OUT", 1);
  const int64_t kw = P.k[2];
  if (enabled == 0 || P.yl.v != 1 || P.p[0] || P.p[1] || P.p[2] || kw > vo || vo % kw != 0 ||
      P.in[2] % (vo / kw) != 0 || P.out[2] % vo != 0 || P.yl.c % vo != 0 || P.yl.n % vo != 0 ||
      reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0)
    return -1;
  int l = 0;
  while ((int64_t(1) << l) < kw) ++l;
  return l;
}

// wt[g][m][k] = w[g * gstride + m * ms + k * ks] for m < Mg and k < Kg, else 0; TF32-rounded
// for fp32. Forward: m = (co, tap), k = ci (a transpose of w); grad input: m = ci, k = (co, tap).
template <typename T>
__global__ void unit_tap_weight_kernel(const T* __restrict__ w, T* __restrict__ wt, int64_t G, int64_t gstride,
                                       int64_t ms, int64_t ks, int64_t Mg, int64_t Kg, int64_t Mpad, int64_t Kpad) {
  const int64_t total = G * Mpad * Kpad;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = idx % Kpad, m = (idx / Kpad) % Mpad, g = idx / (Kpad * Mpad);
    T v = T(0);
    if (m < Mg && k < Kg) v = w[g * gstride + m * ms + k * ks];
    if constexpr (std::is_same<T, float>::value) v = round_tf32(v);
    wt[idx] = v;
  }
}

// The weight as the unit-tap kernels read it: unit_tap_weight_kernel into a new
// [G][Mpad][Kpad] tensor (see there for gstride, ms, ks), on the current stream.
template <typename T>
at::Tensor ut_arrange_weight(const at::Tensor& w, int64_t G, int64_t gstride, int64_t ms, int64_t ks, int64_t Mg,
                             int64_t Kg, int64_t Mpad, int64_t Kpad) {
  at::Tensor wt = at::empty({G * Mpad * Kpad}, w.options());
  if (wt.numel() > 0) {
    unit_tap_weight_kernel<T><<<unsigned(std::min<int64_t>((wt.numel() + 255) / 256, 4096)), 256, 0,
                                at::cuda::getCurrentCUDAStream()>>>(w.data_ptr<T>(), wt.data_ptr<T>(), G, gstride, ms,
                                                                    ks, Mg, Kg, Mpad, Kpad);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return wt;
}

// The bits of one B element as staged: 16-bit as they are, fp32 rounded to TF32.
template <typename T>
__device__ __forceinline__ uint32_t ut_stage_bits(uint32_t u) {
  if constexpr (UtShape<T>::k16) return u;
  else return __float_as_uint(round_tf32(__uint_as_float(u)));
}

// A of K step kk (the block's first `rows` of its 128 rows x 32 of K of the arranged weight,
// wt at the block's first row) into the stage at dst, 16-byte pieces by cp.async, by all the
// block's threads.
template <typename T>
__device__ __forceinline__ void ut_copy_a(uint32_t dst, const T* wt, int64_t Kpad, int kk, int tid, int rows = kUtBM) {
  using S = UtShape<T>;
  constexpr int PPR = kUtBK * int(sizeof(T)) / 16;  // 16-byte pieces a row
#pragma unroll
  for (int p = tid; p < rows * PPR; p += kUtThreads) {
    const int r = p / PPR, q = p % PPR;
    cp_async16(dst + (r * S::APitch) * int(sizeof(T)) + q * 16, wt + r * Kpad + kk * kUtBK + q * S::VEC, 16);
  }
}

// Column c of a unit-tap tile, input voxel v: where its tap 0 lands, o = i*s - p per
// dimension, into col_o[e][c] (far negative past the last voxel, v >= vol); returns that
// output position's offset inside one channel of an output-shaped tensor (layout P.yl).
__device__ __forceinline__ int64_t ut_col_table(const Problem& P, int64_t v, int (&col_o)[3][kUtBN], int c) {
  if (v >= P.in_vol()) {
    col_o[0][c] = col_o[1][c] = col_o[2][c] = -(1 << 30);
    return 0;
  }
  const int H = int(P.in[1]), W = int(P.in[2]);
  int id, ih, iw;
  if (P.in_vol() < (int64_t(1) << 31)) {  // 32-bit divisions where they suffice (a fraction of 64-bit's cost)
    const int v32 = int(v), q = v32 / W;
    id = q / H, ih = q - id * H, iw = v32 - q * W;
  } else {
    id = int(v / (int64_t(H) * W)), ih = int((v / W) % H), iw = int(v % W);
  }
  const int od = id * int(P.s[0]) - int(P.p[0]), oh = ih * int(P.s[1]) - int(P.p[1]), ow = iw * int(P.s[2]) - int(P.p[2]);
  col_o[0][c] = od, col_o[1][c] = oh, col_o[2][c] = ow;
  return ((int64_t(od) * P.out[1] + oh) * P.out[2] + ow) * P.yl.v;
}

// The MMAs of one K step on the stage at `stage` (As then Bs), into this warp's 32 x 32 of D.
// Bs in row groups of kw = 2^lkw rows (grad input stages dy rows as they lie): B[k][n] at
// element ((k >> lkw) * BPitch << lkw) + (n << lkw) + (k & (kw - 1)), i.e. row group k / kw
// holds the kw taps of each voxel side by side, pitch kw x BPitch elements. lkw = 0 is
// plain Bs[k][n] (the forward). Fragments: 16-bit at lkw = 0 by ldmatrix.trans; 16-bit at
// lkw >= 1 by 32-bit loads (the pair k, k + 1 of an m16n8k16 B register is one word: k is
// even and kw >= 2); TF32 by 32-bit loads. Conflict-free: a warp's words are 2 tq + gq
// spread over rows that the pitch (36 kw words 16-bit, 72 kw TF32) puts 8 or 16 banks apart.
// KPARTS > 1: only part kpart of the step's K sub-steps (k16 or k8 MMAs), the step split
// between KPARTS sets of warps that each keep a partial sum (grad input's K split, below).
template <typename T, int KPARTS = 1>
__device__ __forceinline__ void ut_mma_stage(float (&acc)[kUtMI][4][4], const unsigned char* stage, int wm, int wn,
                                             int lane, int lkw = 0, int kpart = 0) {
  using S = UtShape<T>;
  constexpr int NKS = kUtBK / (S::k16 ? 16 : 8);  // MMA K sub-steps a step
  static_assert(NKS % KPARTS == 0, "ut_mma_stage: K parts divide the sub-steps");
  const int gq = lane >> 2, tq = lane & 3;
  const unsigned char* as = stage;
  const unsigned char* bs = stage + S::ABytes;
  const int kwm = (1 << lkw) - 1;
  // element offset of B[k][n] inside the stage's Bs (k < 16 or 8 here; a K step of ks adds ks x BPitch x 16 or 8)
  auto boff = [&](int k, int n) { return (((k >> lkw) * S::BPitch) << lkw) + (n << lkw) + (k & kwm); };
  if constexpr (S::k16) {
    const uint32_t* bu = reinterpret_cast<const uint32_t*>(bs);
    const int l0 = boff(2 * tq, wn * 32 + gq) >> 1, l1 = boff(2 * tq + 8, wn * 32 + gq) >> 1;  // words (lkw >= 1)
#pragma unroll
    for (int kq = 0; kq < NKS / KPARTS; ++kq) {
      const int ks = kpart * (NKS / KPARTS) + kq;
      uint32_t a[kUtMI][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < kUtMI; ++mi)
        ldmatrix_x4(a[mi], smem_u32(as + ((wm * 16 * kUtMI + mi * 16 + (lane & 15)) * S::APitch + ks * 16 + (lane >> 4) * 8) * 2));
      if (lkw > 0) {
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int o = ks * 8 * S::BPitch + ((ni * 4) << lkw);  // words
          b[ni][0] = bu[l0 + o], b[ni][1] = bu[l1 + o];
        }
      } else {
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          uint32_t r[4];
          ldmatrix_x4_trans(r, smem_u32(bs + ((ks * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * S::BPitch + wn * 32 +
                                              nj * 16 + (lane >> 4) * 8) * 2));
          b[2 * nj][0] = r[0], b[2 * nj][1] = r[1], b[2 * nj + 1][0] = r[2], b[2 * nj + 1][1] = r[3];
        }
      }
#pragma unroll
      for (int mi = 0; mi < kUtMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_k16<T>(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
  } else {
    const uint32_t* au = reinterpret_cast<const uint32_t*>(as);
    const uint32_t* bu = reinterpret_cast<const uint32_t*>(bs);
#pragma unroll
    for (int kq = 0; kq < NKS / KPARTS; ++kq) {
      const int ks = kpart * (NKS / KPARTS) + kq;
      uint32_t a[kUtMI][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < kUtMI; ++mi) {
        const uint32_t* ar = au + (wm * 16 * kUtMI + mi * 16 + gq) * S::APitch + ks * 8 + tq;
        a[mi][0] = ar[0], a[mi][1] = ar[8 * S::APitch], a[mi][2] = ar[4], a[mi][3] = ar[8 * S::APitch + 4];
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const uint32_t* br = bu + ks * 8 * S::BPitch + ((ni * 8) << lkw);
        b[ni][0] = br[boff(tq, wn * 32 + gq)], b[ni][1] = br[boff(tq + 4, wn * 32 + gq)];
      }
#pragma unroll
      for (int mi = 0; mi < kUtMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_tf32(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
  }
}

// The K loop of both unit-tap kernels: a cp.async ring of Stages buffers, steps kk + 1 ..
// kk + Stages - 1 in flight while step kk is multiplied. load(kk, buf) issues step kk's
// copies into buffer buf (a synchronous fallback may store directly); round(buf) runs on
// each thread's own landed copies before the barrier (TF32 rounding in place); mma(kk, buf)
// multiplies buffer buf, step kk. Ends with every copy landed and every warp done with the buffers
// (they become D).
template <typename T, typename Load, typename Round, typename Mma>
__device__ __forceinline__ void ut_k_loop(int nk, Load&& load, Round&& round, Mma&& mma) {
  constexpr int St = UtShape<T>::Stages;
  for (int st = 0; st < St - 1; ++st) {
    if (st < nk) load(st, st);
    cp_async_commit();
  }
  for (int kk = 0; kk < nk; ++kk) {
    const int buf = kk % St;
    cp_async_wait(St - 2);  // step kk has landed (this thread's copies)
    round(buf);
    __syncthreads();  // everyone's step kk is in; everyone is done with step kk - 1
    if (kk + St - 1 < nk) load(kk + St - 1, (kk + St - 1) % St);
    cp_async_commit();
    mma(kk, buf);
  }
  cp_async_wait(0);
  __syncthreads();
}

// This warp's accumulators into D in shared memory, ds[row][col], pitch floats a row.
__device__ __forceinline__ void ut_acc_to_smem(float* ds, int pitch, const float (&acc)[kUtMI][4][4], int wm, int wn,
                                               int lane) {
  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int mi = 0; mi < kUtMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 16 * kUtMI + mi * 16 + gq + 8 * h, c = wn * 32 + ni * 8 + 2 * tq;
        *reinterpret_cast<float2*>(ds + r * pitch + c) = make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
      }
}

// 16 / sizeof(T) fp32 values as 16 bytes of T, each rounded once (nearest-even).
template <typename T>
__device__ __forceinline__ uint4 ut_pack16(const float (&v)[16 / sizeof(T)]) {
  auto word = [&](int j) -> uint32_t {  // values 2j, 2j + 1 (16-bit) or j (fp32)
    if constexpr (std::is_same<T, float>::value) {
      return __float_as_uint(v[j]);
    } else if constexpr (std::is_same<T, at::BFloat16>::value) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
      return *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __half2 h = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
      return *reinterpret_cast<const uint32_t*>(&h);
    }
  };
  return make_uint4(word(0), word(1), word(2), word(3));
}

}  // namespace ct3d
