// forward_tc.cu: the tensor-core forward, y = conv_transpose3d(x, w) + bias.
//
// GEMM view: as forward.cu (per group g and stride phase: M = output voxels of the
// phase, N = Cout/G, K = Cin/G * taps of the phase), with K ordered
// (8-channel chunk, tap).
//
// Block tile: kBM = 128 consecutive output positions of one plane (flattened (jh, jw) of
// one batch item n and one depth index jd of the phase) x BN output channels (16, 32 or
// 64; more channels take several blocks along grid.y). 8 warps as WARPS_M x WARPS_N,
// each a (kBM/WARPS_M) x (BN/WARPS_N) warp tile of m16n8k8 TF32 MMAs.
//
// The input window. Within a phase, tap t of output position j reads input position
// j + off0 - t*doff (common.cuh), so every tap's A operand is the same block of
// input, shifted. For each chunk of 8 input channels the block stages, once, the
// window of x that any of its positions reads through any tap:
//   T_d planes (one per depth tap) x R rows x C columns, as xs[position][8 channels]
// (12 floats a position: 48 bytes keeps ldmatrix conflict-free). Then, for every tap,
// each lane hands ldmatrix the window address of its row, shifted by the tap's
// offset: the im2col happens in the address, and x is read from global memory about
// (T_d * R / rows covered) times instead of once per tap.
//
// B (weights) is rearranged once per call by transform_weight_kernel into mma
// fragment order [g][tap][chunk][n8 tile][lane][2], zero-padded, already rounded or
// split, so each lane loads its B fragment with one 8-byte load (L1-resident).
//
// Precision. fp32 with TF32 allowed: A is rounded to TF32 (nearest-even) when staged,
// B in the transform, fp32 accumulation: what cuDNN does. fp32 strict: 3xTF32; each
// operand splits into big = tf32(v) and small = tf32(v - big); big*big accumulates in
// one set of registers, big*small + small*big in another, added at the end. fp16 and
// bf16: their values are exact in TF32, so one TF32 MMA computes exact products with
// fp32 accumulation, and the output is rounded once.
//
// Sections: kernels (weight transform, forward), launcher.
#include "common.cuh"

namespace ct3d {

constexpr int kTcBM = 128;       // output positions per block
constexpr int kTcBK = 8;         // input channels per staged window (one k8 MMA step)
constexpr int kTcRowStride = 12; // floats per window position (8 channels + 4 pad)

enum WeightMode : int { kWeightExact = 0, kWeightTf32 = 1, kWeightSplit = 2 };

struct FwdTcParams {
  const void* x;
  const float* wt_big;    // [G][kvol][nchunks][ntiles][32][2]
  const float* wt_small;  // same layout, 3xTF32 only
  const void* bias;       // may be null
  void* y;
  Problem P;
  int nchunks;            // ceil(Cin/G / 8)
  int ntiles;             // n8 tiles of the padded Cout/G
  int tiles_per_plane;    // grid.x decode: max over phases of ceil(Ph*Pw / kBM)
  int pd_max;             // max over phases of Pd
  bool round_a;           // TF32 mode: round A to TF32 when staging
};

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
// tap r is B[k = lane%4 + 4e][n = lane/4] = w[g*Cin/G + ch*8 + k, nt*8 + n, r].
template <typename T>
__global__ void transform_weight_kernel(const T* __restrict__ w, float* __restrict__ big,
                                        float* __restrict__ small, Problem P, int nchunks,
                                        int ntiles, int mode) {
  const int64_t total = P.G * P.kvol() * nchunks * ntiles * 64;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int e = int(t % 2); t /= 2;
    const int lane = int(t % 32); t /= 32;
    const int nt = int(t % ntiles); t /= ntiles;
    const int ch = int(t % nchunks); t /= nchunks;
    const int64_t r = t % P.kvol();
    const int64_t g = t / P.kvol();
    const int64_t ci = ch * kTcBK + lane % 4 + 4 * e, co = nt * 8 + lane / 4;
    float v = 0.f;
    if (ci < P.cin_g() && co < P.cout_g())
      v = float(w[((g * P.cin_g() + ci) * P.cout_g() + co) * P.kvol() + r]);
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

template <typename T, int BN, int WARPS_M, int WARPS_N, bool SPLIT3>
__global__ void __launch_bounds__(256) forward_tc_kernel(const FwdTcParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int WM = kTcBM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MI = WM / 16, NI = WN / 8;
  constexpr int RS = kTcRowStride;
  static_assert(WARPS_M * WARPS_N == 8 && MI >= 1 && NI >= 1, "8 warps, whole m16/n8 tiles");
  extern __shared__ __align__(16) float xs[];
  const Problem& P = prm.P;

  // ---- which phase, group, plane tile, channel tile ----
  const int nph = int(P.s[0] * P.s[1] * P.s[2]);
  const int g = blockIdx.z / nph;
  int ph = blockIdx.z % nph;
  const int cw = ph % int(P.s[2]); ph /= int(P.s[2]);
  const int chh = ph % int(P.s[1]);
  const int cd = ph / int(P.s[1]);
  PhaseDim pd[3];
  pd[0] = phase_dim(cd, int(P.k[0]), int(P.s[0]), int(P.p[0]), int(P.d[0]), int(P.out[0]));
  pd[1] = phase_dim(chh, int(P.k[1]), int(P.s[1]), int(P.p[1]), int(P.d[1]), int(P.out[1]));
  pd[2] = phase_dim(cw, int(P.k[2]), int(P.s[2]), int(P.p[2]), int(P.d[2]), int(P.out[2]));
  const int Pw = pd[2].P, Pplane = pd[1].P * pd[2].P;
  int bx = blockIdx.x;
  const int pt = bx % prm.tiles_per_plane; bx /= prm.tiles_per_plane;
  const int jd = bx % prm.pd_max;
  const int n = bx / prm.pd_max;
  const int m0 = pt * kTcBM;
  if (jd >= pd[0].P || m0 >= Pplane) return;
  const int co0 = blockIdx.y * BN;
  const int taps = pd[0].T * pd[1].T * pd[2].T;

  // ---- window geometry: T_d planes x R rows x C columns ----
  const int jh0 = m0 / Pw, jh1 = min(pd[1].P - 1, (m0 + kTcBM - 1) / Pw);
  const int Th = max(pd[1].T, 1), Tw = max(pd[2].T, 1), Td = max(pd[0].T, 1);
  const int R = jh1 - jh0 + 1 + (Th - 1) * pd[1].doff;
  const int C = Pw + (Tw - 1) * pd[2].doff;
  const int wh0 = jh0 + pd[1].off0 - (Th - 1) * pd[1].doff;  // input row of window row 0
  const int ww0 = pd[2].off0 - (Tw - 1) * pd[2].doff;         // input column of window column 0

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp % WARPS_M, warp_n = warp / WARPS_M;
  const int gq = lane / 4, tq = lane % 4;

  // ldmatrix row of this lane in each m16 tile: row (lane & 7) + 8 * ((lane >> 3) & 1),
  // channels 4 * (lane >> 4) .. +3. Its window position for tap (td, th, tw) is
  //   base + (td * R + (Th-1-th) * doff_h) * C + (Tw-1-tw) * doff_w.
  int a_base[MI];
#pragma unroll
  for (int i = 0; i < MI; ++i) {
    const int m = min(m0 + warp_m * WM + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, Pplane - 1);
    a_base[i] = (((m / Pw) - jh0) * C + m % Pw) * RS + (lane >> 4) * 4;
  }

  float acc[MI][NI][4], cor[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = cor[i][j][e] = 0.f;

  const T* __restrict__ x = static_cast<const T*>(prm.x);
  const int64_t HW = P.in[1] * P.in[2];
  const int64_t x_n = (int64_t(n) * P.Cin + int64_t(g) * P.cin_g()) * P.in[0] * HW;
  const int rows_per_chunk = kTcBK * Td * R;
  const int plane_rc = R * C;

  for (int chunk = 0; taps > 0 && chunk < prm.nchunks; ++chunk) {
    __syncthreads();  // the previous chunk's MMAs are done with xs
    // ---- stage the window: one warp per (channel, plane, row), lanes along columns ----
    for (int row = warp; row < rows_per_chunk; row += 8) {
      const int ci = row / (Td * R), pr = row % (Td * R);
      const int td = pr / R, r = pr % R;
      const int cig = chunk * kTcBK + ci;
      const int id = jd + pd[0].off0 - td * pd[0].doff, ih = wh0 + r;
      const bool row_ok = cig < P.cin_g() && unsigned(id) < unsigned(P.in[0]) &&
                          unsigned(ih) < unsigned(P.in[1]);
      const T* src = x + x_n + (int64_t(cig) * P.in[0] + id) * HW + int64_t(ih) * P.in[2];
      float* dst = xs + (td * plane_rc + r * C) * RS + ci;
      for (int c = lane; c < C; c += 32) {
        const int iw = ww0 + c;
        float v = 0.f;
        if (row_ok && unsigned(iw) < unsigned(P.in[2])) v = float(src[iw]);
        dst[c * RS] = prm.round_a ? round_tf32(v) : v;
      }
    }
    __syncthreads();

    // ---- every tap of the phase: B from the transformed weight, A from the window ----
    int td = 0, th = 0, tw = 0;
    const float* wb_chunk = prm.wt_big + (((int64_t(g) * P.kvol()) * prm.nchunks + chunk) *
                                          prm.ntiles + co0 / 8 + warp_n * NI) * 64 + lane * 2;
    const float* ws_chunk = SPLIT3 ? prm.wt_small + (wb_chunk - prm.wt_big) : nullptr;
    const int64_t tap_stride = int64_t(prm.nchunks) * prm.ntiles * 64;
    for (int t = 0; t < taps; ++t) {
      const int r = ((pd[0].r0 + td * pd[0].rs) * int(P.k[1]) + pd[1].r0 + th * pd[1].rs) *
                        int(P.k[2]) + pd[2].r0 + tw * pd[2].rs;
      const int shift = ((td * R + (Th - 1 - th) * pd[1].doff) * C + (Tw - 1 - tw) * pd[2].doff) * RS;
      float2 bb[NI], bs[NI];
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        bb[j] = *reinterpret_cast<const float2*>(wb_chunk + r * tap_stride + j * 64);
        if (SPLIT3) bs[j] = *reinterpret_cast<const float2*>(ws_chunk + r * tap_stride + j * 64);
      }
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        uint32_t a[4];
        ldmatrix_x4(a, smem_u32(xs + a_base[i] + shift));
        if (SPLIT3) {
          uint32_t ab[4], as[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            ab[e] = tf32_rna(__uint_as_float(a[e]));
            as[e] = tf32_rna(__uint_as_float(a[e]) - __uint_as_float(ab[e]));
          }
#pragma unroll
          for (int j = 0; j < NI; ++j) {
            const uint32_t b0 = __float_as_uint(bb[j].x), b1 = __float_as_uint(bb[j].y);
            mma_tf32(acc[i][j], ab, b0, b1);
            mma_tf32(cor[i][j], as, b0, b1);
            mma_tf32(cor[i][j], ab, __float_as_uint(bs[j].x), __float_as_uint(bs[j].y));
          }
        } else {
#pragma unroll
          for (int j = 0; j < NI; ++j)
            mma_tf32(acc[i][j], a, __float_as_uint(bb[j].x), __float_as_uint(bb[j].y));
        }
      }
      if (++tw == pd[2].T) {
        tw = 0;
        if (++th == pd[1].T) { th = 0; ++td; }
      }
    }
  }

  // ---- epilogue: bias, one rounding, store ----
  T* __restrict__ y = static_cast<T*>(prm.y);
  const T* __restrict__ bias = static_cast<const T*>(prm.bias);
  const int od = pd[0].c + int(P.s[0]) * jd;
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + warp_m * WM + i * 16 + gq + h * 8;
      if (m >= Pplane) continue;
      const int oh = pd[1].c + int(P.s[1]) * (m / Pw), ow = pd[2].c + int(P.s[2]) * (m % Pw);
      const int64_t y_pos = (int64_t(od) * P.out[1] + oh) * P.out[2] + ow;
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int co = co0 + warp_n * WN + j * 8 + 2 * tq + e;
          if (co >= P.cout_g()) continue;
          const int64_t c = int64_t(g) * P.cout_g() + co;
          float v = acc[i][j][h * 2 + e] + (SPLIT3 ? cor[i][j][h * 2 + e] : 0.f);
          if (bias) v += float(bias[c]);
          y[(int64_t(n) * P.Cout + c) * P.out_vol() + y_pos] = T(v);
        }
    }
#endif
}

// ============================================================================
// Launcher
// ============================================================================
// Shared memory of the largest window over the phases.
static int64_t window_bytes(const Problem& P, int64_t* tiles_per_plane, int64_t* pd_max) {
  int64_t most = 0;
  *tiles_per_plane = 0;
  *pd_max = 0;
  for (int cd = 0; cd < P.s[0]; ++cd)
    for (int ch = 0; ch < P.s[1]; ++ch)
      for (int cw = 0; cw < P.s[2]; ++cw) {
        const PhaseDim d = phase_dim(cd, int(P.k[0]), int(P.s[0]), int(P.p[0]), int(P.d[0]), int(P.out[0]));
        const PhaseDim h = phase_dim(ch, int(P.k[1]), int(P.s[1]), int(P.p[1]), int(P.d[1]), int(P.out[1]));
        const PhaseDim w = phase_dim(cw, int(P.k[2]), int(P.s[2]), int(P.p[2]), int(P.d[2]), int(P.out[2]));
        if (d.P == 0 || h.P == 0 || w.P == 0) continue;
        *tiles_per_plane = std::max<int64_t>(*tiles_per_plane, (int64_t(h.P) * w.P + kTcBM - 1) / kTcBM);
        *pd_max = std::max<int64_t>(*pd_max, d.P);
        const int64_t rows = std::min<int64_t>(h.P, (kTcBM + w.P - 1) / w.P + 1) +
                             int64_t(std::max(h.T, 1) - 1) * h.doff;
        const int64_t cols = w.P + int64_t(std::max(w.T, 1) - 1) * w.doff;
        most = std::max<int64_t>(most, int64_t(std::max(d.T, 1)) * rows * cols);
      }
  return most * kTcRowStride * int64_t(sizeof(float));
}

template <typename T, int BN, int WM_, int WN_, bool SPLIT3>
static void launch_forward_tc(const FwdTcParams& prm, dim3 grid, int64_t smem, cudaStream_t stream) {
  auto kernel = forward_tc_kernel<T, BN, WM_, WN_, SPLIT3>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, 256, smem, stream>>>(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, bool SPLIT3>
static void dispatch_bn(int bn, const FwdTcParams& prm, dim3 grid, int64_t smem, cudaStream_t stream) {
  if (bn == 16) launch_forward_tc<T, 16, 8, 1, SPLIT3>(prm, grid, smem, stream);
  else if (bn == 32) launch_forward_tc<T, 32, 8, 1, SPLIT3>(prm, grid, smem, stream);
  else launch_forward_tc<T, 64, 4, 2, SPLIT3>(prm, grid, smem, stream);
}

// Returns false (and launches nothing) when this problem does not fit the kernel:
// a GPU older than sm_80, or an input window larger than shared memory.
template <typename T>
bool forward_tc(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias, at::Tensor& y,
                const Problem& P, bool tf32) {
  const int dev = x.get_device();
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(dev);
  if (prop->major < 8) return false;
  int64_t tpp = 0, pd_max = 0;
  const int64_t smem = window_bytes(P, &tpp, &pd_max);
  if (smem > int64_t(prop->sharedMemPerBlockOptin)) return false;
  if (tpp == 0) {  // every phase empty along some axis: nothing to compute (cannot happen for valid sizes)
    return false;
  }
  const int bn = P.cout_g() <= 16 ? 16 : P.cout_g() <= 32 ? 32 : 64;
  const int64_t nchunks = (P.cin_g() + kTcBK - 1) / kTcBK;
  const int64_t ntiles = (P.cout_g() + bn - 1) / bn * (bn / 8);
  const bool fp32 = std::is_same<T, float>::value;
  const bool split = fp32 && !tf32;
  const int mode = !fp32 ? kWeightExact : tf32 ? kWeightTf32 : kWeightSplit;
  const int64_t wt_numel = P.G * P.kvol() * nchunks * ntiles * 64;
  auto wt = at::empty({split ? 2 * wt_numel : wt_numel}, x.options().dtype(at::kFloat));
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t tblocks = std::min<int64_t>((wt_numel + 255) / 256, 4096);
  transform_weight_kernel<T><<<tblocks, 256, 0, stream>>>(
      w.data_ptr<T>(), wt.data_ptr<float>(), split ? wt.data_ptr<float>() + wt_numel : nullptr, P,
      int(nchunks), int(ntiles), mode);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  FwdTcParams prm{x.data_ptr<T>(), wt.data_ptr<float>(), split ? wt.data_ptr<float>() + wt_numel : nullptr,
                  bias ? bias->data_ptr<T>() : nullptr, y.data_ptr<T>(), P, int(nchunks), int(ntiles),
                  int(tpp), int(pd_max), fp32 && tf32};
  const int64_t gx = P.N * pd_max * tpp;
  const int64_t gy = (P.cout_g() + bn - 1) / bn;
  const int64_t gz = P.G * P.s[0] * P.s[1] * P.s[2];
  TORCH_CHECK(gx < (int64_t(1) << 31) && gy <= 65535 && gz <= 65535,
              "conv_transpose3d: problem too large for the tensor-core forward grid");
  const dim3 grid{unsigned(gx), unsigned(gy), unsigned(gz)};
  if constexpr (std::is_same<T, float>::value) {
    if (split) {
      dispatch_bn<T, true>(bn, prm, grid, smem, stream);
      return true;
    }
  }
  dispatch_bn<T, false>(bn, prm, grid, smem, stream);
  return true;
}

template bool forward_tc<float>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&,
                                const Problem&, bool);
template bool forward_tc<at::Half>(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&,
                                   const Problem&, bool);
template bool forward_tc<at::BFloat16>(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                       at::Tensor&, const Problem&, bool);

}  // namespace ct3d
