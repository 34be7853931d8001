"""The rank-0 console progress line: step, loss, accuracy, lr, images/s, ETA, solver iterations and
convergence."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Prints one line per logging interval on the main rank (silent elsewhere)."""

    def __init__(self, max_steps: int, start_step: int, *, active: bool, stream=None) -> None:
        self.max_steps = max_steps
        self.active = active
        self.stream = stream or sys.stdout
        self._t0 = time.perf_counter()
        self._step0 = start_step

    def eta(self, step: int) -> float:
        """Seconds left at the mean pace since the start of this process (``step`` steps done)."""
        done = step - self._step0
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self._t0) / done * (self.max_steps - step)

    def step(self, step: int, metrics: dict[str, float], phase: str) -> None:
        """Print the progress line after optimizer step ``step`` (1-based count of steps done)."""
        if not self.active:
            return
        eta = self.eta(step)
        parts = [f"step {step}/{self.max_steps}", f"[{phase}]", f"loss {metrics.get('train/loss', float('nan')):.4f}"]
        for key, name in (("train/top1", "top1"), ("train/pixel_acc", "pixel acc")):
            if key in metrics:
                parts.append(f"{name} {metrics[key]:.1f}%")
        parts += [f"lr {metrics.get('train/lr', 0.0):.3g}", f"{metrics.get('train/images_per_s', 0.0):.1f} img/s"]
        if phase == "equilibrium":
            parts.append(f"solver f {metrics.get('solver/f_nfe', 0):.0f} it / b {metrics.get('solver/b_nfe', 0):.0f} it")
            if "solver/rel_residual" in metrics:
                parts.append(f"res {metrics['solver/rel_residual']:.2e}")
            if "solver/f_converged" in metrics:
                parts.append(f"converged f {100 * metrics['solver/f_converged']:.0f}%"
                             + (f" / b {100 * metrics['solver/b_converged']:.0f}%" if "solver/b_converged" in metrics else ""))
        else:
            parts.append(f"f unrolled x{metrics.get('solver/f_nfe', 0):.0f}")
        parts.append(f"eta {format_duration(eta) if eta == eta else '?'}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.active:
            print(text, file=self.stream, flush=True)
