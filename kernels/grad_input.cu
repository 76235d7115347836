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
// Two kernels run it. grad_input_tc: the tensor-core window convolution of window_tc.cuh
// with src = dy, position multiplier s and tap offsets r*d - p, one sub-problem per
// group; the default. grad_input_tiled: common.cuh's FFMA tile (blockIdx.z = g), the
// fallback where the window does not fit in shared memory, and algo="tiled".
//
// Sections: the FFMA Gemm (gather rule + epilogue), launchers.
#include "common.cuh"
#include "window_tc.cuh"
#include "window_wg.cuh"

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
// Launchers
// ============================================================================
// Tensor cores; false where the kernel does not fit (see run_window_tc).
template <typename T>
bool grad_input_tc(const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx, const Problem& P,
                   bool tf32, int64_t algo) {
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
