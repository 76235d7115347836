// direct.cu: the simple exact kernels. The fp64 path, and the oracle the
// tiled kernels are tested against (selectable for every dtype with algo="direct").
//
// No GEMM view, no tiles: one thread per output element of the job (one block
// per dw element, whose sum is long; activations addressed through P.xl / P.yl), each walking its whole reduction
// through the index rule (1) of common.cuh, accumulating in fp64 and rounding
// once. Slow, obviously right, and bitwise deterministic.
//
// Sections: kernels, launchers.
#include "common.cuh"

namespace ct3d {

// ============================================================================
// Kernels
// ============================================================================
// y[n, co, o] = bias[co] + sum_{ci in group, r : (o + p - r*d) % s == 0} x[n, ci, (o + p - r*d)/s] * w[ci, co', r]
template <typename T>
__global__ void forward_direct_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                      const T* __restrict__ bias, T* __restrict__ y, Problem P) {
  const int64_t total = P.N * P.Cout * P.out_vol();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int64_t ow = t % P.out[2]; t /= P.out[2];
    const int64_t oh = t % P.out[1]; t /= P.out[1];
    const int64_t od = t % P.out[0]; t /= P.out[0];
    const int64_t co = t % P.Cout;
    const int64_t n = t / P.Cout;
    const int64_t g = co / P.cout_g(), cog = co % P.cout_g();
    double acc = bias ? double(bias[co]) : 0.0;
    for (int64_t cig = 0; cig < P.cin_g(); ++cig) {
      const int64_t ci = g * P.cin_g() + cig;
      for (int64_t rd = 0; rd < P.k[0]; ++rd) {
        const int64_t nd = od + P.p[0] - rd * P.d[0];  // = id * s
        if (nd % P.s[0] != 0 || nd < 0 || nd / P.s[0] >= P.in[0]) continue;
        for (int64_t rh = 0; rh < P.k[1]; ++rh) {
          const int64_t nh = oh + P.p[1] - rh * P.d[1];
          if (nh % P.s[1] != 0 || nh < 0 || nh / P.s[1] >= P.in[1]) continue;
          for (int64_t rw = 0; rw < P.k[2]; ++rw) {
            const int64_t nw = ow + P.p[2] - rw * P.d[2];
            if (nw % P.s[2] != 0 || nw < 0 || nw / P.s[2] >= P.in[2]) continue;
            const int64_t xi = P.xl.at(n, ci, ((nd / P.s[0]) * P.in[1] + nh / P.s[1]) * P.in[2] + nw / P.s[2]);
            const int64_t wi = ((ci * P.cout_g() + cog) * P.k[0] + rd) * P.k[1] * P.k[2] + rh * P.k[2] + rw;
            acc += double(x[xi]) * double(w[wi]);
          }
        }
      }
    }
    y[P.yl.at(n, co, (od * P.out[1] + oh) * P.out[2] + ow)] = cast_out<T>(acc);
  }
}

// dx[n, ci, i] = sum_{co in group, r : o = i*s - p + r*d inside dy} dy[n, co, o] * w[ci, co', r]
template <typename T>
__global__ void grad_input_direct_kernel(const T* __restrict__ dy, const T* __restrict__ w,
                                         T* __restrict__ dx, Problem P) {
  const int64_t total = P.N * P.Cin * P.in_vol();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int64_t iw = t % P.in[2]; t /= P.in[2];
    const int64_t ih = t % P.in[1]; t /= P.in[1];
    const int64_t id = t % P.in[0]; t /= P.in[0];
    const int64_t ci = t % P.Cin;
    const int64_t n = t / P.Cin;
    const int64_t g = ci / P.cin_g();
    double acc = 0.0;
    for (int64_t cog = 0; cog < P.cout_g(); ++cog) {
      const int64_t co = g * P.cout_g() + cog;
      for (int64_t rd = 0; rd < P.k[0]; ++rd) {
        const int64_t od = id * P.s[0] - P.p[0] + rd * P.d[0];
        if (od < 0 || od >= P.out[0]) continue;
        for (int64_t rh = 0; rh < P.k[1]; ++rh) {
          const int64_t oh = ih * P.s[1] - P.p[1] + rh * P.d[1];
          if (oh < 0 || oh >= P.out[1]) continue;
          for (int64_t rw = 0; rw < P.k[2]; ++rw) {
            const int64_t ow = iw * P.s[2] - P.p[2] + rw * P.d[2];
            if (ow < 0 || ow >= P.out[2]) continue;
            const int64_t yi = P.yl.at(n, co, (od * P.out[1] + oh) * P.out[2] + ow);
            const int64_t wi = ((ci * P.cout_g() + cog) * P.k[0] + rd) * P.k[1] * P.k[2] + rh * P.k[2] + rw;
            acc += double(dy[yi]) * double(w[wi]);
          }
        }
      }
    }
    dx[P.xl.at(n, ci, (id * P.in[1] + ih) * P.in[2] + iw)] = cast_out<T>(acc);
  }
}

// One block per dw element: dw[ci, co', r] = sum_{n, i : o = i*s - p + r*d inside dy} x[n, ci, i] * dy[n, co, o]
template <typename T>
__global__ void __launch_bounds__(256) grad_weight_direct_kernel(const T* __restrict__ x,
                                                                 const T* __restrict__ dy,
                                                                 T* __restrict__ dw, Problem P) {
  int64_t t = blockIdx.x;
  const int64_t rw = t % P.k[2]; t /= P.k[2];
  const int64_t rh = t % P.k[1]; t /= P.k[1];
  const int64_t rd = t % P.k[0]; t /= P.k[0];
  const int64_t cog = t % P.cout_g();
  const int64_t ci = t / P.cout_g();
  const int64_t co = (ci / P.cin_g()) * P.cout_g() + cog;
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < P.N * P.in_vol(); k += blockDim.x) {
    int64_t u = k;
    const int64_t iw = u % P.in[2]; u /= P.in[2];
    const int64_t ih = u % P.in[1]; u /= P.in[1];
    const int64_t id = u % P.in[0];
    const int64_t n = u / P.in[0];
    const int64_t od = id * P.s[0] - P.p[0] + rd * P.d[0];
    const int64_t oh = ih * P.s[1] - P.p[1] + rh * P.d[1];
    const int64_t ow = iw * P.s[2] - P.p[2] + rw * P.d[2];
    if (od < 0 || od >= P.out[0] || oh < 0 || oh >= P.out[1] || ow < 0 || ow >= P.out[2]) continue;
    const int64_t xi = P.xl.at(n, ci, (id * P.in[1] + ih) * P.in[2] + iw);
    const int64_t yi = P.yl.at(n, co, (od * P.out[1] + oh) * P.out[2] + ow);
    acc += double(x[xi]) * double(dy[yi]);
  }
  const double sum = block_sum_256(acc);
  if (threadIdx.x == 0) dw[blockIdx.x] = cast_out<T>(sum);
}

// ============================================================================
// Launchers
// ============================================================================
static int64_t grid_for(int64_t total, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>((total + threads - 1) / threads, 1 << 20));
}

template <typename T>
void forward_direct(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias,
                    at::Tensor& y, const Problem& P) {
  if (y.numel() == 0) return;
  forward_direct_kernel<T><<<grid_for(y.numel(), 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(), w.data_ptr<T>(), bias ? bias->data_ptr<T>() : nullptr, y.data_ptr<T>(), P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void grad_input_direct(const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx, const Problem& P) {
  if (dx.numel() == 0) return;
  grad_input_direct_kernel<T><<<grid_for(dx.numel(), 256), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      dy.data_ptr<T>(), w.data_ptr<T>(), dx.data_ptr<T>(), P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void grad_weight_direct(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw, const Problem& P) {
  if (dw.numel() == 0) return;
  TORCH_CHECK(dw.numel() < (int64_t(1) << 31), "conv_transpose3d: weight too large for the direct kernel");
  grad_weight_direct_kernel<T><<<dw.numel(), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(), dy.data_ptr<T>(), dw.data_ptr<T>(), P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define CT3D_INSTANTIATE_DIRECT(T)                                                                \
  template void forward_direct<T>(const at::Tensor&, const at::Tensor&, const at::Tensor*,        \
                                  at::Tensor&, const Problem&);                                   \
  template void grad_input_direct<T>(const at::Tensor&, const at::Tensor&, at::Tensor&,          \
                                     const Problem&);                                             \
  template void grad_weight_direct<T>(const at::Tensor&, const at::Tensor&, at::Tensor&,         \
                                      const Problem&);
CT3D_INSTANTIATE_DIRECT(double)
CT3D_INSTANTIATE_DIRECT(float)
CT3D_INSTANTIATE_DIRECT(at::Half)
CT3D_INSTANTIATE_DIRECT(at::BFloat16)

}  // namespace ct3d
