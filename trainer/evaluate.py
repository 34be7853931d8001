"""Distributed evaluation: every rank evaluates its share, counters are summed across ranks.

The eval loader yields the same number of batches on every rank (collectives in a ZeRO-3 forward
need that) and pads with ignore targets (-1 for classes, 255 for label maps), which the meters skip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trainer.distributed import all_reduce_sum
from trainer.losses import IGNORE_INDEX, upsample_to
from trainer.metrics import ClassificationMeter, ConfusionMeter


@dataclass
class EvalResult:
    """Metrics (reduced over ranks) plus what the convergence plot and overlays need (rank-local)."""

    metrics: dict[str, float]
    residual_trace: list[float] = field(default_factory=list)  # mean residual per solver iteration
    branch_residuals: list[float] = field(default_factory=list)  # mean final residual per branch
    overlays: list[tuple] = field(default_factory=list)  # (image (3,H,W), label (H,W), pred (H,W)) CPU


def _forward(module, images: torch.Tensor, pretrain: bool, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    if autocast_dtype is None:
        return module(images, pretrain=pretrain)
    with torch.autocast(device_type=images.device.type, dtype=autocast_dtype):
        return module(images, pretrain=pretrain)


@torch.no_grad()
def evaluate(module, loader, *, task: str, num_classes: int, device: torch.device, dtype: torch.dtype,
             pretrain: bool = False, max_batches: int | None = None, keep_overlays: int = 0,
             autocast_dtype: torch.dtype | None = None) -> EvalResult:
    """Evaluate ``module`` (a DeepSpeed engine or a plain model) over ``loader``; collective.

    ``max_batches`` caps the length (identical on every rank). ``autocast_dtype`` runs a plain model's
    forward under autocast (a DeepSpeed engine applies its own). The module's mode is restored.
    """
    was_training = module.training
    module.eval()
    meter = ClassificationMeter(device) if task == "classification" else ConfusionMeter(num_classes, device)
    trace_sum: list[float] = []
    trace_count: list[int] = []
    branch_sum = torch.zeros(0, dtype=torch.float64)
    nfe = torch.zeros(2, dtype=torch.float64)  # [f evaluations summed over batches, batches]
    overlays: list[tuple] = []
    t0 = time.perf_counter()
    for index, (images, targets) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        images = images.to(device, dtype=dtype, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = _forward(module, images, pretrain, autocast_dtype).float()
        if task == "classification":
            keep = targets >= 0  # padding samples carry -1
            loss_sum = F.cross_entropy(logits[keep], targets[keep], reduction="sum").item() if keep.any() else 0.0
            meter.update(logits[keep], targets[keep], loss_sum)
        else:
            loss = F.cross_entropy(upsample_to(logits, tuple(targets.shape[-2:])), targets.long(),
                                   ignore_index=IGNORE_INDEX)
            meter.update(logits, targets, loss.item() if torch.isfinite(loss) else None)
            if len(overlays) < keep_overlays:
                pred = upsample_to(logits[:1], tuple(targets.shape[-2:])).argmax(1)[0]
                overlays.append((images[0].float().cpu(), targets[0].cpu(), pred.cpu()))
        stats = getattr(_model_of(module), "last_stats", None)
        if stats is not None:
            nfe += torch.tensor([float(stats.nfe), 1.0], dtype=torch.float64)
            for i, value in enumerate(stats.residual_trace):
                if i >= len(trace_sum):
                    trace_sum.append(0.0)
                    trace_count.append(0)
                trace_sum[i] += float(value)
                trace_count[i] += 1
            residuals = torch.tensor([float(r) for r in stats.branch_residuals], dtype=torch.float64)
            branch_sum = residuals if branch_sum.numel() == 0 else branch_sum + residuals
    metrics = meter.compute()
    totals = all_reduce_sum(nfe.to(device)).cpu()
    if totals[1] > 0:
        metrics["f_nfe"] = totals[0].item() / totals[1].item()
    metrics["seconds"] = time.perf_counter() - t0
    if was_training:
        module.train()
    batches = max(nfe[1].item(), 1.0)
    return EvalResult(metrics=metrics,
                      residual_trace=[s / c for s, c in zip(trace_sum, trace_count)],
                      branch_residuals=(branch_sum / batches).tolist(),
                      overlays=overlays)


def _model_of(module):
    """The underlying model of a DeepSpeed engine (or the model itself)."""
    return getattr(module, "module", module)
