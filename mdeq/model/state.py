"""The joint equilibrium state: all branches of one sample packed into one flat vector.

The solver sees z as (B, D) with D = sum_i C_i * H_i * W_i (finest branch first, each branch in
C, H, W order); f splits it back into maps. ``split`` returns *views* into z (no copies), so a
solver iterate costs no extra memory to look at as feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StateLayout:
    """Shapes (C_i, H_i, W_i) of every branch, finest first; branch i is at (H_0 / 2^i, W_0 / 2^i)."""

    shapes: tuple[tuple[int, int, int], ...]

    @classmethod
    def for_finest(cls, channels: tuple[int, ...], height: int, width: int) -> StateLayout:
        """Layout for branches whose finest map is (height, width); the caller checked divisibility."""
        return cls(tuple((c, height >> i, width >> i) for i, c in enumerate(channels)))

    @property
    def branch_sizes(self) -> list[int]:
        """Flat size C_i * H_i * W_i per branch (what the solver uses for per-branch residuals)."""
        return [c * h * w for c, h, w in self.shapes]

    @property
    def total(self) -> int:
        return sum(self.branch_sizes)

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """(B, D) -> [(B, C_i, H_i, W_i)] as views of z (z's last dim must be contiguous)."""
        maps, offset = [], 0
        for (c, h, w), size in zip(self.shapes, self.branch_sizes):
            maps.append(z[:, offset:offset + size].view(z.shape[0], c, h, w))
            offset += size
        return maps

    def pack(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """[(B, C_i, H_i, W_i)] -> (B, D), one new tensor."""
        return torch.cat([m.flatten(1) for m in maps], dim=1)
