"""FLOPs of an MDEQ training step (counted once per configuration) and model FLOP utilization.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; norms and
elementwise ops count zero, as in every MFU figure). A step's count depends on how many f
evaluations the solvers used, so three counts are taken once: one f evaluation (F), one VJP through
f (V), and one whole training step (forward + backward) with its f_nfe / b_nfe. A step with other
solver counts is then ``step + (nfe - nfe_0) F + (vjps - vjps_0) V`` (vjps = b_nfe - 1: the adjoint
solve's first evaluation at g = 0 needs no VJP). The solvers' own low-rank products (Broyden,
Anderson: at most 8·B·history·D FLOPs per evaluation, small next to F) are in the counted step but
not extrapolated.
"""

from __future__ import annotations

from dataclasses import dataclass

# dense peak TFLOP/s per (card name fragment, math): the vendors' data-sheet figures without sparsity.
# Matched in order against torch.cuda.get_device_name(); "tf32" applies to fp32 when TF32 is on.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM (the "H100 80GB HBM3" name)
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
]


@dataclass
class StepFlops:
    """FLOPs counted for one configuration (whole batch)."""

    f_eval: int  # one f evaluation
    vjp: int  # one vector-Jacobian product through f
    step: int  # one training step (forward + backward) as counted
    f_nfe: int  # forward solver evaluations of the counted step
    b_nfe: int  # adjoint evaluations of the counted step (0 without an implicit backward)

    def for_step(self, f_nfe: float, b_nfe: float) -> float:
        """FLOPs of a step whose solvers used ``f_nfe`` / ``b_nfe`` evaluations."""
        vjps, counted_vjps = max(b_nfe - 1, 0), max(self.b_nfe - 1, 0)
        return self.step + (f_nfe - self.f_nfe) * self.f_eval + (vjps - counted_vjps) * self.vjp


class _GlobalOnly:
    """A stand-in for FlopCounterMode's per-module tracker: every FLOP goes to "Global"."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        return None


def count(fn) -> int:
    """FLOPs of calling ``fn()`` (matmuls and convolutions).

    FlopCounterMode's module tracker hooks every module's backward, which refuses the
    ``autograd.grad`` calls the implicit backward makes inside ``backward()``; only the total is
    needed here, so the tracker is replaced by one that attributes everything to "Global".
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def count_step(model, images, labels, precision: str) -> StepFlops:
    """Count F, V and one forward + backward of ``model`` (gradients are cleared afterwards)."""
    import torch

    from mdeq.bench.common import autocast_for, task_loss

    device = images.device
    with torch.no_grad(), autocast_for(precision, device):
        injections = model.injection(model.stem(images))
        f_args = model.f.prepare(injections)
        z = torch.zeros(images.shape[0], model.f.layout(injections[0]).total, device=device)
        f_eval = count(lambda: model.f(z, *f_args))
    z_in = z.clone().requires_grad_()
    with autocast_for(precision, device):
        z_out = model.f(z_in, *f_args)
    vjp = count(lambda: torch.autograd.grad(z_out, z_in, torch.ones_like(z_out)))

    def step() -> None:
        with autocast_for(precision, device):
            loss = task_loss(model(images), labels)
        loss.backward()

    total = count(step)
    stats = model.last_stats
    model.zero_grad(set_to_none=True)
    return StepFlops(f_eval=f_eval, vjp=vjp, step=total, f_nfe=stats.nfe, b_nfe=stats.b_nfe)


def peak_tflops(device_name: str | None, precision: str, tf32: bool) -> float | None:
    """The dense peak of a known card for ``precision`` (bf16/fp16 share one), else None."""
    if not device_name:
        return None
    math = "bf16" if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            return peaks[math]
    return None
