// common.cuh: what every job (forward, grad input, grad weight) shares.
//
// ConvTranspose3d and its three GEMMs (per group g; x: [N, Cin, D, H, W],
// w: [Cin, Cout/G, kD, kH, kW], y: [N, Cout, Do, Ho, Wo]):
//
//   job          | as a Conv3d pass | M                        | N (GEMM)     | K
//   -------------+------------------+--------------------------+--------------+---------------------------
//   forward  y   | dgrad            | N*Do*Ho*Wo in one phase  | Cout/G       | Cin/G * taps of that phase
//   grad in  dx  | fprop            | N*D*H*W                  | Cin/G        | Cout/G * kD*kH*kW
//   grad w   dw  | wgrad            | Cin/G                    | Cout/G*kvol  | N*D*H*W (split across blocks)
//
// The one index rule behind all three (per spatial dimension): input voxel i
// and kernel tap r touch output voxel
//     o = i*s - p + r*d                                              (1)
// and nothing else. Each job gathers its GEMM operands through (1).
//
// Sections: problem size, forward stride phases, precision helpers, the generic
// tiled mainloop.
#pragma once

#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

namespace ct3d {

// ============================================================================
// Problem size: every launcher takes one.
// ============================================================================
// Element strides of an activation tensor: voxel v (d, h, w flattened) of channel c of
// batch item n sits at n*sn + c*sc + v*sv. Contiguous NCDHW (sv = 1) and channels_last_3d
// (sc = 1, sv = C) both have this form, as do views that slice the batch or the channels;
// api.cu copies any other view to contiguous first.
struct Layout {
  int64_t n, c, v;
  __host__ __device__ int64_t at(int64_t n_, int64_t c_, int64_t v_) const {
    return n_ * n + c_ * c + v_ * v;
  }
};

struct Problem {
  int64_t N, Cin, Cout, G;  // batch, input and output channels, groups
  int64_t in[3];            // D, H, W of x
  int64_t out[3];           // Do, Ho, Wo of y
  int64_t k[3];             // kD, kH, kW
  int64_t s[3], p[3], op[3], d[3];  // stride, padding, output_padding, dilation
  Layout xl;                // the tensor of the input's shape in this call: x or dx
  Layout yl;                // the tensor of the output's shape: y or dy

  __host__ __device__ int64_t cin_g() const { return Cin / G; }
  __host__ __device__ int64_t cout_g() const { return Cout / G; }
  __host__ __device__ int64_t in_vol() const { return in[0] * in[1] * in[2]; }
  __host__ __device__ int64_t out_vol() const { return out[0] * out[1] * out[2]; }
  __host__ __device__ int64_t kvol() const { return k[0] * k[1] * k[2]; }
};

// Builds and validates a Problem from tensor sizes (the Python layer has
// already given PyTorch-style messages; these are the last line of defence).
Problem make_problem(at::IntArrayRef x_sizes, at::IntArrayRef w_sizes,
                     at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef output_padding, at::IntArrayRef dilation,
                     int64_t groups);

// Which kernel family runs a job. kAuto: for fp16/bf16/fp32, the tensor-core kernels where
// they fit, else the FFMA tiled ones; direct for fp64. kTiled: the FFMA tiled kernels.
// kDirect: the simple exact kernels. kTc: tensor cores, an error where they do not fit.
// kTcMma, kTcWgmma: kTc with the forward and grad input window kernels on mma.sync only
// (window_tc.cuh), or on wgmma wherever it can run (window_wg.cuh; tests), not by the
// usual choice (nor by the thin-group forward, forward.cu, which kAuto and kTc take where
// Cin/G and Cout/G are at most 8). Grad weight: mma.sync under kTcMma, else wgmma wherever it runs.
enum Algo : int64_t { kAuto = 0, kTiled = 1, kDirect = 2, kTc = 3, kTcMma = 4, kTcWgmma = 5 };
inline bool tc_required(int64_t algo) { return algo == kTc || algo == kTcMma || algo == kTcWgmma; }

bool poison_enabled();  // test switch, see api.cu
void check_cuda_tensor(const at::Tensor& t, const char* name, const at::Tensor& like);
int num_sms(int device);

// ============================================================================
// Forward stride phases (one spatial dimension; forward.cu's header explains them)
// ============================================================================
struct PhaseDim {
  int c;     // output residue: this phase holds o = c + s*j
  int P;     // number of output positions in the phase
  int r0;    // first valid tap
  int rs;    // tap step
  int T;     // number of valid taps
  int off0;  // input offset of tap 0: i = j + off0 - t*doff
  int doff;  // input offset step per tap
};

__host__ __device__ inline int gcd_int(int a, int b) {
  while (b) { const int t = a % b; a = b; b = t; }
  return a;
}

__host__ __device__ inline PhaseDim phase_dim(int c, int k, int s, int p, int d, int out) {
  PhaseDim ph;
  ph.c = c;
  ph.P = c < out ? (out - c + s - 1) / s : 0;
  ph.r0 = -1;
  for (int r = 0; r < k; ++r)
    if ((c + p - r * d) % s == 0) { ph.r0 = r; break; }  // remainder 0 <=> divisible, any sign
  const int g = gcd_int(s, d);
  ph.rs = s / g;
  ph.T = ph.r0 < 0 ? 0 : (k - 1 - ph.r0) / ph.rs + 1;
  ph.off0 = ph.r0 < 0 ? 0 : (c + p - ph.r0 * d) / s;  // exact division
  ph.doff = d / g;
  return ph;
}

// ============================================================================
// Precision helpers
// ============================================================================
// Round an fp32 value to TF32 (10 explicit mantissa bits), ties to even: the
// rounding cuDNN applies to both operands when TF32 is allowed. sm_90 has it as one
// instruction (cvt.rn.tf32.f32, F2FP.TF32 in SASS); older cards have only cvt.rna (ties
// away), so there it is integer ops (six instructions), which scripts/tf32_cvt_check.cu
// checks bit for bit against the instruction over all 2^32 inputs (NaNs: any NaN).
// Inf and NaN stay inf and NaN.
__device__ __forceinline__ float round_tf32_int(float v) {
  uint32_t u = __float_as_uint(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;
  u += 0xfffu + ((u >> 13) & 1u);
  return __uint_as_float(u & 0xffffe000u);
}
__device__ __forceinline__ float round_tf32(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t r;
  asm("cvt.rn.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
#else
  return round_tf32_int(v);
#endif
}

// Two values as one 32-bit word of 16-bit T (lo in the low half), each rounded once as
// T(v) rounds it (nearest-even): packed weight fragments and paired 16-bit stores.
template <typename T>
__device__ __forceinline__ uint32_t pack2_16(float lo, float hi) {
  const T a = T(lo), b = T(hi);
  uint16_t ua, ub;
  memcpy(&ua, &a, 2);
  memcpy(&ub, &b, 2);
  return uint32_t(ua) | (uint32_t(ub) << 16);
}

// 3xTF32 split of an fp32 value v = big + small, both with their low 13 bits clear: big
// truncates v, small = v - big (exact, at most 13 significant bits) rounded to nearest.
// Four instructions a value where two cvt.rna.tf32 (emulated with inf/NaN checks) and a
// subtraction take nine: the split was most of the 3xTF32 kernel's instructions. Error of
// big*b + small*b against v*b: below 2^-21 |v b| (a rounded big would halve it); NaN and
// inf stay non-finite.
__device__ __forceinline__ void split_tf32(uint32_t v, uint32_t& big, uint32_t& small) {
  big = v & 0xffffe000u;
  small = (__float_as_uint(__uint_as_float(v) - __uint_as_float(big)) + 0x1000u) & 0xffffe000u;
}

// The four values of a 16-byte piece, rounded to TF32 (round_tf32) or split (split_tf32:
// big stays in v, small goes to small): the in-place passes over staged tiles.
__device__ __forceinline__ float4 round_tf32_4(float4 v) {
  return make_float4(round_tf32(v.x), round_tf32(v.y), round_tf32(v.z), round_tf32(v.w));
}
__device__ __forceinline__ void split_tf32_4(uint4& v, uint4& small) {
  split_tf32(v.x, v.x, small.x);
  split_tf32(v.y, v.y, small.y);
  split_tf32(v.z, v.z, small.z);
  split_tf32(v.w, v.w, small.w);
}

// An integer setting from the environment (tuning and A/B switches), or `unset` (INT_MIN:
// tell "not set" from any value) where the variable is not set; callers read it once and
// clamp it.
inline int env_int(const char* name, int unset) {
  const char* s = std::getenv(name);
  return s == nullptr ? unset : std::atoi(s);
}

// A kernel's dynamic shared-memory limit (cudaFuncSetAttribute) raised to at least `bytes`
// on the current device, and its resident blocks an SM at `threads` and `bytes`
// (cudaOccupancyMaxActiveBlocksPerMultiprocessor). Both remembered per device and kernel
// (and size), so that a call of ours pays for them once, not at every launch.
inline std::mutex& launch_cache_mutex() {
  static std::mutex m;
  return m;
}
inline void set_smem_limit(const void* kernel, int64_t bytes) {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  static std::map<std::pair<int, const void*>, int64_t> done;  // the limit set so far
  std::lock_guard<std::mutex> lock(launch_cache_mutex());
  int64_t& set = done[{dev, kernel}];
  if (bytes <= set) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  set = bytes;
}
inline int blocks_per_sm(const void* kernel, int threads, int64_t bytes) {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  static std::map<std::tuple<int, const void*, int, int64_t>, int> known;
  std::lock_guard<std::mutex> lock(launch_cache_mutex());
  const auto key = std::make_tuple(dev, kernel, threads, bytes);
  auto it = known.find(key);
  if (it != known.end()) return it->second;
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, size_t(bytes)));
  known[key] = n;
  return n;
}
template <typename K>
inline void set_smem_limit(K* kernel, int64_t bytes) { set_smem_limit(reinterpret_cast<const void*>(kernel), bytes); }
template <typename K>
inline int blocks_per_sm(K* kernel, int threads, int64_t bytes) {
  return blocks_per_sm(reinterpret_cast<const void*>(kernel), threads, bytes);
}

// Rounds an fp64 sum to the output type. fp16/bf16 round through fp32: that
// differs from one direct rounding only when the fp32 value lands exactly on
// a half-way point of the narrow type, which an fp64 sum practically never does.
template <typename T> __device__ __forceinline__ T cast_out(double v) { return T(float(v)); }
template <> __device__ __forceinline__ double cast_out<double>(double v) { return v; }

// Sum of one double per thread over a block of 256 threads, in a fixed order (a tree
// in shared memory): the same bits on every run. Returns the sum to thread 0.
__device__ __forceinline__ double block_sum_256(double v) {
  __shared__ double red[256];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int step = 128; step > 0; step >>= 1) {
    if (threadIdx.x < step) red[threadIdx.x] += red[threadIdx.x + step];
    __syncthreads();
  }
  return red[0];
}

// ============================================================================
// Generic tiled implicit GEMM (FFMA, fp32 accumulation)
// ============================================================================
// C[M, N] = A[M, K] * B[K, N] for each blockIdx.z (a group, a stride phase, a
// K split: the Gemm decides). The Gemm gathers A and B from the real tensors
// (no im2col buffer) and owns the epilogue. Its interface:
//   Sub  sub(int z)                        sizes and state of sub-problem z
//   Row  row(const Sub&, int64_t m)        per-row state, decoded once per tile
//   float a(const Sub&, const Row&, int64_t k)      A element (0 outside the tensor)
//   Col  col(const Sub&, int64_t n)        per-column state
//   float b(const Sub&, const Col&, int64_t k)      B element
//   void store(const Sub&, const Row&, const Col&, float acc)
// Sub has members M, Nn, k_begin, k_end. kMinBlocks: blocks per SM the registers must allow
// (2 caps them at 128; the forward's gather needs more, so it asks for 1 rather than spill).
//
// Tile: BM x BN outputs per block of 256 threads, BK deep, two shared-memory
// buffers with the next tile prefetched into registers while the current one
// is multiplied. Load mapping: thread t loads rows m = t % BM (fixed for the
// whole K loop, so the row's index decode is done once) and columns
// n = t % BN. Compute mapping: thread (tm, tn) owns rows tm + i*(BM/TM) and
// columns tn + j*(BN/TN), so neighbouring threads own neighbouring rows and
// the epilogue's stores along M (spatial positions) coalesce.
template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct TileCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int THREADS = (BM / TM) * (BN / TN);
  static_assert(THREADS == 256, "tile configs use 256 threads");
  static_assert(THREADS % BM == 0 && THREADS % BN == 0, "rows/cols fixed per loader thread");
  static constexpr int A_STEP = THREADS / BM, A_LOADS = BK / A_STEP;
  static constexpr int B_STEP = THREADS / BN, B_LOADS = BK / B_STEP;
  static_assert(A_LOADS * A_STEP == BK && B_LOADS * B_STEP == BK, "BK splits evenly");
};
using TileWide = TileCfg<64, 64, 16, 4, 4>;     // GEMM N > 16
using TileNarrow = TileCfg<128, 16, 16, 4, 2>;  // GEMM N <= 16 (few channels, many groups)

template <class Cfg, class Gemm>
__global__ void __launch_bounds__(256, Gemm::kMinBlocks) igemm_ffma_kernel(const Gemm gemm, bool tf32) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  const auto sub = gemm.sub(blockIdx.z);
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int64_t n0 = int64_t(blockIdx.y) * BN;
  if (m0 >= sub.M || n0 >= sub.Nn) return;  // grid covers the largest sub-problem

  __shared__ float As[2][BK][BM];
  __shared__ float Bs[2][BK][BN];
  const int tid = threadIdx.x;

  // Loader state: this thread's A row and B column are fixed for the K loop.
  const int la_m = tid % BM, la_k = tid / BM;
  const int lb_n = tid % BN, lb_k = tid / BN;
  const bool a_ok = m0 + la_m < sub.M;
  const bool b_ok = n0 + lb_n < sub.Nn;
  const auto arow = gemm.row(sub, a_ok ? m0 + la_m : m0);
  const auto bcol = gemm.col(sub, b_ok ? n0 + lb_n : n0);
  float ra[Cfg::A_LOADS], rb[Cfg::B_LOADS];

  auto load_regs = [&](int64_t kt) {
#pragma unroll
    for (int i = 0; i < Cfg::A_LOADS; ++i) {
      const int64_t k = kt + la_k + i * Cfg::A_STEP;
      float v = (a_ok && k < sub.k_end) ? gemm.a(sub, arow, k) : 0.f;
      ra[i] = tf32 ? round_tf32(v) : v;
    }
#pragma unroll
    for (int i = 0; i < Cfg::B_LOADS; ++i) {
      const int64_t k = kt + lb_k + i * Cfg::B_STEP;
      float v = (b_ok && k < sub.k_end) ? gemm.b(sub, bcol, k) : 0.f;
      rb[i] = tf32 ? round_tf32(v) : v;
    }
  };
  auto store_smem = [&](int buf) {
#pragma unroll
    for (int i = 0; i < Cfg::A_LOADS; ++i) As[buf][la_k + i * Cfg::A_STEP][la_m] = ra[i];
#pragma unroll
    for (int i = 0; i < Cfg::B_LOADS; ++i) Bs[buf][lb_k + i * Cfg::B_STEP][lb_n] = rb[i];
  };

  // Accumulation is blocked in three levels: products of one K tile sum into
  // `part`, every tile's `part` into `mid`, every kMidTiles tiles `mid` into
  // `acc`. A flat fp32 running sum over K terms errs like u*sqrt(K); blocking
  // cuts that to about u*(sqrt(BK) + sqrt(kMidTiles) + sqrt(K/(BK*kMidTiles))),
  // which keeps strict fp32 as accurate as cuDNN on long sums (grad weight's K
  // is batch x voxels). Costs one add per accumulator per tile.
  constexpr int kMidTiles = 32;
  const int tm = tid % (BM / TM), tn = tid / (BM / TM);
  float acc[TM][TN], mid[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = mid[i][j] = 0.f;

  int buf = 0, tiles = 0;
  if (sub.k_begin < sub.k_end) {
    load_regs(sub.k_begin);
    store_smem(0);
    __syncthreads();
  }
  for (int64_t kt = sub.k_begin; kt < sub.k_end; kt += BK) {
    const bool has_next = kt + BK < sub.k_end;
    if (has_next) load_regs(kt + BK);  // global loads in flight during the FMAs
    float part[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) part[i][j] = 0.f;
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = As[buf][kk][tm + i * (BM / TM)];
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = Bs[buf][kk][tn + j * (BN / TN)];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
    }
    const bool flush = ++tiles == kMidTiles;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        mid[i][j] += part[i][j];
        if (flush) { acc[i][j] += mid[i][j]; mid[i][j] = 0.f; }
      }
    if (flush) tiles = 0;
    if (has_next) {
      store_smem(buf ^ 1);  // the other buffer: nobody reads it this iteration
      __syncthreads();
      buf ^= 1;
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] += mid[i][j];

  // Epilogue: the Gemm adds bias / casts / writes partial sums.
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + tm + i * (BM / TM);
    if (m >= sub.M) continue;
    const auto r = gemm.row(sub, m);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tn + j * (BN / TN);
      if (n < sub.Nn) gemm.store(sub, r, gemm.col(sub, n), acc[i][j]);
    }
  }
}

// Launch helper: grid (M tiles, N tiles, Z) with the config chosen by N.
template <class Gemm>
void launch_igemm(const Gemm& gemm, int64_t max_m, int64_t max_n, int64_t z, bool tf32,
                  cudaStream_t stream) {
  if (max_m <= 0 || max_n <= 0 || z <= 0) return;
  TORCH_CHECK(z <= 65535, "conv_transpose3d: too many groups x stride phases (", z, ")");
  if (max_n <= 16) {
    using C = TileNarrow;
    dim3 grid((max_m + C::BM - 1) / C::BM, (max_n + C::BN - 1) / C::BN, z);
    TORCH_CHECK(grid.y <= 65535, "conv_transpose3d: GEMM N too large");
    igemm_ffma_kernel<C><<<grid, C::THREADS, 0, stream>>>(gemm, tf32);
  } else {
    using C = TileWide;
    dim3 grid((max_m + C::BM - 1) / C::BM, (max_n + C::BN - 1) / C::BN, z);
    TORCH_CHECK(grid.y <= 65535, "conv_transpose3d: GEMM N too large");
    igemm_ffma_kernel<C><<<grid, C::THREADS, 0, stream>>>(gemm, tf32);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ct3d
