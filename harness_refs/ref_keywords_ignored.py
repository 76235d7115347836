"""Harness reference: keyword arguments in another order, an argument accepted and ignored,
groups, and constructor parameters in an order of the reference's own."""
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, out_channels, in_channels, unused_scale=1.0, groups=2, kernel=(2, 3, 4)):
        super().__init__()
        self.deconv = nn.ConvTranspose3d(kernel_size=kernel, out_channels=out_channels,
                                         in_channels=in_channels, groups=groups, stride=(1, 2, 1),
                                         padding=(0, 1, 1), bias=False)

    def forward(self, x):
        return self.deconv(x)


def get_inputs():
    return [torch.rand(3, 6, 5, 6, 7)]


def get_init_inputs():
    return [10, 6, 0.5]
