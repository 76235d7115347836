"""Peak GPU memory of each of our passes and of one forward+backward, ours and the reference,
on a named problem and mode: where a forward+backward's peak comes from.

    python scripts/mem_probe.py --problem kb72 --mode bf16
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


def peak_mib(fn) -> float:
    """Peak memory above what was allocated before fn, MiB (fn's results freed after)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    del out
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=list(ref.PROBLEMS), action="append")
    ap.add_argument("--mode", choices=list(bench.MODES), action="append")
    args = ap.parse_args()
    ext = mn._extension()
    for name in args.problem or list(ref.PROBLEMS):
        p = ref.PROBLEMS[name]
        for mode in args.mode or list(bench.MODES):
            dtype, allow = bench.MODES[mode]
            torch.manual_seed(0)
            ours = mn.ModelNew(*ref.init_args(p)).cuda().to(dtype)
            refm = ref.Model(*ref.init_args(p)).cuda().to(dtype)
            conv = ours.conv_transpose3d
            w, b = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
            x = torch.rand(*ref.input_shape(p), device="cuda", dtype=dtype)
            st, pad, op, dil, g = list(conv.stride), list(conv.padding), list(conv.output_padding), [1, 1, 1], conv.groups
            with bench.tf32(allow):
                y = ext.forward(x, w, b, st, pad, op, dil, g, allow, 0)
                dy = torch.randn_like(y)
                mib = lambda t: t.numel() * t.element_size() / 2 ** 20  # noqa: E731
                cells = [f"x {mib(x):.1f}", f"y {mib(y):.1f}"]
                del y
                cells.append(f"fwd {peak_mib(lambda: ext.forward(x, w, b, st, pad, op, dil, g, allow, 0)):.1f}")
                cells.append(f"dgrad {peak_mib(lambda: ext.grad_input(dy, w, list(x.shape), st, pad, op, dil, g, allow, 0)):.1f}")
                cells.append(f"wgrad {peak_mib(lambda: ext.grad_weight_bias(dy, x, list(w.shape), st, pad, op, dil, g, True, b is not None, allow, 0)):.1f}")
                xg = x.clone().requires_grad_(True)
                for tag, m in (("ours", ours), ("ref", refm)):
                    def fb():
                        m.zero_grad(set_to_none=True)
                        xg.grad = None
                        m(xg).backward(dy)
                    fb()
                    cells.append(f"f+b {tag} {peak_mib(fb):.1f}")
            print(f"{name} {mode:4s} MiB | " + " | ".join(cells), flush=True)
            del ours, refm, x, dy, xg, w, b
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
