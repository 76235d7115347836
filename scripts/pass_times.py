"""Times each of our three passes alone (forward, grad input, grad weight + bias) on the named
problems, per precision mode: where a forward+backward's time goes. No reference, no checks
(bench.py and the tests do those); kernel tuning knobs come from the environment
(CT3D_WIN_TILE, CT3D_WIN_STAGES), so run it once per setting:

    CT3D_WIN_TILE=wide python scripts/pass_times.py [--problem kb68] [--mode tf32]

The U-Net upsampling layers of bench.py (kernel 2, stride 2, bias) are problems here too:
--problem unet_320_256_16.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import model_new as mn  # noqa: E402
import reference as ref  # noqa: E402


def kernel_rows(fn, reps: int) -> list[tuple[float, float, str]]:
    """The CUDA kernels one call of fn launches: (mean us a call, launches a call, name),
    slowest first (torch.profiler)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0))
        if us > 0:
            rows.append((us / reps, e.count / reps, e.key))
    rows.sort(reverse=True)
    return rows


def kernel_table(fn, reps: int) -> str:
    """The CUDA kernels one call of fn launches, with their mean time a call."""
    return "\n".join(f"    {us:9.1f} us  x{cnt:4.1f}  {key[:110]}" for us, cnt, key in kernel_rows(fn, reps)[:10])


# The named problems and bench.py's U-Net upsampling layers, in the named problems' form.
PROBLEMS = dict(ref.PROBLEMS, **{
    name: dict(batch=n, in_channels=cin, out_channels=cout, kernel_size=(2, 2, 2), stride=(2, 2, 2),
               padding=(0, 0, 0), output_padding=(0, 0, 0), groups=1, bias=True, input=(e, e, e))
    for name, (n, cin, cout, e) in bench.UNET_LAYERS.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=list(PROBLEMS), action="append")
    ap.add_argument("--mode", choices=list(bench.MODES), action="append")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--passes", default="fwd,dgrad,wgrad")
    ap.add_argument("--algo", default="auto", choices=list(mn._ALGOS), help="kernel family (model_new._ALGOS)")
    ap.add_argument("--bias", action="store_true", help="build the problems with bias=True (grad bias in wgrad)")
    ap.add_argument("--kernels", action="store_true", help="also each pass's kernels and their times (torch.profiler)")
    args = ap.parse_args()
    ext = mn._extension()
    tag = " ".join([f"algo={args.algo}"] + [f"{k}={v}" for k, v in sorted(os.environ.items())
                                             if k.startswith("CT3D_")])
    a = mn._ALGOS[args.algo]
    passes = args.passes.split(",")
    for name in args.problem or list(ref.PROBLEMS):
        p = dict(PROBLEMS[name], **({"bias": True} if args.bias else {}))
        flops = bench.useful_flops(p, p["batch"])
        for mode in args.mode or list(bench.MODES):
            dtype, allow = bench.MODES[mode]
            torch.manual_seed(0)
            m = mn.ModelNew(*ref.init_args(p)).cuda().to(dtype)
            conv = m.conv_transpose3d
            w, b = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
            x = torch.rand(*ref.input_shape(p), device="cuda", dtype=dtype)
            st, pad, op, dil, g = list(conv.stride), list(conv.padding), list(conv.output_padding), [1, 1, 1], conv.groups
            y = ext.forward(x, w, b, st, pad, op, dil, g, allow, a)
            dy = torch.randn_like(y)
            fns = {
                "fwd": lambda: ext.forward(x, w, b, st, pad, op, dil, g, allow, a),
                "dgrad": lambda: ext.grad_input(dy, w, list(x.shape), st, pad, op, dil, g, allow, a),
                "wgrad": lambda: ext.grad_weight_bias(dy, x, list(w.shape), st, pad, op, dil, g, True,
                                                      b is not None, allow, a),
            }
            cells = []
            for ps in passes:
                ms = bench.time_ms(fns[ps], 1, args.reps)
                cells.append(f"{ps} {ms:8.3f} ms {flops / ms / 1e9:6.1f} TF/s")
            print(f"{name} {mode:4s} | " + " | ".join(cells) + f"   [{tag}]", flush=True)
            if args.kernels:
                for ps in passes:
                    print(f"  {name} {mode} {ps}: kernels, us a call")
                    print(kernel_table(fns[ps], args.reps))
            del m, x, y, dy, w, b
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
