"""Measured peak memory of real training steps, to check ``plan_memory`` against.

- CUDA: ``torch.cuda.max_memory_allocated`` over the last step (after ``reset_peak_memory_stats``),
  which also counts cuDNN workspaces and the CUDA caching allocator's block rounding.
- CPU: :class:`~mdeq.planner.live_bytes.LiveTensorBytes`, the peak total of live tensor storages
  (parameters, gradients, optimizer state, activations, solver buffers) at op boundaries.

The step is plain PyTorch (one process, no DeepSpeed): forward with the implicit solve, loss,
backward with the adjoint solve, optimizer step. That is what a ZeRO-0 fp32 rank holds; the ZeRO
partitioning itself is arithmetic (``mdeq.planner.zero``) and is not measured here. The last of
``steps`` steps is measured, so lazily created optimizer state (Adam moments) is included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mdeq.errors import MDEQError
from mdeq.planner.estimate import PlanRequest, _force_pretrain, _options_for
from mdeq.planner.live_bytes import LiveTensorBytes, module_tensors, optimizer_tensors


@dataclass(frozen=True)
class Measurement:
    """Peak bytes of the last measured step, how they were counted, and the solver's iterations."""

    peak: int
    method: str  # "cuda.max_memory_allocated" | "live tensor bytes (<device>)"
    device: str
    f_evaluations: int
    b_evaluations: int
    seconds_per_step: float


def _optimizer(name: str, params, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=momentum)
    if name in ("adam", "adamw"):
        return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, lr=1e-4)
    raise MDEQError(f"optimizer {name!r} is unknown; use sgd, adam or adamw")


def measure_peak_memory(request: PlanRequest, *, steps: int = 2, device: str | torch.device | None = None,
                        seed: int = 0, method: str = "auto") -> Measurement:
    """Run ``steps`` real fp32 training steps of ``request`` (world 1, ZeRO-0) and measure the last.

    ``method``: ``auto`` (the CUDA allocator's peak on CUDA, live tensor bytes elsewhere),
    ``allocator`` (CUDA only) or ``live-bytes`` (any device; on CUDA it separates what the planner
    models, tensors, from what it does not: cuDNN workspaces and allocator rounding).
    """
    if method not in ("auto", "allocator", "live-bytes"):
        raise MDEQError(f"measurement method {method!r} is unknown; use auto, allocator or live-bytes")
    from mdeq.registry import create_model

    if request.precision != "fp32" or request.zero_stage != 0 or request.world_size != 1:
        raise MDEQError("measure_peak_memory runs one plain fp32 process: use precision fp32, zero stage 0, "
                        "world size 1 (ZeRO partitioning is checked by arithmetic)")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = create_model(request.model, device=device, **dict(request.overrides))
    model.train()
    model.deq_options = _options_for(model, request)
    if request.mode == "pretrain":
        _force_pretrain(model)
    optimizer = _optimizer(request.optimizer, model.parameters(), request.momentum)
    x = torch.randn(request.batch_size, 3, request.height, request.width, device=device)  # (B, 3, H, W)
    if model.spec.task == "segmentation":
        target = torch.randint(0, model.spec.num_classes, (request.batch_size, request.height, request.width),
                               device=device)
    else:
        target = torch.randint(0, model.spec.num_classes, (request.batch_size,), device=device)

    def step() -> None:
        logits = model(x)
        if model.spec.task == "segmentation":
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, target, ignore_index=255)
        loss.backward()
        del logits, loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if method == "allocator" and device.type != "cuda":
        raise MDEQError("the allocator method needs a CUDA device; use live-bytes elsewhere")
    if device.type == "cuda" and method != "live-bytes":
        for _ in range(steps - 1):
            step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        peak, method = torch.cuda.max_memory_allocated(device), "cuda.max_memory_allocated"
    else:
        meter = LiveTensorBytes(device)
        meter.adopt(module_tensors(model) + [x, target])
        with meter:
            for _ in range(steps - 1):
                step()
            meter.adopt(optimizer_tensors(optimizer))  # created inside the mode already; no double count
            meter.reset_peak()
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
        peak, method = meter.peak_bytes, f"live tensor bytes ({device.type})"
    stats = model.last_stats
    return Measurement(peak=peak, method=method, device=str(device), f_evaluations=getattr(stats, "nfe", 0),
                       b_evaluations=getattr(stats, "b_nfe", 0), seconds_per_step=elapsed)
