"""The host cost of one kernel launch on this machine, apart from our code: the median host
time of PyTorch's smallest op (an in-place add on one element, one kernel launch) and of an
empty-tensor allocation, with the device idle before each call (synchronized) and with the
device busy (a spin kernel queued ahead), as the small rows of bench.py see them.

    python scripts/launch_cost.py
"""

from __future__ import annotations

import statistics
import time

import torch


def median_us(fn, reps: int, idle: bool) -> float:
    ts = []
    for i in range(reps):
        if idle:
            torch.cuda.synchronize()
        elif i % 50 == 0:
            torch.cuda._sleep(50_000_000)  # keeps the device busy through the next calls
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(ts)


def main() -> None:
    x = torch.zeros(1, device="cuda")
    for _ in range(10):
        x.add_(1)
    torch.cuda.synchronize()
    ops = {"launch (x.add_(1))": lambda: x.add_(1),
           "allocation (torch.empty, 1 MiB)": lambda: torch.empty(1 << 18, device="cuda")}
    for name, fn in ops.items():
        print(f"{name}: idle {median_us(fn, 200, True):.1f} us, busy {median_us(fn, 200, False):.1f} us")


if __name__ == "__main__":
    main()
