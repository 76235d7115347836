"""Where a forward+backward's host time goes, step by step: per named problem and mode, the
host time of each step of bench.py's forward+backward (zero_grad, the forward, backward),
with the device idle before each call and with the device busy (the previous call's kernels
still queued, as in a training loop), and whether the caching allocator went to the driver
(cudaMalloc / cudaFree) during the timed calls.

    python scripts/host_trace.py [--problem kb72] [--mode bf16] [--reps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import model_new as mn  # noqa: E402
import reference as ref  # noqa: E402


def steps_us(m, xg, dy, reps: int, idle: bool) -> dict:
    """Median host time of each step of one forward+backward (us)."""
    t = {"zero_grad": [], "forward": [], "backward": [], "total": []}
    for _ in range(reps):
        if idle:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        m.zero_grad(set_to_none=True)
        xg.grad = None
        t1 = time.perf_counter()
        y = m(xg)
        t2 = time.perf_counter()
        y.backward(dy)
        t3 = time.perf_counter()
        del y
        for k, a, b in (("zero_grad", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("total", t0, t3)):
            t[k].append((b - a) * 1e6)
    torch.cuda.synchronize()
    return {k: statistics.median(v) for k, v in t.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=list(ref.PROBLEMS), action="append")
    ap.add_argument("--mode", choices=list(bench.MODES), action="append")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    print("problem mode state | zero_grad | forward | backward | total (us) | driver allocs / frees")
    for name in args.problem or list(ref.PROBLEMS):
        p = ref.PROBLEMS[name]
        for mode in args.mode or list(bench.MODES):
            dtype, allow = bench.MODES[mode]
            with bench.tf32(allow):
                torch.manual_seed(0)
                m = mn.ModelNew(*ref.init_args(p)).cuda().to(dtype)
                x = torch.rand(*ref.input_shape(p), device="cuda", dtype=dtype)
                xg = x.clone().requires_grad_(True)
                dy = torch.randn_like(m(x).detach())
                steps_us(m, xg, dy, 3, True)  # warm-up
                for idle in (True, False):
                    s0 = torch.cuda.memory_stats()
                    r = steps_us(m, xg, dy, args.reps, idle)
                    s1 = torch.cuda.memory_stats()
                    allocs = s1.get("num_device_alloc", 0) - s0.get("num_device_alloc", 0)
                    frees = s1.get("num_device_free", 0) - s0.get("num_device_free", 0)
                    print(f"{name} {mode:4s} {'idle' if idle else 'busy'} | {r['zero_grad']:7.1f} | "
                          f"{r['forward']:7.1f} | {r['backward']:8.1f} | {r['total']:8.1f} | "
                          f"{allocs} / {frees}", flush=True)
            del m, x, xg, dy
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
