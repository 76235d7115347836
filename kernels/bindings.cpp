// bindings.cpp: the Python module. The entry points live in api.cu; the
// Python layer (model_new.py) wraps them in torch.library custom ops.
#include <torch/extension.h>

namespace ct3d {
at::Tensor forward(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                   at::IntArrayRef dilation, int64_t groups, bool allow_tf32, int64_t algo);
at::Tensor grad_input(const at::Tensor& dy, const at::Tensor& w, at::IntArrayRef input_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                      at::IntArrayRef dilation, int64_t groups, bool allow_tf32, int64_t algo);
std::vector<at::Tensor> grad_weight_bias(const at::Tensor& dy, const at::Tensor& x,
                                         at::IntArrayRef weight_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef output_padding,
                                         at::IntArrayRef dilation, int64_t groups, bool need_weight,
                                         bool need_bias, bool allow_tf32, int64_t algo);
void set_poison(bool on);
bool wgmma_ready(int64_t device);
at::Tensor wgmma_stamps();
int64_t thin_dgrad_launches();
int64_t thin_wgrad_launches();
int64_t wgrad_cin_block_launches();
int64_t wgrad_one_plane_launches();
int64_t unit_tap_launches();
int64_t unit_tap_vec_out_launches();
int64_t unit_tap_dgrad_launches();
int64_t unit_tap_dgrad_rows_launches();
int64_t unit_tap_persist_launches();
int64_t wg_skip_idle_launches();
int64_t wg_two_blocks_launches();
int64_t wg_vec_out_launches();
}  // namespace ct3d

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ConvTranspose3d forward and backward on our CUDA kernels";
  m.def("forward", &ct3d::forward, "y = conv_transpose3d(x, w) + bias");
  m.def("grad_input", &ct3d::grad_input, "dx of conv_transpose3d");
  m.def("grad_weight_bias", &ct3d::grad_weight_bias, "[dw, db] of conv_transpose3d");
  m.def("wgmma_available", &ct3d::wgmma_ready, "whether a GPU runs the wgmma (sm_90a) kernels");
  m.def("wgmma_stamps", &ct3d::wgmma_stamps, "debug builds (CT3D_WG_TIMING): window_wg_kernel phase clocks");
  m.def("set_poison", &ct3d::set_poison, "tests: fill outputs with NaN before the kernels run");
  m.def("thin_dgrad_launches", &ct3d::thin_dgrad_launches, "tests: thin-group grad input launches in this process");
  m.def("thin_wgrad_launches", &ct3d::thin_wgrad_launches, "tests: thin-group grad weight launches in this process");
  m.def("wgrad_cin_block_launches", &ct3d::wgrad_cin_block_launches,
        "tests: tensor-core grad weight launches on blocks of a group's input channels (Cin/G > 64)");
  m.def("wgrad_one_plane_launches", &ct3d::wgrad_one_plane_launches,
        "tests: wgrad_wg_kernel launches with a one-plane window (CT3D_WGRAD_ONE_PLANE)");
  m.def("unit_tap_launches", &ct3d::unit_tap_launches,
        "tests: unit_tap_fwd_kernel launches (forward, kernel size = stride) in this process");
  m.def("unit_tap_vec_out_launches", &ct3d::unit_tap_vec_out_launches,
        "tests: unit_tap_fwd_kernel launches with 16-byte epilogue stores in this process");
  m.def("unit_tap_dgrad_launches", &ct3d::unit_tap_dgrad_launches,
        "tests: unit_tap_dgrad_kernel launches (grad input, kernel size = stride; CT3D_UNIT_TAP_DGRAD=1)");
  m.def("unit_tap_dgrad_rows_launches", &ct3d::unit_tap_dgrad_rows_launches,
        "tests: unit_tap_dgrad_kernel launches with dy rows staged by 16-byte cp.async");
  m.def("unit_tap_persist_launches", &ct3d::unit_tap_persist_launches,
        "tests: persistent unit_tap_fwd_kernel launches (CT3D_UT_PERSIST=1)");
  m.def("wg_skip_idle_launches", &ct3d::wg_skip_idle_launches,
        "tests: window_wg_kernel launches with an idle warpgroup skipped (CT3D_WG_SKIP_IDLE=1)");
  m.def("wg_two_blocks_launches", &ct3d::wg_two_blocks_launches,
        "tests: window_wg_kernel launches of the half-width shape, two blocks an SM (CT3D_WG_TWO_BLOCKS=1)");
  m.def("wg_vec_out_launches", &ct3d::wg_vec_out_launches,
        "tests: window_wg_kernel launches whose epilogue stores several outputs at once (CT3D_WG_VEC_OUT=1)");
}
