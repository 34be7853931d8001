"""Multiscale fusion: every branch receives the sum of all branches brought to its resolution.

For target branch i and source branch j:
- j == i: identity;
- j > i (coarser -> finer): 1x1 conv (C_j -> C_i, no bias) -> GN(G) -> nearest upsample x2^(j-i);
- j < i (finer -> coarser): (i-j) stride-2 conv3x3 (no bias) each followed by GN(G); all but the
  last keep C_j channels and are followed by ReLU; the last maps to C_i.
Then per branch: ReLU -> weight-normalized 1x1 conv (C_i -> C_i) -> GN(G // 2). Fusion convs are
not weight-normalized; the post-fusion conv is, and its normalized weight comes in as an argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mdeq.model.weight_norm import WeightNormConv2d


class UpsampleFuse(nn.Module):
    """Coarser source j -> finer target i. Keys: conv.weight, norm.{weight,bias}."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.GroupNorm(num_groups, out_channels)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.norm(self.conv(x)), scale_factor=self.scale, mode="nearest")


class DownsampleStep(nn.Module):
    """One stride-2 conv3x3 (no bias) -> GN, with a ReLU unless it is the last step."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.GroupNorm(num_groups, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


class DownsampleFuse(nn.Module):
    """Finer source j -> coarser target i in (i - j) halvings. Keys: steps.{k}.conv.weight, steps.{k}.norm.*."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, levels: int) -> None:
        super().__init__()
        self.steps = nn.Sequential(*[
            DownsampleStep(in_channels, out_channels if k == levels - 1 else in_channels, num_groups,
                           relu=k != levels - 1)
            for k in range(levels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.steps(x)


class PostFuse(nn.Module):
    """ReLU -> weight-normalized 1x1 conv -> GN(G // 2). Keys: conv.weight_{v,g}, norm.*."""

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.conv = WeightNormConv2d(channels, channels, 1)
        self.norm = nn.GroupNorm(num_groups // 2, channels)

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv.conv(F.relu(x), weight))


class MultiscaleFusion(nn.Module):
    """Fuses n >= 2 branches. Keys: fuse.{i}.{j}.* (i = target, j = source, j != i), post_fuse.{i}.*."""

    def __init__(self, channels: tuple[int, ...], num_groups: int) -> None:
        super().__init__()
        n = len(channels)
        rows = []
        for i in range(n):
            row = []
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(UpsampleFuse(channels[j], channels[i], num_groups, scale=2 ** (j - i)))
                else:
                    row.append(DownsampleFuse(channels[j], channels[i], num_groups, levels=i - j))
            rows.append(nn.ModuleList(row))
        self.fuse = nn.ModuleList(rows)
        self.post_fuse = nn.ModuleList([PostFuse(c, num_groups) for c in channels])

    def prepare(self) -> list[torch.Tensor]:
        """Normalized post-fusion weights, one per branch, for this forward pass."""
        return [post.conv() for post in self.post_fuse]

    def forward(self, xs: list[torch.Tensor], weights: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, row in enumerate(self.fuse):
            y = xs[i]
            for j, transform in enumerate(row):
                if j != i:
                    y = y + transform(xs[j])  # (B, C_i, H_i, W_i)
            out.append(self.post_fuse[i](y, weights[i]))
        return out
