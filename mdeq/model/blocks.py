"""The per-branch residual block of f (one per resolution).

    conv3x3(C -> E*C) -> GN(G) -> ReLU -> conv3x3(E*C -> C) -> dropout -> + injection -> GN(G)
    -> + block input -> ReLU -> GN(G)

Only GroupNorm inside f, so f of one sample never depends on the rest of the batch. The two convs
are weight-normalized; their normalized weights and the dropout mask come in as arguments,
computed once per forward pass by ``prepare``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mdeq.model.dropout import VariationalDropout2d
from mdeq.model.weight_norm import WeightNormConv2d


class ResidualBlock(nn.Module):
    """One branch's block. Keys: conv1.weight_{v,g}, gn1.*, conv2.weight_{v,g}, gn2.*, gn3.*."""

    def __init__(self, channels: int, width_expansion: int, num_groups: int, dropout: float) -> None:
        super().__init__()
        hidden = width_expansion * channels
        self.conv1 = WeightNormConv2d(channels, hidden, 3)
        self.gn1 = nn.GroupNorm(num_groups, hidden)
        self.conv2 = WeightNormConv2d(hidden, channels, 3)
        self.drop = VariationalDropout2d(channels, dropout)
        self.gn2 = nn.GroupNorm(num_groups, channels)
        self.gn3 = nn.GroupNorm(num_groups, channels)

    def prepare(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(conv1 weight, conv2 weight, dropout mask or None) for this forward pass."""
        return self.conv1(), self.conv2(), self.drop(batch, like)

    def forward(self, x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                mask: torch.Tensor | None, injection: torch.Tensor | None) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1.conv(x, weight1)))  # (B, E*C, H, W)
        out = self.conv2.conv(out, weight2)  # (B, C, H, W)
        if mask is not None:
            out = out * mask  # (B, C, 1, 1): same channels dropped in every f evaluation
        if injection is not None:
            out = out + injection
        out = self.gn2(out)
        return self.gn3(F.relu(out + x))
