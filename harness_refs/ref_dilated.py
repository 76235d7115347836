"""Harness reference: dilation, output_padding and an int kernel size, bias on."""
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=2, padding=1,
                 output_padding=1, dilation=2, bias=True):
        super(Model, self).__init__()
        self.conv = nn.ConvTranspose3d(in_channels, out_channels, kernel_size, stride=stride,
                                       padding=padding, output_padding=output_padding,
                                       dilation=dilation, bias=bias)

    def forward(self, x):
        return self.conv(x)


def get_inputs():
    return [torch.rand(2, 8, 6, 7, 8)]


def get_init_inputs():
    return [8, 12, 3]
