"""The reference: PyTorch's ConvTranspose3d as a KernelBench-style ``Model``, and the named
benchmark problems (shapes from ../shared/baseline.md) that tests and bench.py read."""

from __future__ import annotations

import torch
import torch.nn as nn


class Model(nn.Module):
    """3D transposed convolution (PyTorch / cuDNN)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple,
                 stride: tuple = (1, 1, 1), padding: tuple = (0, 0, 0),
                 output_padding: tuple = (0, 0, 0), groups: int = 1, bias: bool = False):
        super().__init__()
        self.conv_transpose3d = nn.ConvTranspose3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_transpose3d(x)


# Named problems. input = (D, H, W) of x; the constructor takes the other fields in order.
PROBLEMS = {
    "kb58": dict(batch=16, in_channels=32, out_channels=16, kernel_size=(3, 5, 7),
                 stride=(1, 1, 1), padding=(0, 0, 0), output_padding=(0, 0, 0), groups=1,
                 bias=False, input=(16, 32, 64)),
    "kb61": dict(batch=8, in_channels=48, out_channels=48, kernel_size=(3, 3, 3),
                 stride=(1, 1, 1), padding=(0, 0, 0), output_padding=(0, 0, 0), groups=1,
                 bias=False, input=(64, 64, 64)),
    "kb68": dict(batch=16, in_channels=32, out_channels=64, kernel_size=(3, 5, 5),
                 stride=(1, 1, 1), padding=(0, 0, 0), output_padding=(0, 0, 0), groups=1,
                 bias=False, input=(64, 64, 64)),
    "kb72": dict(batch=8, in_channels=32, out_channels=32, kernel_size=(3, 5, 7),
                 stride=(2, 2, 2), padding=(1, 2, 3), output_padding=(1, 1, 1), groups=4,
                 bias=False, input=(12, 24, 48)),
}
DEFAULT_PROBLEM = "kb58"


def init_args(problem: dict) -> list:
    """Positional constructor arguments of Model / ModelNew for a named problem."""
    p = problem
    return [p["in_channels"], p["out_channels"], p["kernel_size"], p["stride"], p["padding"],
            p["output_padding"], p["groups"], p["bias"]]


def input_shape(problem: dict, batch: int | None = None) -> tuple:
    p = problem
    return (p["batch"] if batch is None else batch, p["in_channels"], *p["input"])


def get_inputs():
    return [torch.rand(*input_shape(PROBLEMS[DEFAULT_PROBLEM]))]


def get_init_inputs():
    p = PROBLEMS[DEFAULT_PROBLEM]
    return [p["in_channels"], p["out_channels"], p["kernel_size"]]
