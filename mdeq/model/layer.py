"""f_theta(z; x~): the map whose fixed point is the MDEQ's output (one "layer" of the model).

f is an ordinary ``nn.Module`` called as ``f(z, *f_args)`` with z the flat joint state (B, D) of
all branches; it returns f(z) in the same layout. ``prepare(injections)`` builds ``f_args`` once per
model forward pass: the injection map(s), every normalized weight and, in training with dropout,
the dropout masks. Every f evaluation of that pass reuses them, which is what makes f one fixed
function for the solver and saves recomputing the weight norm per iteration.

``f_args`` layout (a flat tuple of tensors so any solver can pass it through untouched):
    injections  (1 tensor, or one per branch with injection="all"), finest first, (B, C_i, H_i, W_i)
    weights     conv1, conv2 of each branch's block, then each branch's post-fusion conv
    masks       (only when dropout is active) one (B, C_i, 1, 1) mask per branch
"""

from __future__ import annotations

import torch
from torch import nn

from mdeq.model.blocks import ResidualBlock
from mdeq.model.fusion import MultiscaleFusion
from mdeq.model.spec import ModelSpec
from mdeq.model.state import StateLayout


class MDEQLayer(nn.Module):
    """Per-branch residual blocks, then multiscale fusion (none for a single branch).

    Keys: branches.{i}.* (see ResidualBlock), fusion.fuse.{i}.{j}.*, fusion.post_fuse.{i}.*.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.channels = tuple(spec.channels)
        self.branches = nn.ModuleList([
            ResidualBlock(c, spec.width_expansion, spec.num_groups, spec.dropout) for c in self.channels])
        # A single stream has nothing to fuse: f is the residual block alone (as released).
        self.fusion = MultiscaleFusion(self.channels, spec.num_groups) if len(self.channels) > 1 else None
        self.num_injections = len(self.channels) if spec.injection == "all" else 1
        self.num_weights = 2 * len(self.channels) + (len(self.channels) if self.fusion is not None else 0)

    def layout(self, finest: torch.Tensor) -> StateLayout:
        """State layout for an injection whose finest map is ``finest`` (B, C_0, H_0, W_0)."""
        return StateLayout.for_finest(self.channels, finest.shape[-2], finest.shape[-1])

    def prepare(self, injections: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """f_args for one forward pass: injections, normalized weights, dropout masks (see module doc)."""
        batch, like = injections[0].shape[0], injections[0]
        weights, masks = [], []
        for block in self.branches:
            weight1, weight2, mask = block.prepare(batch, like)
            weights += [weight1, weight2]
            masks.append(mask)
        if self.fusion is not None:
            weights += self.fusion.prepare()
        active = [m for m in masks if m is not None]
        # the state's maps are channels_last (StateLayout); the injections are added to them in every
        # f evaluation, so convert them once here rather than mixing memory formats in each sum
        injections = [inj.contiguous(memory_format=torch.channels_last) for inj in injections]
        return tuple(injections) + tuple(weights) + tuple(active)

    def forward(self, z: torch.Tensor, *f_args: torch.Tensor) -> torch.Tensor:
        n = len(self.channels)
        injections = list(f_args[:self.num_injections]) + [None] * (n - self.num_injections)
        weights = f_args[self.num_injections:self.num_injections + self.num_weights]
        masks = list(f_args[self.num_injections + self.num_weights:]) or [None] * n
        layout = self.layout(f_args[0])
        xs = layout.split(z)  # views, (B, C_i, H_i, W_i)
        ys = [block(xs[i], weights[2 * i], weights[2 * i + 1], masks[i], injections[i])
              for i, block in enumerate(self.branches)]
        if self.fusion is not None:
            ys = self.fusion(ys, list(weights[2 * n:]))
        return layout.pack(ys)  # (B, D)
