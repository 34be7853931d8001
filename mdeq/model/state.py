"""The joint equilibrium state: all branches of one sample packed into one flat vector.

The solver sees z as (B, D) with D = sum_i C_i * H_i * W_i (finest branch first, each branch in
H, W, C order); f splits it back into maps. ``split`` returns *views* into z (no copies), so a
solver iterate costs no extra memory to look at as feature maps. The maps are (B, C, H, W) tensors
in channels_last memory format: on CPU the oneDNN convolutions then skip a layout reorder of every
input and output, which made f ~1.5x faster (docs/benchmarks.md, issue 4). Nothing outside this
class depends on the order inside a branch's slice.
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
        """(B, D) -> [(B, C_i, H_i, W_i)] channels_last views of z (z's last dim must be contiguous)."""
        maps, offset = [], 0
        for (c, h, w), size in zip(self.shapes, self.branch_sizes):
            maps.append(z[:, offset:offset + size].view(z.shape[0], h, w, c).permute(0, 3, 1, 2))
            offset += size
        return maps

    def pack(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """[(B, C_i, H_i, W_i)] -> (B, D), one new tensor (no extra copy for channels_last maps)."""
        return torch.cat([m.permute(0, 2, 3, 1).flatten(1) for m in maps], dim=1)
