"""The largest micro-batch whose planned peak, plus the GPU's own overhead, fits a memory budget.

``plan_memory`` models what the training step's tensors need (the caching allocator's
``max_memory_allocated``). A GPU needs more than that to run the step:

- a fixed part outside the tensors: the CUDA context, cuBLAS/cuDNN handles and workspaces
  (cuDNN's autotuned algorithms may ask for large workspaces);
- a proportional part: the caching allocator rounds blocks up (512 B small, 2 MiB segments) and
  fragments, so reserved memory exceeds allocated memory.

Both are PLACEHOLDERS, not calibrated on any card yet: ``GpuOverhead.PLACEHOLDER`` is a guess
written down so the arithmetic exists; ``mdeq/bench/gpu_suite.py`` measures the real terms
(``torch.cuda.mem_get_info`` and ``max_memory_reserved`` against the plan) on a lent GPU, and
docs/scaling.md will record the calibrated values. Pass measured ones with ``--overhead-fixed-gib`` /
``--overhead-fraction``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from mdeq.errors import MDEQError
from mdeq.planner.estimate import MemoryPlan, PlanRequest, plan_memory

GIB = 1 << 30


@dataclass(frozen=True)
class GpuOverhead:
    """Memory a GPU needs beyond the planned tensors: ``fixed_bytes + fraction * planned peak``."""

    fixed_bytes: int
    fraction: float
    calibrated: bool = False  # False: a placeholder guess, not a measurement

    def total(self, planned_peak: int) -> int:
        return self.fixed_bytes + int(self.fraction * planned_peak)


# guesses (context + workspaces ~1 GiB; allocator rounding and fragmentation ~10 %), to be calibrated
GpuOverhead.PLACEHOLDER = GpuOverhead(fixed_bytes=1 * GIB, fraction=0.10, calibrated=False)


@dataclass(frozen=True)
class Fit:
    """The answer: the largest batch (0: none fits), its plan and what the GPU overhead added."""

    batch_size: int
    budget_bytes: int
    plan: MemoryPlan | None
    overhead_bytes: int
    overhead: GpuOverhead
    plans_evaluated: int

    def as_dict(self) -> dict:
        out = asdict(self)
        out["needed_bytes"] = (self.plan.peak + self.overhead_bytes) if self.plan else None
        return out


def largest_batch(request: PlanRequest, budget_bytes: int, overhead: GpuOverhead = GpuOverhead.PLACEHOLDER,
                  max_batch: int = 1 << 16, plan_fn=plan_memory) -> Fit:
    """The largest ``batch_size`` for ``request`` whose plan + overhead is at most ``budget_bytes``.

    The planned peak is affine in the batch (every dynamic tensor scales with it), so two plans give
    a first guess; the answer is then confirmed with plans on both sides of it (it fits, one more
    does not), stepping if the guess was off: four plans when the guess is right. ``plan_fn`` is
    ``plan_memory`` or a memoized stand-in for it.
    """
    if budget_bytes <= 0:
        raise MDEQError(f"the memory budget must be positive, got {budget_bytes / GIB:.3g} GiB")
    cache: dict[int, MemoryPlan] = {}

    def plan(batch: int) -> MemoryPlan:
        if batch not in cache:
            cache[batch] = plan_fn(replace(request, batch_size=batch))
        return cache[batch]

    def need(batch: int) -> int:
        peak = plan(batch).peak
        return peak + overhead.total(peak)

    if need(1) > budget_bytes:
        return Fit(0, budget_bytes, plan(1), overhead.total(plan(1).peak), overhead, len(cache))
    per_sample = max(need(2) - need(1), 1)
    batch = max(1, min(max_batch, 1 + (budget_bytes - need(1)) // per_sample))
    while batch > 1 and need(batch) > budget_bytes:
        batch -= 1
    while batch < max_batch and need(batch + 1) <= budget_bytes:
        batch += 1
    chosen = plan(batch)
    return Fit(batch, budget_bytes, chosen, overhead.total(chosen.peak), overhead, len(cache))
