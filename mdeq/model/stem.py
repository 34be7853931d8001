"""What runs once before the equilibrium: the downsampling stem and the input injection.

Stem: conv3x3(3 -> C_0) -> BN -> ReLU -> conv3x3(C_0 -> C_0) -> BN -> ReLU, the first conv stride 2
when downsample_times >= 1, the second when >= 2; each further time adds a stride-2
conv3x3 -> BN -> ReLU stage. Injection: 1x1 conv -> BN -> ReLU on the stem output gives x~, dropped
when downsample_times == 0 and there are <= 2 branches (the stem output is injected directly).
x~ goes into the finest branch; with injection="all" it is also brought down to every coarser
branch (our design: i stride-2 conv3x3 -> BN steps, ReLU after each, the last mapping to C_i).
BatchNorm is fine here: this runs once per forward, outside f.
"""

from __future__ import annotations

import torch
from torch import nn

from mdeq.model.conv_bn import ConvBN
from mdeq.model.spec import ModelSpec


class Stem(nn.Module):
    """(B, 3, H, W) -> (B, C_0, H / 2^d, W / 2^d). Keys: layers.{k}.conv.weight, layers.{k}.bn.*."""

    def __init__(self, channels: int, downsample_times: int) -> None:
        super().__init__()
        d = downsample_times
        stages = [ConvBN(3, channels, 3, stride=2 if d >= 1 else 1),
                  ConvBN(channels, channels, 3, stride=2 if d >= 2 else 1)]
        stages += [ConvBN(channels, channels, 3, stride=2) for _ in range(d - 2)]
        self.layers = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Injection(nn.Module):
    """Stem output -> the injection map(s) f adds in its blocks.

    Keys: transform.{conv,bn}.* (absent when dropped), to_branch.{i-1}.{k}.{conv,bn}.* (injection="all").
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        c0 = spec.channels[0]
        needs_transform = spec.downsample_times > 0 or spec.num_branches > 2
        self.transform = ConvBN(c0, c0, 1) if needs_transform else None
        self.to_branch = None
        if spec.injection == "all":
            self.to_branch = nn.ModuleList([
                nn.Sequential(*[ConvBN(c0, spec.channels[i] if k == i - 1 else c0, 3, stride=2)
                                for k in range(i)])
                for i in range(1, spec.num_branches)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[(B, C_0, H_0, W_0)] for the finest branch only, or one map per branch (finest first)."""
        injected = self.transform(x) if self.transform is not None else x
        if self.to_branch is None:
            return [injected]
        return [injected] + [down(injected) for down in self.to_branch]
