"""One forward+backward of kb68 (batch 2) in TF32, for ncu: window_tc_kernel and wgrad_tc_kernel."""
import torch
import model_new as mn
import reference as ref

p = ref.PROBLEMS["kb68"]
torch.manual_seed(0)
m = mn.ModelNew(*ref.init_args(p)).cuda()
x = torch.rand(*ref.input_shape(p, batch=2), device="cuda", requires_grad=True)
y = m(x)
y.backward(torch.randn_like(y))
torch.cuda.synchronize()
print("ok", y.shape)
