"""Variational (channel-wise) dropout: one mask per forward pass, shared by every f evaluation.

Ordinary dropout would draw a new mask in every solver iteration, so f would change under the
solver's feet and no fixed point would exist. The paper samples one (B, C, 1, 1) mask per forward
pass; the module's call returns it (or ``None`` when inactive) and f multiplies by it.
"""

from __future__ import annotations

import torch
from torch import nn


class VariationalDropout2d(nn.Module):
    """Samples a channel-wise keep mask scaled by 1 / (1 - p); inactive in eval mode or when p = 0."""

    def __init__(self, channels: int, p: float) -> None:
        super().__init__()
        self.channels = channels
        self.p = p

    def forward(self, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """The mask (B, C, 1, 1) for this pass in ``like``'s dtype/device, or None (no dropout)."""
        if not self.training or self.p == 0.0:
            return None
        keep = torch.empty(batch, self.channels, 1, 1, device=like.device, dtype=like.dtype)
        return keep.bernoulli_(1.0 - self.p) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, p={self.p}"
