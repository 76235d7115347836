// api.cu: the host entry points the Python layer calls (forward, grad_input,
// grad_weight_bias): validate, guard the device, allocate outputs, pick the
// kernel family and dtype, launch on the current stream.
//
// Sections: problem construction and checks, dispatch.
#include "common.cuh"
#include "window_wg.cuh"

namespace ct3d {

// Launchers defined in forward.cu, grad_input.cu, grad_weight.cu, direct.cu.
template <typename T> bool forward_tc(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, const Problem&, bool, int64_t);
template <typename T> void forward_tiled(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, const Problem&, bool);
template <typename T> bool grad_input_tc(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&, bool, int64_t);
template <typename T> void grad_input_tiled(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&, bool);
template <typename T> bool grad_weight_tc(const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor*, const Problem&, bool, int64_t);
template <typename T> void grad_weight_tiled(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&, bool);
template <typename T> void grad_bias(const at::Tensor&, at::Tensor&, const Problem&);
template <typename T> void forward_direct(const at::Tensor&, const at::Tensor&, const at::Tensor*, at::Tensor&, const Problem&);
template <typename T> void grad_input_direct(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&);
template <typename T> void grad_weight_direct(const at::Tensor&, const at::Tensor&, at::Tensor&, const Problem&);

// ============================================================================
// Problem construction and checks
// ============================================================================
Problem make_problem(at::IntArrayRef xs, at::IntArrayRef ws, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef output_padding,
                     at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(xs.size() == 5, "conv_transpose3d: expected a 5D input, got ", xs.size(), "D");
  TORCH_CHECK(ws.size() == 5, "conv_transpose3d: expected a 5D weight, got ", ws.size(), "D");
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3 && output_padding.size() == 3 &&
                  dilation.size() == 3,
              "conv_transpose3d: stride, padding, output_padding and dilation need 3 values each");
  TORCH_CHECK(groups > 0, "non-positive groups is not supported");
  Problem P;
  P.N = xs[0];
  P.Cin = xs[1];
  P.G = groups;
  TORCH_CHECK(ws[0] == P.Cin, "conv_transpose3d: weight has ", ws[0], " input channels, input has ", P.Cin);
  TORCH_CHECK(P.Cin % groups == 0, "conv_transpose3d: groups must divide the input channels");
  P.Cout = ws[1] * groups;
  for (int e = 0; e < 3; ++e) {
    P.in[e] = xs[2 + e];
    P.k[e] = ws[2 + e];
    P.s[e] = stride[e];
    P.p[e] = padding[e];
    P.op[e] = output_padding[e];
    P.d[e] = dilation[e];
    TORCH_CHECK(P.s[e] > 0, "non-positive stride is not supported");
    TORCH_CHECK(P.p[e] >= 0, "negative padding is not supported");
    TORCH_CHECK(P.op[e] >= 0, "negative output_padding is not supported");
    TORCH_CHECK(P.d[e] > 0, "dilation should be greater than zero");
    TORCH_CHECK(P.op[e] < P.s[e] || P.op[e] < P.d[e],
                "output padding must be smaller than either stride or dilation");
    P.out[e] = (P.in[e] - 1) * P.s[e] - 2 * P.p[e] + P.d[e] * (P.k[e] - 1) + P.op[e] + 1;
    TORCH_CHECK(P.out[e] > 0, "conv_transpose3d: output size is too small");
    // Per-dimension index math in the kernels is 32-bit; offsets are 64-bit.
    TORCH_CHECK(P.in[e] < (1 << 30) && P.out[e] < (1 << 30) && P.k[e] < (1 << 20) &&
                    P.s[e] < (1 << 20) && P.p[e] < (1 << 29) && P.d[e] < (1 << 20),
                "conv_transpose3d: a spatial size, kernel, stride, padding or dilation is too large");
  }
  TORCH_CHECK(P.in_vol() < (int64_t(1) << 31) && P.out_vol() < (int64_t(1) << 31),
              "conv_transpose3d: more than 2^31 voxels in one channel is not supported");
  P.xl = Layout{P.Cin * P.in_vol(), P.in_vol(), 1};  // contiguous until the caller says otherwise
  P.yl = Layout{P.Cout * P.out_vol(), P.out_vol(), 1};
  return P;
}

// The Layout (common.cuh) of a 5D activation tensor, if its strides have that form: the
// voxel stride is the stride of the innermost spatial dimension of size > 1, and every
// spatial dimension of size > 1 must step by it times the voxels inside that dimension.
static c10::optional<Layout> layout_of(const at::Tensor& t) {
  const auto sz = t.sizes();
  const auto st = t.strides();
  int64_t inner = 1, sv = -1;
  for (int e = 4; e >= 2; --e) {
    if (sz[e] == 1) continue;
    if (sv < 0) sv = st[e];
    if (st[e] != sv * inner) return c10::nullopt;
    inner *= sz[e];
  }
  return Layout{st[0], st[1], sv < 0 ? 1 : sv};
}

// The tensor itself where the kernels can address it, else a contiguous copy (a view
// that slices or permutes the spatial dimensions).
static at::Tensor addressable(const at::Tensor& t) {
  return layout_of(t).has_value() ? t : t.contiguous();
}

// Memory format of the activation PyTorch makes from act and w (ATen's
// cudnn_conv_suggest_memory_format): channels_last_3d if either one is laid out so, except
// in fp64 and where output_padding >= stride (PyTorch then leaves cuDNN for its own
// kernel, which writes contiguous tensors).
static at::MemoryFormat suggest_format(const at::Tensor& act, const at::Tensor& w, const Problem& P) {
  if (act.scalar_type() == at::kDouble) return at::MemoryFormat::Contiguous;
  for (int e = 0; e < 3; ++e)
    if (P.op[e] >= P.s[e]) return at::MemoryFormat::Contiguous;
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  return act.suggest_memory_format() == cl || w.suggest_memory_format() == cl ? cl
                                                                               : at::MemoryFormat::Contiguous;
}

void check_cuda_tensor(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), "conv_transpose3d: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), "conv_transpose3d: ", name, " is on ", t.device(),
              " but the input is on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "conv_transpose3d: ", name, " has dtype ",
              t.scalar_type(), " but the input has ", like.scalar_type());
}

int num_sms(int device) {
  return at::cuda::getDeviceProperties(device)->multiProcessorCount;
}

// Test switch: fill every output (and the grad-weight workspace) with NaN before the
// kernels write it, so an element a kernel forgets stays NaN and fails the tests.
static bool g_poison = false;
void set_poison(bool on) { g_poison = on; }
bool poison_enabled() { return g_poison; }
static void poison(at::Tensor& t) {
  if (g_poison && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

static bool use_direct(const at::Tensor& t, int64_t algo) {
  TORCH_CHECK(algo >= kAuto && algo <= kTcWgmma, "conv_transpose3d: unknown algo ", algo);
  const bool fp64 = t.scalar_type() == at::kDouble;
  TORCH_CHECK(!(fp64 && (algo == kTiled || tc_required(algo))),
              "conv_transpose3d: the tiled and tensor-core kernels take fp16, bf16 and fp32; fp64 runs on the direct kernels");
  return fp64 || algo == kDirect;
}

// Whether GPU `device` runs the wgmma kernels (window_wg.cuh); probes it the first time.
bool wgmma_ready(int64_t device) { return wgmma_available(int(device)); }
at::Tensor wgmma_stamps() { return wg_stamps(); }

// ============================================================================
// Dispatch
// ============================================================================
at::Tensor forward(const at::Tensor& x_, const at::Tensor& w_, const c10::optional<at::Tensor>& bias_,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                   at::IntArrayRef dilation, int64_t groups, bool allow_tf32, int64_t algo) {
  check_cuda_tensor(w_, "weight", x_);
  Problem P = make_problem(x_.sizes(), w_.sizes(), stride, padding, output_padding, dilation, groups);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = addressable(x_), w = w_.contiguous();
  at::Tensor bias;
  if (bias_.has_value() && bias_->defined()) {
    check_cuda_tensor(*bias_, "bias", x_);
    TORCH_CHECK(bias_->dim() == 1 && bias_->size(0) == P.Cout, "conv_transpose3d: bias must have ", P.Cout, " elements");
    bias = bias_->contiguous();
  }
  at::Tensor y = at::empty({P.N, P.Cout, P.out[0], P.out[1], P.out[2]},
                           x.options().memory_format(suggest_format(x_, w_, P)));
  if (y.numel() == 0) return y;
  P.xl = *layout_of(x);
  P.yl = *layout_of(y);
  poison(y);
  const at::Tensor* b = bias.defined() ? &bias : nullptr;
  const bool direct = use_direct(x, algo);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ct3d_forward", [&] {
    if (direct) {
      forward_direct<scalar_t>(x, w, b, y, P);
    } else if constexpr (!std::is_same<scalar_t, double>::value) {
      const bool tc = algo != kTiled && forward_tc<scalar_t>(x, w, b, y, P, allow_tf32, algo);
      TORCH_CHECK(tc || !tc_required(algo), "conv_transpose3d: the tensor-core forward needs sm_80+ and an "
                  "input window that fits in shared memory; use algo='auto' or 'tiled'");
      if (!tc) forward_tiled<scalar_t>(x, w, b, y, P, allow_tf32);
    }
  });
  return y;
}

at::Tensor grad_input(const at::Tensor& dy_, const at::Tensor& w_, at::IntArrayRef input_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                      at::IntArrayRef dilation, int64_t groups, bool allow_tf32, int64_t algo) {
  check_cuda_tensor(w_, "weight", dy_);
  Problem P = make_problem(input_size, w_.sizes(), stride, padding, output_padding, dilation, groups);
  TORCH_CHECK(dy_.sizes() == at::IntArrayRef({P.N, P.Cout, P.out[0], P.out[1], P.out[2]}),
              "conv_transpose3d: grad_output has size ", dy_.sizes(), ", which is not the output size");
  c10::cuda::CUDAGuard guard(dy_.device());
  const at::Tensor dy = addressable(dy_), w = w_.contiguous();
  at::Tensor dx = at::empty(input_size, dy.options().memory_format(suggest_format(dy_, w_, P)));
  if (dx.numel() == 0) return dx;
  P.xl = *layout_of(dx);
  P.yl = *layout_of(dy);
  poison(dx);
  const bool direct = use_direct(dy, algo);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "ct3d_grad_input", [&] {
    if (direct) {
      grad_input_direct<scalar_t>(dy, w, dx, P);
    } else if constexpr (!std::is_same<scalar_t, double>::value) {
      const bool tc = algo != kTiled && grad_input_tc<scalar_t>(dy, w, dx, P, allow_tf32, algo);
      TORCH_CHECK(tc || !tc_required(algo), "conv_transpose3d: the tensor-core grad input needs sm_80+ and a "
                  "window that fits in shared memory; use algo='auto' or 'tiled'");
      if (!tc) grad_input_tiled<scalar_t>(dy, w, dx, P, allow_tf32);
    }
  });
  return dx;
}

std::vector<at::Tensor> grad_weight_bias(const at::Tensor& dy_, const at::Tensor& x_,
                                         at::IntArrayRef weight_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef output_padding,
                                         at::IntArrayRef dilation, int64_t groups, bool need_weight,
                                         bool need_bias, bool allow_tf32, int64_t algo) {
  check_cuda_tensor(x_, "input", dy_);
  Problem P = make_problem(x_.sizes(), weight_size, stride, padding, output_padding, dilation, groups);
  TORCH_CHECK(dy_.sizes() == at::IntArrayRef({P.N, P.Cout, P.out[0], P.out[1], P.out[2]}),
              "conv_transpose3d: grad_output has size ", dy_.sizes(), ", which is not the output size");
  c10::cuda::CUDAGuard guard(dy_.device());
  const at::Tensor dy = addressable(dy_), x = addressable(x_);
  if (dy.numel() > 0) P.yl = *layout_of(dy);
  if (x.numel() > 0) P.xl = *layout_of(x);
  at::Tensor dw = need_weight ? at::empty(weight_size, dy.options()) : at::empty({0}, dy.options());
  at::Tensor db = need_bias ? at::empty({P.Cout}, dy.options()) : at::empty({0}, dy.options());
  poison(dw);
  poison(db);
  if (need_weight && dw.numel() > 0 && P.N * P.in_vol() == 0) dw.zero_();
  const bool direct = use_direct(dy, algo);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "ct3d_grad_weight", [&] {
    bool bias_done = false;  // the tensor-core grad weight sums grad bias in its pass over dy
    if (need_weight && P.N * P.in_vol() > 0) {
      if (direct) {
        grad_weight_direct<scalar_t>(dy, x, dw, P);
      } else if constexpr (!std::is_same<scalar_t, double>::value) {
        const bool tc = algo != kTiled && grad_weight_tc<scalar_t>(dy, x, dw, need_bias ? &db : nullptr, P, allow_tf32, algo);
        TORCH_CHECK(tc || !tc_required(algo), "conv_transpose3d: the tensor-core grad weight needs sm_80+ "
                    "and a window that fits in shared memory; use algo='auto' or 'tiled'");
        if (!tc) grad_weight_tiled<scalar_t>(dy, x, dw, P, allow_tf32);
        bias_done = tc && need_bias;
      }
    }
    if (need_bias && !bias_done) grad_bias<scalar_t>(dy, db, P);
  });
  return {dw, db};
}

}  // namespace ct3d
