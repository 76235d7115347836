// window_tc.cuh: the tensor-core "window convolution" that runs the forward (per stride
// phase) and grad input. Each job's file builds a WinParams and calls run_window_tc.
//
// Both jobs are, per group, dense correlations in a position index j (one per dimension):
//   out[n, co, oc + os*j] = sum_{ci, t} src[n, ci, j*mult + off0 + t*dstep] * B_t[ci, co]
//   forward (one stride phase): src = x, mult = 1, taps t of the phase, off(t) = off0 - t*doff,
//                               weight tap r0 + t*rs, out = y at c + s*j  (common.cuh)
//   grad input:                 src = dy, mult = s, all taps, off(r) = r*d - p, out = dx at j
// GEMM view: M = output positions j, N = output channels (per group), K = (8-channel
// chunk of src, tap).
//
// Block tile: BM consecutive positions of one output plane (flattened (jh, jw) of one
// batch item n and one depth index jd) x BN output channels (16, 32 or 64; more take
// several blocks along grid.y). BM = 128 for BN = 64 (4 x 2 warps), 256 for thinner N
// (8 x 1 warps): every warp tile is 32 x (BN / WARPS_N), m16n8k8 TF32 MMAs.
//
// The input window. Every tap's A operand is the same block of src, shifted. For each
// chunk of 8 source channels the block stages, once, the window of src that any of its
// positions reads through any tap: T_d planes (one per depth tap) x R rows x C columns,
// as xs[position][8 channels] (12 floats a position: 48 bytes keeps ldmatrix free of
// bank conflicts at mult 1). Then, for every tap, each lane hands ldmatrix the window
// address of its row shifted by the tap's offset: the im2col happens in the address,
// and src is read from global memory a few times instead of once per tap.
//
// B (weights) is rearranged once per call by transform_weight_kernel into mma fragment
// order [g][tap][chunk][n8 tile][lane][2], zero-padded, already rounded or split, so a
// lane loads its B fragment with one 8-byte load. One chunk's weights for all taps
// outgrow L1 (150 KB on kb68), so B is prefetched two taps ahead; a tap table in shared
// memory (weight offset, window shift) replaces per-tap index math.
//
// Precision. fp32 with TF32 allowed: A rounded to TF32 (nearest-even) when staged, B in
// the transform, fp32 accumulation: what cuDNN does. fp32 strict: 3xTF32; each operand
// splits into big = tf32(v) and small = tf32(v - big); big*big accumulates in one set of
// registers, big*small + small*big in another. The tensor core's fp32 accumulation
// truncates when it aligns, so its error grows with the length of an MMA chain: the
// big*big chain restarts every kFlushTaps taps and is added into a round-to-nearest
// register sum. fp16 / bf16 values are exact in TF32: one TF32 MMA gives exact products,
// fp32 accumulation, one rounding of the output.
//
// Sections: descriptors, PTX helpers, kernels (weight transform, window conv), host.
#pragma once
#include "common.cuh"

namespace ct3d {

constexpr int kTcBK = 8;          // source channels per staged window (one k8 MMA step)
constexpr int kTcRowStride = 12;  // floats per window position (8 channels + 4 pad)
constexpr int kFlushTaps = 8;     // 3xTF32: taps between flushes of the big*big MMA chain

enum WinJob : int { kJobForward = 0, kJobGradInput = 1 };
enum WeightMode : int { kWeightExact = 0, kWeightTf32 = 1, kWeightSplit = 2 };

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
  const void* src;
  const float* wt_big;    // [G][kvol][nchunks][ntiles][32][2]
  const float* wt_small;  // same layout, 3xTF32 only
  const void* bias;       // forward only; may be null
  void* out;
  Problem P;
  int job;
  int64_t src_cg, out_cg; // per group: K channels and N channels
  int64_t src_sz[3], out_sz[3];
  Layout src_l, out_l;    // strides of src and out (common.cuh)
  int nchunks, ntiles;    // ceil(src_cg / 8); n8 tiles of the padded out_cg
  int tiles_per_plane;    // grid.x decode: max over sub-problems of ceil(Ph*Pw / BM)
  int pd_max;             // max over sub-problems of Pd
  int window_floats;      // shared memory: the window, then the tap table (int2 per tap)
  bool round_a;           // TF32 mode: round A to TF32 when staging
};

// The tensors and sizes of a job: forward reads x (Cin channels) and writes y (Cout);
// grad input reads dy (Cout) and writes dx (Cin). run_window_tc fills in the rest.
inline WinParams win_params(int job, const void* src, const void* bias, void* out, const Problem& P) {
  const bool fwd = job == kJobForward;
  WinParams prm{};
  prm.src = src;
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
  prm.src_l = fwd ? P.xl : P.yl;
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

// TF32 rounding for the 3xTF32 split (any rounding works there; cvt.rna is one instruction).
__device__ __forceinline__ uint32_t tf32_rna(float v) {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
#endif
  return r;
}

// ============================================================================
// Kernels
// ============================================================================
// w [Cin, Cout/G, kvol] -> fragment order. Element (lane, e) of n8 tile nt, chunk ch,
// tap r is B[k = ch*8 + lane%4 + 4e][n = nt*8 + lane/4], where B[k][n] is
// w[g*Cin/G + k, n, r] for the forward (K = input channels) and w[g*Cin/G + n, k, r]
// for grad input (K = output channels).
template <typename T>
__global__ void transform_weight_kernel(const T* __restrict__ w, float* __restrict__ big,
                                        float* __restrict__ small, Problem P, int job,
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
    const int64_t k = ch * kTcBK + lane % 4 + 4 * e, n = nt * 8 + lane / 4;
    float v = 0.f;
    if (k < kc && n < nc) {
      const int64_t ci = job == kJobForward ? k : n, co = job == kJobForward ? n : k;
      v = float(w[((g * P.cin_g() + ci) * P.cout_g() + co) * P.kvol() + r]);
    }
    if (mode == kWeightExact) {
      big[idx] = v;
    } else if (mode == kWeightTf32) {
      big[idx] = round_tf32(v);
    } else {
      const float b = round_tf32(v);
      big[idx] = b;
      small[idx] = round_tf32(v - b);
    }
  }
}

// Stages one 8-channel chunk of the window, xs[(td*R + r)*C + c][ci] (stride RS), from
// base (channel 0 of the chunk; channel stride chan_stride, voxel stride vox_stride) at
// depth id0 + td*dstep_d, row wh0 + r, column ww0 + c;
// zero outside src and for channels >= valid_chans. Rows go to warps four at a time and each lane
// loads up to 4 x 4 elements before storing any: the loads are independent and in flight
// together (one element per lane per row at a time left a warp waiting on ~70 L2 round
// trips per chunk, 5x the chunk's MMA time).
template <typename T>
__device__ __forceinline__ void stage_window(float* xs, const T* base, int64_t chan_stride,
                                             int64_t vox_stride, int valid_chans, int Td, int R, int C, int id0,
                                             int dstep_d, int wh0, int ww0, const int64_t (&src_sz)[3],
                                             bool round_a) {
  constexpr int RS = kTcRowStride, ROWS = 4, COLS = 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows_total = kTcBK * Td * R;
  for (int row0 = warp * ROWS; row0 < rows_total; row0 += 8 * ROWS) {
    const T* rp[ROWS];
    float* dp[ROWS];
#pragma unroll
    for (int q = 0; q < ROWS; ++q) {
      const int row = row0 + q;
      const int ci = row / (Td * R), pr = row % (Td * R);
      const int id = id0 + (pr / R) * dstep_d, ih = wh0 + pr % R;
      const bool ok = row < rows_total && ci < valid_chans && unsigned(id) < unsigned(src_sz[0]) &&
                      unsigned(ih) < unsigned(src_sz[1]);
      rp[q] = ok ? base + ci * chan_stride + (int64_t(id) * src_sz[1] + ih) * src_sz[2] * vox_stride : nullptr;
      dp[q] = row < rows_total ? xs + pr * C * RS + ci : nullptr;
    }
    for (int c0 = 0; c0 < C; c0 += 32 * COLS) {
      float v[ROWS][COLS];
#pragma unroll
      for (int q = 0; q < ROWS; ++q)
#pragma unroll
        for (int u = 0; u < COLS; ++u) {
          const int iw = ww0 + c0 + lane + 32 * u;
          v[q][u] = (rp[q] && unsigned(iw) < unsigned(src_sz[2])) ? float(rp[q][iw * vox_stride]) : 0.f;
        }
#pragma unroll
      for (int q = 0; q < ROWS; ++q)
#pragma unroll
        for (int u = 0; u < COLS; ++u) {
          const int c = c0 + lane + 32 * u;
          if (dp[q] && c < C) dp[q][c * RS] = round_a ? round_tf32(v[q][u]) : v[q][u];
        }
    }
  }
}

// Two blocks per SM (<= 128 registers) for one accumulator set; 3xTF32 keeps three and
// runs one block per SM rather than spill.
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, bool SPLIT3>
__global__ void __launch_bounds__(256, SPLIT3 ? 1 : 2) window_tc_kernel(const WinParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MI = WM / 16, NI = WN / 8;
  constexpr int RS = kTcRowStride;
  static_assert(WARPS_M * WARPS_N == 8 && MI >= 1 && NI >= 1, "8 warps, whole m16/n8 tiles");
  extern __shared__ __align__(16) float xs[];
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
  const int taps = wd[0].T * wd[1].T * wd[2].T;

  // ---- window geometry: T_d planes x R rows x C columns ----
  const int jh0 = m0 / Pw, jh1 = min(wd[1].P - 1, (m0 + BM - 1) / Pw);
  const int Td = max(wd[0].T, 1);
  const int R = (jh1 - jh0) * wd[1].mult + win_span(wd[1]) + 1;
  const int C = (Pw - 1) * wd[2].mult + win_span(wd[2]) + 1;
  const int wh0 = jh0 * wd[1].mult + win_off_min(wd[1]);  // source row of window row 0
  const int ww0 = win_off_min(wd[2]);                      // source column of window column 0

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp % WARPS_M, warp_n = warp / WARPS_M;
  const int gq = lane / 4, tq = lane % 4;

  // ldmatrix row of this lane in each m16 tile: row (lane & 7) + 8 * ((lane >> 3) & 1),
  // channels 4 * (lane >> 4) .. +3; its window position before the tap's shift.
  int a_base[MI];
#pragma unroll
  for (int i = 0; i < MI; ++i) {
    const int m = min(m0 + warp_m * WM + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, Pplane - 1);
    a_base[i] = ((m / Pw - jh0) * wd[1].mult * C + (m % Pw) * wd[2].mult) * RS + (lane >> 4) * 4;
  }

  // acc: the running sum. 3xTF32 also keeps blk (the bounded big*big MMA chain, added
  // into acc every kFlushTaps taps) and cor (big*small + small*big).
  float acc[MI][NI][4], blk[MI][NI][4], cor[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = blk[i][j][e] = cor[i][j][e] = 0.f;

  // Tap table, built once per block: weight offset of the tap's B fragments, and the
  // window shift of its A rows, (td*R + off_h(th) - off_min_h) * C + off_w(tw) - off_min_w.
  const int64_t tap_stride = int64_t(prm.nchunks) * prm.ntiles * 64;
  int2* tab = reinterpret_cast<int2*>(xs + prm.window_floats);
  for (int t = threadIdx.x; t < taps; t += blockDim.x) {
    const int tw = t % wd[2].T, th = (t / wd[2].T) % wd[1].T, td = t / (wd[2].T * wd[1].T);
    const int r = ((wd[0].r0 + td * wd[0].rs) * int(P.k[1]) + wd[1].r0 + th * wd[1].rs) *
                      int(P.k[2]) + wd[2].r0 + tw * wd[2].rs;
    const int sh = wd[1].off0 + th * wd[1].dstep - win_off_min(wd[1]);
    const int sw = wd[2].off0 + tw * wd[2].dstep - win_off_min(wd[2]);
    tab[t] = make_int2(int(r * tap_stride), ((td * R + sh) * C + sw) * RS);
  }

  const T* __restrict__ src = static_cast<const T*>(prm.src);
  const T* src_g = src + prm.src_l.at(n, int64_t(g) * prm.src_cg, 0);

  for (int chunk = 0; taps > 0 && chunk < prm.nchunks; ++chunk) {
    __syncthreads();  // the previous chunk's MMAs are done with xs (and the tap table is built)
    stage_window<T>(xs, src_g + int64_t(chunk) * kTcBK * prm.src_l.c, prm.src_l.c, prm.src_l.v,
                    int(prm.src_cg - chunk * kTcBK), Td, R, C, jd * wd[0].mult + wd[0].off0,
                    wd[0].dstep, wh0, ww0, prm.src_sz, prm.round_a);
    __syncthreads();

    // ---- every tap: B prefetched two taps ahead, A from the window through ldmatrix ----
    const float* wb = prm.wt_big + ((int64_t(g) * P.kvol() * prm.nchunks + chunk) * prm.ntiles +
                                    co0 / 8 + warp_n * NI) * 64 + lane * 2;
    const int64_t small_off = SPLIT3 ? prm.wt_small - prm.wt_big : 0;
    float2 b0[NI], b1[NI], b2[NI], s0[NI], s1[NI], s2[NI];
    auto load_b = [&](int t, float2 (&bb)[NI], float2 (&bs)[NI]) {
      if (t < taps) {
        const float* p = wb + tab[t].x;
#pragma unroll
        for (int j = 0; j < NI; ++j) {
          bb[j] = __ldg(reinterpret_cast<const float2*>(p + j * 64));
          if (SPLIT3) bs[j] = __ldg(reinterpret_cast<const float2*>(p + small_off + j * 64));
        }
      }
    };
    // A fragments are software-pipelined too: tap t+1's ldmatrix is issued before tap t's
    // MMAs (the asm is volatile, so program order is issue order), hiding its latency.
    uint32_t a_cur[MI][4], a_nxt[MI][4];
    auto load_a = [&](int t, uint32_t (&a)[MI][4]) {
      const int shift = tab[t].y;
#pragma unroll
      for (int i = 0; i < MI; ++i) ldmatrix_x4(a[i], smem_u32(xs + a_base[i] + shift));
    };
    load_b(0, b0, s0);
    load_b(1, b1, s1);
    load_a(0, a_cur);
    for (int t = 0; t < taps; ++t) {
      load_b(t + 2, b2, s2);
      if (t + 1 < taps) load_a(t + 1, a_nxt);
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const uint32_t (&a)[4] = a_cur[i];
        if (SPLIT3) {
          uint32_t ab[4], as[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            ab[e] = tf32_rna(__uint_as_float(a[e]));
            as[e] = tf32_rna(__uint_as_float(a[e]) - __uint_as_float(ab[e]));
          }
#pragma unroll
          for (int j = 0; j < NI; ++j) {
            const uint32_t bb0 = __float_as_uint(b0[j].x), bb1 = __float_as_uint(b0[j].y);
            mma_tf32(blk[i][j], ab, bb0, bb1);
            mma_tf32(cor[i][j], as, bb0, bb1);
            mma_tf32(cor[i][j], ab, __float_as_uint(s0[j].x), __float_as_uint(s0[j].y));
          }
        } else {
#pragma unroll
          for (int j = 0; j < NI; ++j)
            mma_tf32(acc[i][j], a, __float_as_uint(b0[j].x), __float_as_uint(b0[j].y));
        }
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) a_cur[i][e] = a_nxt[i][e];
      if (SPLIT3 && (t % kFlushTaps == kFlushTaps - 1 || t == taps - 1)) {
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
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        b0[j] = b1[j];
        b1[j] = b2[j];
        if (SPLIT3) {
          s0[j] = s1[j];
          s1[j] = s2[j];
        }
      }
    }
  }

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
template <typename T, int BM, int BN, int WM_, int WN_, bool SPLIT3>
static void launch_window_tc(const WinParams& prm, dim3 grid, int64_t smem, cudaStream_t stream) {
  auto kernel = window_tc_kernel<T, BM, BN, WM_, WN_, SPLIT3>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, bool SPLIT3>
static void dispatch_window_bn(int bn, const WinParams& prm, dim3 grid, int64_t smem, cudaStream_t stream) {
  // Thin N: 256 rows, so each B fragment feeds two MMAs; BN = 64: 128 rows, 4 x 2 warps.
  if (bn == 16) launch_window_tc<T, 256, 16, 8, 1, SPLIT3>(prm, grid, smem, stream);
  else if (bn == 32) launch_window_tc<T, 256, 32, 8, 1, SPLIT3>(prm, grid, smem, stream);
  else launch_window_tc<T, 128, 64, 4, 2, SPLIT3>(prm, grid, smem, stream);
}

// Runs one window convolution: fills in the launch geometry of prm (made by win_params),
// transforms the weight, launches. Returns false
// (launching nothing) where the kernel does not fit: a GPU older than sm_80, or a window
// larger than shared memory.
template <typename T>
bool run_window_tc(WinParams prm, const at::Tensor& w, bool tf32) {
  const Problem& P = prm.P;
  const int dev = w.get_device();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  if (prop->major < 8) return false;
  const int bn = prm.out_cg <= 16 ? 16 : prm.out_cg <= 32 ? 32 : 64;
  const int64_t bm = bn == 64 ? 128 : 256;  // as dispatch_window_bn
  const int64_t nsub = prm.job == kJobForward ? P.G * P.s[0] * P.s[1] * P.s[2] : P.G;
  const int64_t nz = prm.job == kJobForward ? P.s[0] * P.s[1] * P.s[2] : 1;
  int64_t tpp = 0, pd_max = 0, max_taps = 0, most = 0;
  for (int64_t z = 0; z < nz; ++z) {  // sub-problems differ by phase only, not by group
    WinDim wd[3];
    win_dims(P, prm.job, int(z), wd);
    if (wd[0].P == 0 || wd[1].P == 0 || wd[2].P == 0) continue;
    tpp = std::max<int64_t>(tpp, (int64_t(wd[1].P) * wd[2].P + bm - 1) / bm);
    pd_max = std::max<int64_t>(pd_max, wd[0].P);
    max_taps = std::max<int64_t>(max_taps, int64_t(wd[0].T) * wd[1].T * wd[2].T);
    const int64_t rows = (std::min<int64_t>(wd[1].P, (bm + wd[2].P - 1) / wd[2].P + 1) - 1) * wd[1].mult +
                         win_span(wd[1]) + 1;
    const int64_t cols = int64_t(wd[2].P - 1) * wd[2].mult + win_span(wd[2]) + 1;
    most = std::max<int64_t>(most, int64_t(std::max(wd[0].T, 1)) * rows * cols);
  }
  const int64_t wfloats = (most * kTcRowStride + 3) / 4 * 4;  // the tap table stays 16-byte aligned
  const int64_t smem = (wfloats + 2 * max_taps) * int64_t(sizeof(float));
  if (tpp == 0 || smem > int64_t(prop->sharedMemPerBlockOptin)) return false;

  const int64_t nchunks = (prm.src_cg + kTcBK - 1) / kTcBK;
  const int64_t ntiles = (prm.out_cg + bn - 1) / bn * (bn / 8);
  // fp32: TF32 where the caller allows it, else 3xTF32 (the Python layer decides; it also
  // asks for exact results on the shapes where PyTorch computes exactly under TF32).
  const bool fp32 = std::is_same<T, float>::value;
  const bool split = fp32 && !tf32;
  const int mode = !fp32 ? kWeightExact : split ? kWeightSplit : kWeightTf32;
  const int64_t wt_numel = P.G * P.kvol() * nchunks * ntiles * 64;
  auto wt = at::empty({split ? 2 * wt_numel : wt_numel}, w.options().dtype(at::kFloat));
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t tblocks = std::min<int64_t>((wt_numel + 255) / 256, 4096);
  if (tblocks > 0) {  // none when the reduction is empty (0 source channels): out = bias
    transform_weight_kernel<T><<<tblocks, 256, 0, stream>>>(
        w.data_ptr<T>(), wt.data_ptr<float>(), split ? wt.data_ptr<float>() + wt_numel : nullptr, P,
        prm.job, int(nchunks), int(ntiles), mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  prm.wt_big = wt.data_ptr<float>();
  prm.wt_small = split ? wt.data_ptr<float>() + wt_numel : nullptr;
  prm.nchunks = int(nchunks);
  prm.ntiles = int(ntiles);
  prm.tiles_per_plane = int(tpp);
  prm.pd_max = int(pd_max);
  prm.window_floats = int(wfloats);
  prm.round_a = fp32 && !split;
  const int64_t gx = P.N * pd_max * tpp, gy = (prm.out_cg + bn - 1) / bn;
  TORCH_CHECK(gx < (int64_t(1) << 31) && gy <= 65535 && nsub <= 65535,
              "conv_transpose3d: problem too large for the tensor-core grid");
  const dim3 grid{unsigned(gx), unsigned(gy), unsigned(nsub)};
  if constexpr (std::is_same<T, float>::value) {
    if (split) {
      dispatch_window_bn<T, true>(bn, prm, grid, smem, stream);
      return true;
    }
  }
  dispatch_window_bn<T, false>(bn, prm, grid, smem, stream);
  return true;
}

}  // namespace ct3d
