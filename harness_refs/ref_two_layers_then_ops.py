"""Harness reference: two transposed convolutions (one through torch.nn.), a U-Net style
kernel-2 stride-2 upsampling, and other operations after the convolutions."""
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, c_in, c_mid, c_out):
        super().__init__()
        self.up1 = torch.nn.ConvTranspose3d(c_in, c_mid, 2, stride=2)
        self.up2 = nn.ConvTranspose3d(c_mid, c_out, kernel_size=(3, 3, 1), padding=(1, 1, 0))

    def forward(self, x):
        return torch.tanh(self.up2(torch.relu(self.up1(x)))) * 0.5 + 1


def get_inputs():
    return [torch.rand(4, 32, 8, 10, 12)]


def get_init_inputs():
    return [32, 32, 16]
