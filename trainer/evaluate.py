"""Distributed evaluation: every rank evaluates its share, counters are summed across ranks.

The eval loader yields the same number of batches on every rank (collectives in a ZeRO-3 forward
need that) and pads with ignore targets (-1 for classes, 255 for label maps), which the meters skip.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trainer.distributed import all_reduce_sum
from trainer.losses import IGNORE_INDEX, upsample_to
from trainer.metrics import ClassificationMeter, ConfusionMeter


@dataclass
class EvalResult:
    """Metrics and solver traces (reduced over ranks), overlays (rank-local).

    The traces are batch means of the forward solve's stop-mode residual after each f evaluation, a
    batch that stopped earlier counting with its final value, so a curve's last point is the mean
    residual at each solve's last f evaluation: ``metrics["residual"]`` (joint) and
    ``metrics["residual_branch<i>"]``. Empty for an evaluation in unrolled mode (no solve).
    """

    metrics: dict[str, float]
    residual_trace: list[float] = field(default_factory=list)  # joint residual per f evaluation
    branch_trace: list[list[float]] = field(default_factory=list)  # per f evaluation, one value per branch
    branch_residuals: list[float] = field(default_factory=list)  # per branch, of the returned (lowest) iterate
    solves: int = 0  # batches (all ranks) behind the traces
    overlays: list[tuple] = field(default_factory=list)  # (image (3,H,W), label (H,W), pred (H,W)) CPU


class _TraceSum:
    """Sums of per-batch forward-solve traces, padded to the cap with each batch's final value, in one
    tensor of a shape every rank knows in advance (cap and branch count), so one all-reduce sums it."""

    def __init__(self, cap: int, branches: int) -> None:
        self.cap, self.branches = cap, branches
        # rows: f evaluations; columns: [batches still solving, joint residual, branch 0.., ...]
        self.trace = torch.zeros(cap, 2 + branches, dtype=torch.float64)
        # [batches, converged fraction, cap hits, returned residual per branch...]
        self.totals = torch.zeros(3 + branches, dtype=torch.float64)

    def add(self, stats) -> None:
        n = min(len(stats.residual_trace), len(stats.branch_trace), self.cap)
        if n == 0 or len(stats.branch_trace[0]) != self.branches:
            return
        rows = torch.tensor([[1.0, stats.residual_trace[k], *stats.branch_trace[k]] for k in range(n)],
                            dtype=torch.float64)  # (n, 2 + branches)
        self.trace[:n] += rows
        self.trace[n:, 1:] += rows[-1, 1:]  # a finished solve keeps its final residual
        self.totals += torch.tensor([1.0, stats.converged_fraction, float(stats.hit_cap), *stats.branch_residuals],
                                    dtype=torch.float64)

    def reduce(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        flat = all_reduce_sum(torch.cat([self.trace.flatten(), self.totals]).to(device)).cpu()
        return flat[:self.trace.numel()].view_as(self.trace), flat[self.trace.numel():]


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
    meter = (ClassificationMeter(device) if task == "classification"
             else ConfusionMeter(num_classes, device, class_names=_class_names(loader, num_classes)))
    model = _model_of(module)
    options, spec = getattr(model, "deq_options", None), getattr(model, "spec", None)
    # the same decision on every rank (config only): whether the trace all-reduce runs
    traces = (_TraceSum(int(options.f_max_iter), len(spec.channels))
              if not pretrain and options is not None and spec is not None else None)
    nfe = torch.zeros(2, dtype=torch.float64)  # [f evaluations summed over batches, batches]
    overlays: list[tuple] = []
    t0 = time.perf_counter()
    consumed = 0
    # islice, not a break inside the loop: the loader counts a batch as read once it has yielded it
    for images, targets in itertools.islice(loader, max_batches):
        consumed += 1
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
        stats = getattr(model, "last_stats", None)
        if stats is not None:
            nfe += torch.tensor([float(stats.nfe), 1.0], dtype=torch.float64)
            if traces is not None:
                traces.add(stats)
    metrics = meter.compute()
    metrics.update(_sample_counts(loader, device, stopped_early=max_batches is not None and consumed >= max_batches))
    totals = all_reduce_sum(nfe.to(device)).cpu()
    if totals[1] > 0:
        metrics["f_nfe"] = totals[0].item() / totals[1].item()
    result = EvalResult(metrics=metrics, overlays=overlays)
    if traces is not None:
        _add_traces(result, *traces.reduce(device))
    metrics["seconds"] = time.perf_counter() - t0
    if was_training:
        module.train()
    return result


def _add_traces(result: EvalResult, trace: torch.Tensor, totals: torch.Tensor) -> None:
    """Fill the result's traces and solver metrics from the summed ``_TraceSum`` tensors."""
    solves = totals[0].item()
    if solves == 0:
        return
    longest = int((trace[:, 0] > 0).sum().item())  # f evaluations of the longest solve
    curves = (trace[:longest, 1:] / solves).tolist()  # (longest, 1 + branches)
    result.solves = int(solves)
    result.residual_trace = [row[0] for row in curves]
    result.branch_trace = [row[1:] for row in curves]
    result.branch_residuals = (totals[3:] / solves).tolist()
    result.metrics["residual"] = result.residual_trace[-1]
    for i, value in enumerate(result.branch_trace[-1]):
        result.metrics[f"residual_branch{i}"] = value
    result.metrics["f_converged"] = totals[1].item() / solves
    result.metrics["f_hit_cap"] = totals[2].item() / solves


def _class_names(loader, num_classes: int) -> list[str] | None:
    """The class names the shards' index lists (one per class), else None (metrics then use ids)."""
    names = list(getattr(getattr(loader, "shard_set", None), "classes", None) or [])
    return names if len(names) == num_classes else None


def _sample_counts(loader, device: torch.device, *, stopped_early: bool) -> dict[str, float]:
    """``samples`` (real samples evaluated), ``bad_samples`` (undecodable) and ``samples_lost`` (unreadable
    shard data), summed over ranks (collective); nothing for loaders that do not count."""
    if not hasattr(loader, "samples_read"):
        return {}
    counts = torch.tensor([loader.samples_read, loader.bad_samples, 0 if stopped_early else loader.samples_lost],
                          dtype=torch.float64, device=device)
    read, bad, lost = all_reduce_sum(counts).tolist()
    return {"samples": int(read), "bad_samples": int(bad), "samples_lost": int(lost)}


def _model_of(module):
    """The underlying model of a DeepSpeed engine (or the model itself)."""
    return getattr(module, "module", module)
