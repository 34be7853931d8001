"""conv -> BatchNorm (-> ReLU): the explicit (outside-f) building block of the stem and the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """conv (k x k, "same" padding) -> BN, then ReLU if ``relu``. Keys: conv.weight[, conv.bias], bn.*."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 bias: bool = False, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x
