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
// Two kernels run it. forward_tc: the tensor-core window convolution of window_tc.cuh
// (one sub-problem per group and phase), the default. forward_tiled: common.cuh's FFMA
// tile (TileWide 64x64x16 or TileNarrow 128x16x16 by Cout/G, 256 threads, fp32
// accumulation, TF32 rounding of both operands when the caller allows TF32), the
// fallback where the tensor-core kernel does not fit, and algo="tiled".
//
// Sections: the FFMA Gemm (gather rule + epilogue), launchers. Phase geometry: common.cuh.
#include "common.cuh"
#include "window_tc.cuh"
#include "window_wg.cuh"

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
// Launchers
// ============================================================================
// Tensor cores; false where the kernel does not fit (see run_window_tc).
template <typename T>
bool forward_tc(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias, at::Tensor& y,
                const Problem& P, bool tf32, int64_t algo) {
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
