"""Solver health: is the equilibrium being found? A warning (console + MLflow tag) when it is not.

Over a window of equilibrium steps (unrolled pre-training steps do not count), the forward solve is
unhealthy when its final relative residual stays above ``deq.health_residual`` (the authors'
rule of thumb: above ~0.05 the returned z is not an equilibrium, and the implicit gradient is not
the gradient of anything; judged by the window's median, so one bad batch does not warn), or when the forward or the adjoint solve stops at its cap without
reaching its tolerance in most steps.
The verdict is judged on rank 0's solves (every rank solves the same f on a batch of the same
distribution) and needs no collective.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

TAG = "solver_health"

ADVICE = ("try: raise the solver caps (deq.f_max_iter, deq.b_max_iter), Jacobian regularization "
          "(deq.jac_reg_weight > 0 with deq.jac_reg_prob > 0), or a longer unrolled pre-training "
          "(deq.pretrain_steps)")


@dataclass
class HealthVerdict:
    """Why the solver was found unhealthy at ``step``."""

    step: int
    median_rel_residual: float
    threshold: float
    cap_hits: int  # steps whose forward solve stopped at its cap short of the tolerance
    b_cap_hits: int  # the same for the adjoint solve
    window: int
    f_max_iter: int
    b_max_iter: int

    def message(self) -> str:
        reasons = []
        if not self.median_rel_residual <= self.threshold:
            reasons.append(f"median forward relative residual {self.median_rel_residual:.3g} > {self.threshold:g}")
        if self.cap_hits * 2 > self.window:
            reasons.append(f"the forward solve stopped at its cap ({self.f_max_iter} f evaluations) short of "
                           f"the tolerance in {self.cap_hits}/{self.window} steps")
        if self.b_cap_hits * 2 > self.window:
            reasons.append(f"the adjoint solve stopped at its cap ({self.b_max_iter} evaluations) short of "
                           f"the tolerance in {self.b_cap_hits}/{self.window} steps")
        return (f"solver health: the equilibrium is not being found over the last {self.window} equilibrium steps "
                f"(up to step {self.step}): {'; '.join(reasons)}; {ADVICE}")


class SolverHealth:
    """Watches one rank's per-step solver numbers; ``observe`` returns a verdict once per episode.

    An episode of bad health is reported once (console and tag); a window that is healthy again ends
    it, so a later relapse is reported again.
    """

    def __init__(self, *, threshold: float, window: int, f_max_iter: int, b_max_iter: int) -> None:
        self.threshold = threshold
        self.window = window
        self.f_max_iter, self.b_max_iter = f_max_iter, b_max_iter
        self._residuals: deque[float] = deque(maxlen=window)
        self._cap_hits: deque[bool] = deque(maxlen=window)
        self._b_cap_hits: deque[bool] = deque(maxlen=window)
        self._in_episode = False
        self.warnings: list[HealthVerdict] = []

    def observe(self, step: int, solver: dict[str, float], pretrain: bool) -> HealthVerdict | None:
        """Feed optimizer step ``step``'s ``solver/*`` numbers; a verdict when health turns bad."""
        if pretrain or "solver/f_hit_cap" not in solver:
            return None
        self._residuals.append(solver["solver/rel_residual"])
        self._cap_hits.append(solver["solver/f_hit_cap"] > 0)
        self._b_cap_hits.append(solver.get("solver/b_hit_cap", 0.0) > 0)  # absent: no implicit backward
        if len(self._residuals) < self.window:
            return None
        ordered = sorted(self._residuals, key=lambda r: (r != r, r))  # NaN (a broken solve) sorts last
        median = ordered[(self.window - 1) // 2] if self.window % 2 else ordered[self.window // 2]
        hits, b_hits = sum(self._cap_hits), sum(self._b_cap_hits)
        bad = not median <= self.threshold or max(hits, b_hits) * 2 > self.window  # NaN is bad
        if not bad:
            self._in_episode = False
            return None
        if self._in_episode:
            return None
        self._in_episode = True
        verdict = HealthVerdict(step=step, median_rel_residual=median, threshold=self.threshold, cap_hits=hits,
                                b_cap_hits=b_hits, window=self.window, f_max_iter=self.f_max_iter,
                                b_max_iter=self.b_max_iter)
        self.warnings.append(verdict)
        return verdict
