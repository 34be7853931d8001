"""Bytes per parameter held by one data-parallel rank under DeepSpeed ZeRO, by precision and optimizer.

The arithmetic of the ZeRO paper (Rajbhandari et al., 2020, section 3), per parameter ψ and world
size W, with the layout DeepSpeed uses:

| precision | weights | gradients | optimizer state                               |
|-----------|---------|-----------|-----------------------------------------------|
| fp32      | 4       | 4         | moments (Adam 8, SGD+momentum 4, SGD 0)       |
| bf16/fp16 | 2       | 2         | fp32 master copy 4 + moments (Adam 8, SGD 4/0) |

Stage 1 divides the optimizer state by W, stage 2 also the gradients, stage 3 also the weights.
What it leaves out (documented in docs/scaling.md): DeepSpeed's communication buckets
(``reduce_bucket_size``/``allgather_bucket_size``, 5e8 elements by default — a fixed cost that
the planner adds separately as ``comm_buffers``), and ZeRO-3's gathered parameters in flight
(``stage3_prefetch_bucket_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdeq.errors import MDEQError

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class ZeroBytes:
    """Bytes one rank holds for ``num_params`` parameters."""

    weights: int
    gradients: int
    optimizer_state: int  # moments plus, in mixed precision, the fp32 master weights


def moment_bytes_per_param(optimizer: str, momentum: float = 0.9) -> int:
    """fp32 bytes of optimizer moments per parameter (Adam: exp_avg + exp_avg_sq)."""
    if optimizer not in OPTIMIZERS:
        raise MDEQError(f"optimizer {optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
    if optimizer in ("adam", "adamw"):
        return 8
    return 4 if momentum > 0 else 0


def zero_bytes(num_params: int, *, precision: str = "fp32", zero_stage: int = 0, world_size: int = 1,
               optimizer: str = "adam", momentum: float = 0.9) -> ZeroBytes:
    """Per-rank bytes of weights, gradients and optimizer state after ZeRO partitioning."""
    if precision not in PRECISIONS:
        raise MDEQError(f"precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if zero_stage not in (0, 1, 2, 3):
        raise MDEQError(f"zero stage must be 0, 1, 2 or 3, got {zero_stage}")
    if world_size < 1:
        raise MDEQError(f"world size must be >= 1, got {world_size}")
    half = precision != "fp32"
    weight_bytes = 2 if half else 4
    grad_bytes = 2 if half else 4
    optim_bytes = moment_bytes_per_param(optimizer, momentum) + (4 if half else 0)  # + fp32 master

    def share(per_param: int, partitioned: bool) -> int:
        # ceil: a rank's partition is padded to equal size (DeepSpeed aligns partitions)
        total = per_param * num_params
        return -(-total // world_size) if partitioned else total

    return ZeroBytes(
        weights=share(weight_bytes, zero_stage >= 3),
        gradients=share(grad_bytes, zero_stage >= 2),
        optimizer_state=share(optim_bytes, zero_stage >= 1),
    )
