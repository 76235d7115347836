"""Where a small layer's time goes outside the kernels: per named problem and mode, the
bench-style time of one call (events around it, synchronized), the host time to enqueue it
(no synchronization inside), and the sum of its kernels (torch.profiler). A call whose
enqueue time nears its synchronized time is host-bound.

    python scripts/host_probe.py [--problem kb72] [--mode bf16] [--cpu-table] [--cprofile] [--steps]

--cpu-table prints torch.profiler's CPU table of the forward and of forward+backward;
--cprofile, the Python functions of forward+backward by their own time (cProfile);
--steps, the host time of each step of bench.py's forward+backward (zero_grad, forward,
backward) with the device idle before each call and with it busy (the previous calls'
kernels still queued, as in a training loop), and whether the caching allocator went to
the driver (cudaMalloc / cudaFree) meanwhile.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import model_new as mn  # noqa: E402
import pass_times  # noqa: E402  (scripts/, beside this file)
import reference as ref  # noqa: E402


def enqueue_us(fn, reps: int) -> float:
    """Median host time of fn() with the device idle before each call."""
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(ts)


def steps_us(m, xg, dy, reps: int, idle: bool) -> dict:
    """Median host time (us) of each step of one forward+backward as bench.py runs it."""
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


def kernel_us(fn, reps: int) -> tuple[float, int]:
    """Sum of the kernels' device time a call, and kernels a call."""
    rows = pass_times.kernel_rows(fn, reps)
    return sum(us for us, _, _ in rows), round(sum(cnt for _, cnt, _ in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=list(ref.PROBLEMS), action="append")
    ap.add_argument("--mode", choices=list(bench.MODES), action="append")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cpu-table", action="store_true", help="torch.profiler's CPU tables (forward, forward+backward)")
    ap.add_argument("--cprofile", action="store_true", help="cProfile of forward+backward, by own time")
    ap.add_argument("--steps", action="store_true", help="forward+backward's steps, device idle and busy")
    args = ap.parse_args()
    print("problem mode pass | synced us | enqueue us | kernels us (n)")
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

                def fwd():
                    with torch.no_grad():
                        m(x)

                def fwd_bwd():
                    m.zero_grad(set_to_none=True)
                    xg.grad = None
                    m(xg).backward(dy)

                # The extension's three calls alone (the C++ side of a call: checks, packs,
                # weight transforms, launches), with what the module passes them.
                conv = m.conv_transpose3d
                w, b = conv.weight.detach(), conv.bias
                args3 = (list(conv.stride), list(conv.padding), conv._output_padding(x, None),
                         list(conv.dilation), conv.groups)
                algo = mn._ALGOS[conv.algo]

                def ext_fwd():
                    mn._forward_ext(x, w, b, *args3, algo)

                def ext_dgrad():
                    mn._grad_input_ext(dy, w, list(x.shape), *args3, algo)

                def ext_wgrad():
                    mn._grad_weight_bias_ext(dy, x, list(w.shape), *args3, True, b is not None, algo)

                def check():
                    mn._check(x, w, b, *args3[:4], args3[4])

                for tag, fn in (("fwd", fwd), ("f+b", fwd_bwd), ("ext fwd", ext_fwd), ("ext dgrad", ext_dgrad),
                                ("ext wgrad", ext_wgrad), ("py check", check)):
                    synced = bench.time_ms(fn, 3, args.reps) * 1e3
                    enq = enqueue_us(fn, args.reps)
                    kus, kn = kernel_us(fn, 5)
                    print(f"{name} {mode:6s} {tag} | {synced:9.1f} | {enq:9.1f} | {kus:9.1f} ({kn})", flush=True)
                if args.steps:
                    steps_us(m, xg, dy, 3, True)  # warm-up
                    for idle in (True, False):
                        s0 = torch.cuda.memory_stats()
                        r = steps_us(m, xg, dy, args.reps, idle)
                        s1 = torch.cuda.memory_stats()
                        drv = [s1.get(k, 0) - s0.get(k, 0) for k in ("num_device_alloc", "num_device_free")]
                        print(f"{name} {mode:6s} f+b steps, device {'idle' if idle else 'busy'}: zero_grad "
                              f"{r['zero_grad']:.1f} | forward {r['forward']:.1f} | backward {r['backward']:.1f} "
                              f"| total {r['total']:.1f} us | driver allocs / frees {drv[0]} / {drv[1]}", flush=True)
                if args.cpu_table:
                    for tag, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
                        fn()
                        torch.cuda.synchronize()
                        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
                            for _ in range(5):
                                fn()
                            torch.cuda.synchronize()
                        print(f"-- {name} {mode} {tag}, 5 calls")
                        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
                if args.cprofile:
                    fwd_bwd()
                    torch.cuda.synchronize()
                    pr = cProfile.Profile()
                    pr.enable()
                    for _ in range(20):
                        fwd_bwd()
                    torch.cuda.synchronize()
                    pr.disable()
                    buf = io.StringIO()
                    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(30)
                    print(f"-- {name} {mode} forward+backward, 20 calls, cProfile by own time")
                    print(buf.getvalue())
            del m, x, xg, dy
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
