"""The data description of one MDEQ: architecture values plus the released recipe values.

A ``ModelSpec`` is what the registry stores per entry and what ``MDEQModel`` is built from. Every
check that can be made without an input lives in ``validate`` and raises ``MDEQError`` with one
message that says what would work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from mdeq.errors import MDEQError

Task = Literal["classification", "segmentation"]
Injection = Literal["highest", "all"]

# Keys `create_model(name, **overrides)` accepts: exactly the `model.*` config keys that shape a model.
OVERRIDE_KEYS = ("num_classes", "num_branches", "channels", "head_channels", "final_channels",
                 "width_expansion", "num_groups", "dropout", "injection", "downsample_times",
                 "weight_tied_layers")


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry: the architecture and the released training recipe that goes with it."""

    name: str
    task: Task
    num_classes: int  # classes (classification) or train ids (segmentation, 19 for Cityscapes)
    channels: tuple[int, ...]  # C_i per branch, finest first; len = number of branches
    width_expansion: int  # E: the block's first conv maps C -> E*C
    num_groups: int  # G: GroupNorm groups inside f (post-fusion norm uses G // 2)
    dropout: float  # variational (channel-wise) dropout rate inside the residual block
    downsample_times: int  # stride-2 stem stages before the equilibrium (0: CIFAR, 2: ImageNet)
    head_channels: tuple[int, ...] | None = None  # classification bottleneck widths per branch
    final_channels: int | None = None  # classification head's final 1x1 conv width
    injection: Injection = "highest"  # inject x~ into the finest branch only, or into every branch
    weight_tied_layers: int = 0  # >0: weight-tied unrolled model applying f this many times
    # Released recipe values (the trainer reads these as defaults).
    f_max_iter: int = 18  # forward solver iteration cap ("threshold")
    b_max_iter: int = 20  # backward (adjoint) solver iteration cap
    stop_mode: Literal["abs", "rel"] = "rel"
    pretrain_steps: int = 0  # warm-up: unrolled f with ordinary backprop for this many steps
    pretrain_layers: int = 5  # f applications during warm-up
    paper_params: str | None = field(default=None, compare=False)  # count the paper quotes, for docs

    @property
    def num_branches(self) -> int:
        return len(self.channels)

    def validate(self) -> ModelSpec:
        """Raise MDEQError naming the first value that cannot build a model; return self."""
        where = f"model {self.name!r}"
        if self.task not in ("classification", "segmentation"):
            raise MDEQError(f"{where}: task must be 'classification' or 'segmentation', got {self.task!r}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise MDEQError(f"{where}: channels must be one positive count per branch, got {list(self.channels)}")
        if self.num_classes < 1:
            raise MDEQError(f"{where}: num_classes must be >= 1, got {self.num_classes}")
        if self.width_expansion < 1:
            raise MDEQError(f"{where}: width_expansion must be >= 1, got {self.width_expansion}")
        if not 0.0 <= self.dropout < 1.0:
            raise MDEQError(f"{where}: dropout must be in [0, 1), got {self.dropout}")
        if self.downsample_times < 0:
            raise MDEQError(f"{where}: downsample_times must be >= 0, got {self.downsample_times}")
        if self.injection not in ("highest", "all"):
            raise MDEQError(f"{where}: injection must be 'highest' or 'all', got {self.injection!r}")
        if self.weight_tied_layers < 0:
            raise MDEQError(f"{where}: weight_tied_layers must be >= 0, got {self.weight_tied_layers}")
        self._validate_groups(where)
        if self.task == "classification":
            if self.head_channels is None or self.final_channels is None:
                raise MDEQError(f"{where}: a classification model needs head_channels (one per branch) "
                                "and final_channels")
            if len(self.head_channels) != self.num_branches:
                raise MDEQError(f"{where}: head_channels has {len(self.head_channels)} entries for "
                                f"{self.num_branches} branches: give one bottleneck width per branch")
            if any(c < 1 for c in self.head_channels) or self.final_channels < 1:
                raise MDEQError(f"{where}: head_channels and final_channels must be positive")
        elif self.head_channels is not None or self.final_channels is not None:
            raise MDEQError(f"{where}: head_channels/final_channels configure the classification head; "
                            "a segmentation model has none (leave them unset)")
        return self

    def _validate_groups(self, where: str) -> None:
        # GroupNorm(G) runs on C_i and E*C_i channels, the post-fusion GroupNorm(G // 2) on C_i.
        groups = self.num_groups
        post_groups = groups // 2 if self.num_branches > 1 else groups
        if groups < 1 or (self.num_branches > 1 and post_groups < 1):
            raise MDEQError(f"{where}: num_groups must be >= {2 if self.num_branches > 1 else 1} "
                            f"(the post-fusion GroupNorm uses num_groups // 2), got {groups}")
        bad = [c for c in self.channels if c % groups or c % post_groups]
        if bad:
            raise MDEQError(f"{where}: every branch's channel count must be divisible by num_groups={groups}"
                            f" and by num_groups // 2={post_groups}; {bad} are not "
                            f"(channels {list(self.channels)})")

    def with_overrides(self, **overrides) -> ModelSpec:
        """This spec with `model.*` config overrides applied (``None`` keeps the entry's value).

        Changing ``num_branches`` without ``channels`` keeps the entry's first N channel counts (and
        head widths), so ``num_branches=1`` is the single-stream ablation of the same model.
        """
        unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
        if unknown:
            raise MDEQError(f"unknown model override(s) {unknown}; known: {', '.join(OVERRIDE_KEYS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        changes: dict = {}
        branches = given.pop("num_branches", None)
        if "channels" in given:
            changes["channels"] = tuple(int(c) for c in given.pop("channels"))
        if "head_channels" in given:
            changes["head_channels"] = tuple(int(c) for c in given.pop("head_channels"))
        changes.update(given)
        if branches is not None:
            channels = changes.get("channels", self.channels)
            if "channels" in changes and len(channels) != branches:
                raise MDEQError(f"num_branches={branches} but channels has {len(channels)} entries "
                                f"{list(channels)}: give one channel count per branch")
            if branches < 1:
                raise MDEQError(f"num_branches must be >= 1, got {branches}")
            if branches > len(channels):
                raise MDEQError(f"num_branches={branches} but model {self.name!r} defines only "
                                f"{len(channels)} channel counts {list(channels)}: also set channels "
                                f"(one per branch{', and head_channels' if self.task == 'classification' else ''})")
            changes["channels"] = tuple(channels[:branches])
        # Fewer branches than the entry: keep its first head widths too (more need explicit widths).
        n = len(changes.get("channels", self.channels))
        if self.head_channels is not None and "head_channels" not in changes and len(self.head_channels) > n:
            changes["head_channels"] = self.head_channels[:n]
        return replace(self, **changes).validate()
