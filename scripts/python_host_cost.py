"""The Python side of a call's host cost, measured without a GPU: ModelNew's forward and
forward+backward (module, functional, checks cache, autograd.Function, backward rule) with
the CUDA extension replaced by a stub that returns empty tensors, on tiny CPU tensors (the
eager path forced on; the device check skipped). What is left of a measured enqueue time on
the GPU (scripts/host_probe.py) is the extension's C++ and the CUDA calls.

    python3 scripts/python_host_cost.py [--problem kb72] [--calls 5000]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import model_new as mn  # noqa: E402
import reference as ref  # noqa: E402


class _StubExtension:
    """Same entry points as the extension; outputs are empty tensors of the right shape."""

    def __init__(self, y_shape):
        self.y_shape = y_shape

    def forward(self, x, w, b, *args):
        return torch.empty(self.y_shape)

    def grad_input(self, g, w, size, *args):
        return torch.empty(size)

    def grad_weight_bias(self, g, x, wsize, stride, padding, op, dil, groups, need_w, need_b, *args):
        return torch.empty(wsize if need_w else (0,)), torch.empty((g.shape[1],) if need_b else (0,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", default="kb72", choices=sorted(ref.PROBLEMS))
    ap.add_argument("--calls", type=int, default=5000)
    a = ap.parse_args()
    p = dict(ref.PROBLEMS[a.problem], input=(2, 2, 2))  # the same configuration, tiny tensors
    m = mn.ModelNew(*ref.init_args(p))
    x = torch.randn(*ref.input_shape(p, batch=1), requires_grad=True)
    c = m.conv_transpose3d
    out = mn.output_size(x.shape[2:], c.weight.shape[2:], c.stride, c.padding, c.output_padding, c.dilation)
    mn._ext = _StubExtension((1, c.out_channels, *out))
    mn._check = lambda *args: None  # CPU tensors: the device check would raise (_check_once caches it anyway)
    mn._eager_ok = lambda *tensors: True
    g = torch.empty(1, c.out_channels, *out)

    def per_call(backward: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(a.calls):
            y = m(x)
            if backward:
                y.backward(g)
        return (time.perf_counter() - t0) / a.calls * 1e6

    for backward in (False, True):
        per_call(backward)  # warm-up
        what = "forward+backward" if backward else "forward"
        print(f"{a.problem} {what}: {per_call(backward):.1f} us a call of Python and autograd (extension stubbed)")


if __name__ == "__main__":
    main()
