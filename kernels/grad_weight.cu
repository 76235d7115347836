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
// grad bias: one block per output channel sums dy over batch and voxels in a
// fixed order (fp64 accumulation: this pass is memory-bound, so it is free).
//
// Sections: the Gemm (gather rule + epilogue), reduction kernels, launchers.
#include "common.cuh"

namespace ct3d {

constexpr int kMaxSplits = 32;

// ============================================================================
// The Gemm: gather rule and epilogue
// ============================================================================
template <typename T>
struct WgradGemm {
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
    int64_t x_base;  // x offset of (n = 0, channel g*Cin/G + ci, voxel 0)
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
    return Row{(int64_t(sb.g) * P.cin_g() + m) * P.in_vol(), m};
  }

  __device__ float a(const Sub&, const Row& r, int64_t k) const {
    const int64_t n = k / P.in_vol();
    const int64_t vox = k - n * P.in_vol();
    return float(x[n * P.Cin * P.in_vol() + r.x_base + vox]);
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
    c.dy_base = (int64_t(sb.g) * P.cout_g() + co) * P.out_vol();
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
    return float(dy[n * P.Cout * P.out_vol() + c.dy_base + (int64_t(od) * P.out[1] + oh) * P.out[2] + ow]);
  }

  __device__ void store(const Sub& sb, const Row& r, const Col& c, float acc) const {
    const int64_t numel = P.Cin * P.cout_g() * P.kvol();
    ws[sb.split * numel + (int64_t(sb.g) * P.cin_g() + r.ci) * P.cout_g() * P.kvol() + c.col] = acc;
  }
};

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
                                                        int64_t N, int64_t C, int64_t vol) {
  const int64_t c = blockIdx.x;
  double acc = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = dy + (n * C + c) * vol;
    for (int64_t v = threadIdx.x; v < vol; v += blockDim.x) acc += double(row[v]);
  }
  __shared__ double red[256];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int step = 128; step > 0; step >>= 1) {
    if (threadIdx.x < step) red[threadIdx.x] += red[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[c] = cast_out<T>(red[0]);
}

// ============================================================================
// Launchers
// ============================================================================
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
      dy.data_ptr<T>(), db.data_ptr<T>(), P.N, P.Cout, P.out_vol());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define CT3D_INSTANTIATE_WGRAD(T)                                                            \
  template void grad_weight_tiled<T>(const at::Tensor&, const at::Tensor&, at::Tensor&,      \
                                     const Problem&, bool);
CT3D_INSTANTIATE_WGRAD(float)
CT3D_INSTANTIATE_WGRAD(at::Half)
CT3D_INSTANTIATE_WGRAD(at::BFloat16)
template void grad_bias<float>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<double>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::Half>(const at::Tensor&, at::Tensor&, const Problem&);
template void grad_bias<at::BFloat16>(const at::Tensor&, at::Tensor&, const Problem&);

}  // namespace ct3d
