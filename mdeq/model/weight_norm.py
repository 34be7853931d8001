"""Weight-normalized convolutions whose normalized weight is computed once per forward pass.

The paper re-parametrizes the block convs and the post-fusion conv as w = g * v / ||v|| (norm per
output channel). A solve evaluates f tens of times, so recomputing w in every evaluation is wasted
work; instead the module's *call* returns the normalized weight (one autograd node per forward
pass) and f receives it through the solver's ``f_args``. Calling the module (rather than reading
its parameters from outside) keeps DeepSpeed ZeRO-3 able to gather ``weight_v``/``weight_g``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormConv2d(nn.Module):
    """Bias-free conv with weight ``weight_g * weight_v / ||weight_v||`` (norm over in, kh, kw).

    ``forward()`` takes no input and returns the normalized weight (out, in, k, k);
    ``conv(x, weight)`` applies it. Keys: ``weight_v`` (out, in, k, k), ``weight_g`` (out, 1, 1, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int | None = None) -> None:
        super().__init__()
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1, 1))

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.01) -> None:
        """v ~ N(0, std); g = ||v||, so the effective weight starts exactly at v ~ N(0, std)."""
        self.weight_v.normal_(0.0, std)
        self.weight_g.copy_(torch.linalg.vector_norm(self.weight_v, dim=(1, 2, 3), keepdim=True))

    def forward(self) -> torch.Tensor:
        norm = torch.linalg.vector_norm(self.weight_v, dim=(1, 2, 3), keepdim=True)  # (out, 1, 1, 1)
        return self.weight_v * (self.weight_g / norm)

    def conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Convolve x (B, in, H, W) with a weight returned by ``forward()`` of this pass."""
        return F.conv2d(x, weight, None, self.stride, self.padding)

    def extra_repr(self) -> str:
        out, inp, k, _ = self.weight_v.shape
        return f"{inp}, {out}, kernel_size={k}, stride={self.stride}, padding={self.padding}"
