"""One forward+backward of kb68 (batch 2), for ncu: window_tc_kernel and wgrad_tc_kernel.

    python scripts/profile_kb68.py [float|bf16|half]
"""
import sys

import torch

import model_new as mn
import reference as ref

dtype = {"float": torch.float32, "bf16": torch.bfloat16, "half": torch.float16}[sys.argv[1] if len(sys.argv) > 1 else "float"]
p = ref.PROBLEMS["kb68"]
torch.manual_seed(0)
m = mn.ModelNew(*ref.init_args(p)).cuda().to(dtype)
x = torch.rand(*ref.input_shape(p, batch=2), device="cuda", dtype=dtype, requires_grad=True)
y = m(x)
y.backward(torch.randn_like(y))
torch.cuda.synchronize()
print("ok", y.shape, y.dtype)
