"""Which fp32 algorithm does cuDNN's ConvTranspose3d pick under PyTorch's defaults (TF32 allowed)?

Investigation tool for the harness precision rule (NOTES.md, v7). For many shapes it runs the
reference with TF32 allowed, compares against a float64 result, and classifies the choice as
TF32 (relative L2 error ~1e-4) or exact (~1e-7); it also records the kernel names cuDNN launched.
Writes one JSON line per configuration. Needs a GPU; calls PyTorch's convolution on purpose.
"""
import json
import math
import random
import sys

import torch
import torch.nn.functional as F


def kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})


def classify(cfg, with_names):
    n, cin, cout, k, s, p, op, d, g, sp = (cfg[x] for x in
                                           ("n", "cin", "cout", "k", "s", "p", "op", "d", "g", "sp"))
    x = torch.randn(n, cin, *sp, device="cuda")
    w = torch.randn(cin, cout // g, *k, device="cuda") * 0.1
    args = dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d)
    torch.backends.cudnn.allow_tf32 = True
    y = F.conv_transpose3d(x, w, **args)
    y64 = F.conv_transpose3d(x.double(), w.double(), **args)
    err = ((y.double() - y64).norm() / y64.norm().clamp_min(1e-30)).item()
    out = dict(cfg, err=err, exact=err < 3e-6)
    if with_names:
        out["kernels"] = [nm[:90] for nm in kernel_names(lambda: F.conv_transpose3d(x, w, **args))]
    return out


def random_cfg(rng):
    g = rng.choice([1, 1, 1, 2, 4, 8])
    cin = g * rng.choice([1, 2, 3, 4, 8, 16])
    cout = g * rng.choice([1, 2, 3, 4, 8, 16])
    if rng.random() < 0.15:  # depthwise
        g, cin, cout = cin, cin, cin
    k = tuple(rng.choice([1, 2, 3, 4, 5]) for _ in range(3))
    s = tuple(rng.choice([1, 1, 2, 3]) for _ in range(3))
    d = tuple(rng.choice([1, 1, 1, 2]) for _ in range(3))
    p = tuple(rng.randint(0, (d[i] * (k[i] - 1)) // 2) for i in range(3))
    op = tuple(rng.randint(0, max(s[i], d[i]) - 1) if rng.random() < 0.3 else 0 for i in range(3))
    sp = tuple(rng.randint(2, 20) for _ in range(3))
    return dict(n=rng.randint(1, 4), cin=cin, cout=cout, k=k, s=s, p=p, op=op, d=d, g=g, sp=sp)


def large_cfg(rng):
    """KernelBench-scale shapes: batch 4-16, 16-64 channels, 8-48 voxels an edge."""
    g = rng.choice([1, 1, 1, 2, 4, 8])
    cin = rng.choice([16, 32, 48, 64])
    cout = rng.choice([16, 32, 48, 64])
    k = tuple(rng.choice([2, 3, 3, 5]) for _ in range(3))
    s = tuple(rng.choice([1, 1, 2]) for _ in range(3))
    d = tuple(rng.choice([1, 1, 1, 2]) for _ in range(3))
    p = tuple(rng.randint(0, (d[i] * (k[i] - 1)) // 2) for i in range(3))
    op = tuple(rng.randint(0, max(s[i], d[i]) - 1) if rng.random() < 0.3 else 0 for i in range(3))
    sp = tuple(rng.choice([8, 16, 24, 32, 48]) for _ in range(3))
    return dict(n=rng.choice([4, 8, 16]), cin=cin, cout=cout, k=k, s=s, p=p, op=op, d=d, g=g, sp=sp)


NAMED = [
    dict(name="kb58", n=16, cin=32, cout=16, k=(3, 5, 7), s=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), d=(1, 1, 1), g=1, sp=(16, 32, 64)),
    dict(name="kb61", n=8, cin=48, cout=48, k=(3, 3, 3), s=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), d=(1, 1, 1), g=1, sp=(64, 64, 64)),
    dict(name="kb68", n=16, cin=32, cout=64, k=(3, 5, 5), s=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), d=(1, 1, 1), g=1, sp=(64, 64, 64)),
    dict(name="kb72", n=8, cin=32, cout=32, k=(3, 5, 7), s=(2, 2, 2), p=(1, 2, 3), op=(1, 1, 1), d=(1, 1, 1), g=4, sp=(12, 24, 48)),
    dict(name="ref_dilated", n=2, cin=8, cout=12, k=(3, 3, 3), s=(2, 2, 2), p=(1, 1, 1), op=(1, 1, 1), d=(2, 2, 2), g=1, sp=(6, 7, 8)),
    dict(name="ref_kw", n=3, cin=6, cout=10, k=(2, 3, 4), s=(1, 2, 1), p=(0, 1, 1), op=(0, 0, 0), d=(1, 1, 1), g=2, sp=(5, 6, 7)),
    dict(name="ref_two_1", n=2, cin=16, cout=12, k=(2, 2, 2), s=(2, 2, 2), p=(0, 0, 0), op=(0, 0, 0), d=(1, 1, 1), g=1, sp=(4, 5, 6)),
    dict(name="ref_two_2", n=2, cin=12, cout=8, k=(3, 3, 1), s=(1, 1, 1), p=(1, 1, 0), op=(0, 0, 0), d=(1, 1, 1), g=1, sp=(8, 10, 12)),
]

if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    if len(sys.argv) > 2 and sys.argv[2] == "--large":
        rng = random.Random(1)
        torch.manual_seed(1)
        for i in range(count):
            cfg = large_cfg(rng)
            vox = cfg["n"] * cfg["cout"] * 8 * math.prod(cfg["sp"]) * max(cfg["s"]) ** 3
            if vox > 4e8:  # keep each case quick (the fp64 reference is slow)
                continue
            print(json.dumps(classify(cfg, i < 40)), flush=True)
        sys.exit(0)
    rng = random.Random(0)
    torch.manual_seed(0)
    for cfg in NAMED:
        print(json.dumps(classify(cfg, True)), flush=True)
    for i in range(count):
        print(json.dumps(classify(random_cfg(rng), i < 120)), flush=True)
