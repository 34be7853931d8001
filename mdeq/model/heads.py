"""Explicit heads that run once on the equilibrium maps z* (finest first).

Classification (HRNet-style): a bottleneck per branch (4 * head_i channels); from the finest branch
down, y <- bottleneck_{i+1}(z_{i+1}) + [stride-2 conv3x3 (bias) -> BN -> ReLU](y); then 1x1 conv
(bias) to final_channels -> BN -> ReLU -> global average pool -> linear.
Segmentation: bilinear upsample (align_corners=True) of every branch to the finest, concatenate
(sum C_i channels), 1x1 conv (bias) -> BN -> ReLU -> 1x1 conv (bias) to the class count. Logits
stay at the finest branch's resolution (1/4 of the input for the released recipes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mdeq.model.conv_bn import ConvBN


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion), BN without affine, 1x1 conv + BN projection shortcut.

    Keys: conv{1,2,3}.weight, bn{1,2,3}.running_*, shortcut.conv.weight, shortcut.bn.*.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, affine=False)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, affine=False)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out, affine=False)
        self.shortcut = None
        if in_channels != out:
            self.shortcut = ConvBN(in_channels, out, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x) if self.shortcut is not None else x
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + residual)


class ClassificationHead(nn.Module):
    """[z_i] -> logits (B, num_classes). Keys: bottlenecks.{i}.*, downsamples.{i}.*, final.*, classifier.*."""

    def __init__(self, channels: tuple[int, ...], head_channels: tuple[int, ...], final_channels: int,
                 num_classes: int) -> None:
        super().__init__()
        widths = [h * Bottleneck.expansion for h in head_channels]
        self.bottlenecks = nn.ModuleList([Bottleneck(c, h) for c, h in zip(channels, head_channels)])
        self.downsamples = nn.ModuleList([ConvBN(widths[i], widths[i + 1], 3, stride=2, bias=True)
                                          for i in range(len(widths) - 1)])
        self.final = ConvBN(widths[-1], final_channels, 1, bias=True)
        self.classifier = nn.Linear(final_channels, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = self.bottlenecks[0](features[0])  # (B, 4*h_0, H_0, W_0)
        for i, down in enumerate(self.downsamples):
            y = self.bottlenecks[i + 1](features[i + 1]) + down(y)  # (B, 4*h_{i+1}, H_{i+1}, W_{i+1})
        y = self.final(y).mean(dim=(2, 3))  # (B, final_channels)
        return self.classifier(y)


class SegmentationHead(nn.Module):
    """[z_i] -> logits (B, num_classes, H_0, W_0). Keys: fuse.*, classifier.{weight,bias}."""

    def __init__(self, channels: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        total = sum(channels)
        self.fuse = ConvBN(total, total, 1, bias=True)
        self.classifier = nn.Conv2d(total, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = [features[0]] + [F.interpolate(z, size=size, mode="bilinear", align_corners=True)
                                for z in features[1:]]
        return self.classifier(self.fuse(torch.cat(maps, dim=1)))  # (B, classes, H_0, W_0)
