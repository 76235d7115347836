"""Configurations that reach every kernel and code path, for compute-sanitizer.

Runs forward and backward of our op only (no PyTorch convolution, so the sanitizer's
report is about our kernels) on small shapes that cover: the tensor-core window kernel in
each tile width (BN 16/32/64) and precision (TF32, 3xTF32, fp16, bf16), stride phases,
dilation, groups; the FFMA tiled kernels (narrow and wide tiles); the direct kernels (fp64
and others); grad weight on tensor cores (MT 1/2/4, TF32 and 3xTF32) and its FFMA fallback
(Cin/G > 64); grad bias, the split-K sum, the weight transform; channels_last_3d and
channel-sliced inputs; batch 0. Prints SANITIZE-CASES-OK.

    compute-sanitizer --tool memcheck python scripts/sanitize_cases.py   (scripts/sanitize.sh)
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import model_new as mn  # noqa: E402

CL = torch.channels_last_3d
# (name, Cin, Cout, kernel, stride, padding, output_padding, groups, dilation, input DHW, batch)
CASES = [
    ("bn16_phases", 8, 12, 3, 2, 1, 1, 1, 1, (3, 4, 5), 2),
    ("bn32_dilated", 12, 24, (2, 3, 2), 1, (1, 0, 1), 0, 1, (2, 1, 2), (3, 4, 5), 1),
    ("bn64_grouped", 16, 140, 2, (1, 2, 1), 0, 0, 2, 1, (2, 3, 4), 2),
    ("wgrad_mt2", 40, 8, 3, 1, 1, 0, 1, 1, (3, 3, 4), 1),
    ("wgrad_mt4_chunks", 60, 20, 2, 2, 0, 1, 1, 1, (2, 3, 3), 1),
    ("wgrad_ffma_fallback", 72, 4, 1, 1, 0, 0, 1, 1, (2, 2, 3), 1),
    ("stride_gt_kernel", 4, 6, 2, 3, 0, 0, 1, 1, (2, 3, 2), 1),
    ("depthwise", 6, 6, 3, 1, 1, 0, 6, 1, (3, 3, 3), 2),
    ("one_voxel", 5, 7, 3, 1, 0, 0, 1, 1, (1, 1, 1), 1),
]
MODES = [(torch.float32, True), (torch.float32, False), (torch.float16, False),
         (torch.bfloat16, False)]


def run(name, cin, cout, k, s, p, op, g, d, size, batch, dtype, tf32, algo, layout):
    torch.backends.cudnn.allow_tf32 = tf32
    m = mn.ConvTranspose3d(cin, cout, k, s, p, op, g, True, d).cuda().to(dtype)
    m.algo = algo
    x = torch.randn(batch, cin, *size, device="cuda").to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
        m = m.to(memory_format=CL)
    elif layout == "channel_slice":
        x = torch.randn(batch, cin + 2, *size, device="cuda").to(dtype)[:, 1:1 + cin]
    x.requires_grad_(True)
    y = m(x)
    y.backward(torch.randn_like(y))
    for t in (y, x.grad, m.weight.grad, m.bias.grad):
        assert t is not None and torch.isfinite(t).all(), f"{name} {dtype} {algo} {layout}: non-finite"


def main() -> int:
    n = 0
    for case in CASES:
        for dtype, tf32 in MODES:
            run(*case, dtype, tf32, "auto", "contiguous")
            n += 1
        run(*case, torch.float32, False, "tiled", "contiguous")
        run(*case, torch.bfloat16, False, "tiled", "channels_last")
        run(*case, torch.float64, False, "direct", "contiguous")
        run(*case, torch.float32, True, "direct", "channel_slice")
        run(*case, torch.float32, True, "auto", "channels_last")
        run(*case, torch.float32, False, "auto", "channel_slice")
        n += 6
    run("batch0", 4, 6, 3, 2, 0, 0, 1, 1, (2, 3, 4), 0, torch.float32, True, "auto", "contiguous")
    torch.cuda.synchronize()
    print(f"SANITIZE-CASES-OK {n + 1} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
