"""One forward+backward of a named problem at a small batch, for ncu.

    python scripts/profile_problem.py [float|bf16|half|strict] [problem (kb68)] [batch (2)]

Problems: the named ones and bench.py's U-Net layers (unet_64_32_64, unet_320_256_16; pass_times.py).

"strict" is fp32 with TF32 disallowed (3xTF32 kernels); "float" runs under PyTorch's
default (TF32 allowed for cuDNN convolutions, so our TF32 kernels).
"""
import sys

import torch

import model_new as mn
import reference as ref
from pass_times import PROBLEMS

arg = sys.argv[1] if len(sys.argv) > 1 else "float"
name = sys.argv[2] if len(sys.argv) > 2 else "kb68"
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 2
dtype = {"float": torch.float32, "strict": torch.float32, "bf16": torch.bfloat16, "half": torch.float16}[arg]
torch.backends.cudnn.allow_tf32 = arg != "strict"
p = PROBLEMS[name]
torch.manual_seed(0)
m = mn.ModelNew(*ref.init_args(p)).cuda().to(dtype)
x = torch.rand(*ref.input_shape(p, batch=batch), device="cuda", dtype=dtype, requires_grad=True)
y = m(x)
y.backward(torch.randn_like(y))
torch.cuda.synchronize()
print("ok", name, y.shape, y.dtype)
