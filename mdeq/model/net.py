"""MDEQModel: stem -> injection -> one joint equilibrium of all branches -> head.

Every model of the zoo is this class built from a ``ModelSpec``. Interface (shared with the
trainer): ``forward(x, pretrain=False) -> logits``, ``forward_features(x, pretrain=False) -> [z_i]``,
``forward_head(features)``, ``deq_options`` (mutable, set by the trainer), ``last_stats`` (the
solver statistics of the last forward).

Modes of the equilibrium part:
- default: ``solve_equilibrium(mode="equilibrium")`` (solve without grad, implicit backward);
- ``pretrain=True`` (the "shallow warm-up"): f applied ``deq_options.unrolled_steps`` times from
  zeros with ordinary backprop; the registry sets ``unrolled_steps`` to the recipe's
  ``pretrain_layers``;
- ``weight_tied_layers > 0``: the weight-tied unrolled ablation, always ``weight_tied_layers`` f
  applications with ordinary backprop, whatever ``pretrain`` says.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from mdeq.deq.equilibrium import solve_equilibrium
from mdeq.deq.options import DEQOptions
from mdeq.errors import MDEQError
from mdeq.model.heads import ClassificationHead, SegmentationHead
from mdeq.model.layer import MDEQLayer
from mdeq.model.spec import ModelSpec
from mdeq.model.stem import Injection, Stem
from mdeq.model.weight_norm import WeightNormConv2d

INIT_STD = 0.01  # every conv weight and bias ~ N(0, 0.01), as described
# The released code builds segmentation models with BatchNorm momentum 0.01 (classification: 0.1,
# PyTorch's default); slower running statistics suit the small per-GPU batches of Cityscapes.
BN_MOMENTUM = {"classification": 0.1, "segmentation": 0.01}


class MDEQModel(nn.Module):
    """A multiscale deep equilibrium model. Top-level keys: stem.*, injection.*, f.*, head.*."""

    def __init__(self, spec: ModelSpec, *, device: torch.device | str | None = None) -> None:
        """Build from ``spec``; with ``device="meta"`` only shapes exist (for counting parameters).

        Modules are created on the meta device and then materialized once, so building even the XL
        entries costs one N(0, 0.01) fill per tensor (deterministic given ``torch.manual_seed``).
        """
        super().__init__()
        self.spec = spec.validate()
        with torch.device("meta"):
            self.stem = Stem(spec.channels[0], spec.downsample_times)
            self.injection = Injection(spec)
            self.f = MDEQLayer(spec)
            if spec.task == "classification":
                self.head = ClassificationHead(spec.channels, spec.head_channels, spec.final_channels,
                                               spec.num_classes)
            else:
                self.head = SegmentationHead(spec.channels, spec.num_classes)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM[spec.task]
        target = torch.device(device) if device is not None else torch.get_default_device()
        if target.type != "meta":
            self.to_empty(device=target)
            self.reset_parameters()
        self.deq_options = DEQOptions(f_max_iter=spec.f_max_iter, b_max_iter=spec.b_max_iter,
                                      stop_mode=spec.stop_mode, unrolled_steps=spec.pretrain_layers)
        self.last_stats = None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Convs (and their biases) ~ N(0, 0.01); norms weight 1, bias 0, fresh running stats.

        Weight-normalized convs draw v ~ N(0, 0.01) and set g = ||v||, so their effective weight is
        N(0, 0.01) too. The linear classifier keeps PyTorch's default init (as released).
        """
        for module in self.modules():
            if isinstance(module, WeightNormConv2d):
                module.reset_parameters(INIT_STD)
            elif isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, INIT_STD)
                if module.bias is not None:
                    module.bias.normal_(0.0, INIT_STD)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.Linear)):
                module.reset_parameters()
            elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                raise TypeError(f"no initialisation rule for {type(module).__name__}")  # a bug, not user input

    # ---- input checks -------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: the stem halves d times, each coarser branch once more."""
        return 2 ** (self.spec.downsample_times + self.spec.num_branches - 1)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise MDEQError unless an input of (height, width) reaches every branch at an exact scale."""
        m, d, n = self.size_multiple, self.spec.downsample_times, self.spec.num_branches
        why = f"{n} branch(es) after {d} stem downsampling(s)"
        if height < m or width < m:
            raise MDEQError(f"input {height}x{width} is too small for {why}: the coarsest branch would be "
                            f"under 1 pixel; use at least {m}x{m}, or fewer branches / downsample_times")
        bad = [s for s in (height, width) if s % m]
        if bad:
            sizes = sorted({s // m * m for s in bad if s >= m} | {(s // m + 1) * m for s in bad})
            raise MDEQError(f"input {height}x{width} cannot be halved cleanly for {why}: height and width "
                            f"must be multiples of {m} (e.g. {', '.join(str(s) for s in sizes)})")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise MDEQError(f"model {self.spec.name!r} expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise MDEQError(f"model {self.spec.name!r} expects 3 input channels (RGB), got {x.shape[1]} "
                            f"(input shape {tuple(x.shape)}); convert the images to RGB")
        self.check_input_size(x.shape[2], x.shape[3])

    # ---- forward --------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, pretrain: bool = False) -> list[torch.Tensor]:
        """(B, 3, H, W) -> equilibrium maps [(B, C_i, H_i, W_i)], finest first; sets ``last_stats``."""
        self._check_input(x)
        stem_out = self.stem(x)  # (B, C_0, H / 2^d, W / 2^d)
        injections = self.injection(stem_out)
        f_args = self.f.prepare(injections)  # normalized weights + dropout masks: once per pass
        layout = self.f.layout(injections[0])
        # z starts at zeros, in the parameters' dtype: fp32 under autocast (the solver state stays
        # fp32), bf16 when an engine cast the whole module (f then needs no autocast to run).
        z0 = stem_out.new_zeros(x.shape[0], layout.total, dtype=self.stem.layers[0].conv.weight.dtype)
        options, mode = self.deq_options, "equilibrium"
        if self.spec.weight_tied_layers > 0:
            options, mode = replace(options, unrolled_steps=self.spec.weight_tied_layers), "unrolled"
        elif pretrain:
            mode = "unrolled"
        z, self.last_stats = solve_equilibrium(self.f, z0, f_args, options=options,
                                               branch_sizes=layout.branch_sizes, mode=mode)
        return layout.split(z)

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Equilibrium maps -> logits: (B, classes) or (B, classes, H_0, W_0)."""
        return self.head(features)

    def forward(self, x: torch.Tensor, pretrain: bool = False) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, pretrain=pretrain))
