"""What the loop reports: interval metrics summed over ranks, the run's params, evaluations with
their convergence figure, the run-summary figure, checkpoints and solver health.

Counts are global (summed over ranks) unless a name says otherwise; solver numbers are means over
the interval's steps and every rank's solves.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from trainer.distributed import all_reduce_sum

# solver/* keys averaged over steps and ranks; a fixed list, identical on every rank, so the flush's
# one all-reduce has the same shape everywhere whatever each rank's steps reported
SOLVER_KEYS = ("solver/f_nfe", "solver/b_nfe", "solver/abs_residual", "solver/rel_residual", "solver/b_residual",
               "solver/protective_break", "solver/f_converged", "solver/b_converged", "solver/f_hit_cap",
               "solver/b_hit_cap", *(f"solver/residual_branch{i}" for i in range(4)), "train/grad_norm")


class IntervalMeter:
    """Accumulates step outcomes between two logging points; ``flush`` (collective) reduces them."""

    def __init__(self, world_size: int, task: str = "classification", device: torch.device | None = None) -> None:
        self.world_size = world_size
        self.accuracy_key = "train/top1" if task == "classification" else "train/pixel_acc"
        self.device = device or torch.device("cpu")
        self.skipped_total = 0
        self._reset()

    def _reset(self) -> None:
        self.losses: list[float] = []
        self.solver: dict[str, list[float]] = {}
        self.samples = 0
        self.correct = self.scored = 0.0
        self.data_seconds = 0.0
        self.t0 = time.perf_counter()
        self.step_seconds: list[float] = []
        self.lr = 0.0
        self.skipped = 0
        self.pretrain = False

    def add(self, outcome, lr: float, pretrain: bool, stream=None) -> None:
        if outcome.applied and math.isfinite(outcome.loss):
            self.losses.append(outcome.loss)
        else:
            self.skipped += 1
            self.skipped_total += 1
        for key, value in outcome.solver.items():
            self.solver.setdefault(key, []).append(value)
        self.samples += outcome.samples
        self.correct += outcome.correct
        self.scored += outcome.scored
        self.data_seconds += outcome.data_seconds
        self.step_seconds.append(outcome.seconds)
        self.lr = lr
        self.pretrain = pretrain

    def flush(self, stream=None) -> dict[str, float]:
        """The interval's metrics (MLflow names), then start a new interval. Collective: every rank
        calls it at the same steps."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        steps = sorted(self.step_seconds)
        seen = float(getattr(stream, "samples_seen", 0) or 0)
        bad = float(getattr(stream, "bad_samples", 0) or 0)
        local = [float(self.samples), self.correct, self.scored, self.data_seconds, seen, bad]
        for key in SOLVER_KEYS:
            values = self.solver.get(key, [])
            local += [float(sum(values)), float(len(values))]
        total = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=self.device)).cpu().tolist()
        samples, correct, scored, data_seconds, seen, bad = total[:6]
        metrics = {
            "train/loss": sum(self.losses) / len(self.losses) if self.losses else float("nan"),
            "train/lr": self.lr,
            "train/images_per_s": samples / elapsed,  # all ranks
            self.accuracy_key: 100.0 * correct / scored if scored else float("nan"),  # all ranks
            "train/data_wait_fraction": data_seconds / self.world_size / elapsed,  # mean over ranks
            "train/step_s": steps[len(steps) // 2] if steps else float("nan"),  # median of train_step alone
            "train/wall_step_s": elapsed / max(len(steps), 1),  # wall time per step since the last log point (all of it)
            "train/skipped_steps": float(self.skipped_total),
            "train/unrolled_pretraining": 1.0 if self.pretrain else 0.0,
        }
        for i, key in enumerate(SOLVER_KEYS):
            value_sum, count = total[6 + 2 * i], total[7 + 2 * i]
            if count:
                metrics[key] = value_sum / count
        for key, values in self.solver.items():  # anything else a step reports: this rank's mean
            if key not in SOLVER_KEYS:
                metrics[key] = sum(values) / len(values)
        if stream is not None:
            metrics["data/samples_seen"] = seen  # all ranks: steps x global batch
            metrics["data/bad_samples"] = bad
            if isinstance(getattr(stream, "epoch", None), (int, float)):
                metrics["data/epoch"] = float(stream.epoch)
        self._reset()
        return metrics


def run_params(cfg, flat: dict, *, resolved_model: dict, deq_options, batching, world_size: int,
               pretrain_steps: int, tracking_uri: str, output_dir: Path) -> dict:
    """The MLflow params: the flattened config with every ``null`` the run resolved replaced by the
    value it used (model preset, solver caps, pre-training length, accumulation, ...), plus the batch
    layout and precision under ``run.*``."""
    params = dict(flat)
    params.update({f"model.{k}": v for k, v in resolved_model.items()})
    params.update({
        "deq.f_max_iter": deq_options.f_max_iter, "deq.b_max_iter": deq_options.b_max_iter,
        "deq.pretrain_steps": pretrain_steps, "deq.pretrain_layers": deq_options.unrolled_steps,
        "train.grad_accum_steps": batching.grad_accum_steps, "train.global_batch_size": batching.global_batch,
        "data.eval_batch_size": cfg.data.eval_batch_size or cfg.data.batch_size,
        "train.output_dir": str(output_dir), "tracking.uri": tracking_uri,
        "run.world_size": world_size, "run.global_batch": batching.global_batch,
        "run.micro_batch_per_rank": batching.micro_batch, "run.grad_accum_steps": batching.grad_accum_steps,
        "run.precision": cfg.deepspeed.precision,
        "run.solver_compute_dtype": str(deq_options.compute_dtype or "fp32").replace("torch.", ""),
    })
    return params


def resolved_model_params(cfg, spec) -> dict:
    """``model.*`` as built (``spec``: the model's resolved ``ModelSpec``), no ``None`` left."""
    out = {"name": cfg.model.name, "init_from": cfg.model.init_from or "none",
           "num_branches": len(spec.channels)}
    for key in ("num_classes", "channels", "head_channels", "final_channels", "width_expansion", "num_groups",
                "dropout", "injection", "downsample_times", "weight_tied_layers"):
        value = getattr(spec, key)
        out[key] = list(value) if isinstance(value, tuple) else ("none" if value is None else value)
    return out
