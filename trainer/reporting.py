"""What the loop reports: interval averages for console/MLflow, evaluation metrics and figures,
and the final artifacts (metrics JSON, loss curve)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from trainer import plots


class IntervalMeter:
    """Averages step outcomes between two logging points (rank-local, loss already rank-averaged)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._reset()
        self.skipped_total = 0

    def _reset(self) -> None:
        self.losses: list[float] = []
        self.solver: dict[str, list[float]] = {}
        self.samples = 0
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
        self.data_seconds += outcome.data_seconds
        self.step_seconds.append(outcome.seconds)
        self.lr = lr
        self.pretrain = pretrain

    def flush(self, stream=None) -> dict[str, float]:
        """The interval's metrics (MLflow names), then start a new interval."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        steps = sorted(self.step_seconds)
        metrics = {
            "train/loss": sum(self.losses) / len(self.losses) if self.losses else float("nan"),
            "train/lr": self.lr,
            "train/images_per_s": self.samples * self.world_size / elapsed,
            "train/data_wait_fraction": self.data_seconds / elapsed,
            "train/step_s": steps[len(steps) // 2] if steps else float("nan"),  # median of train_step alone
            "train/wall_step_s": elapsed / max(len(steps), 1),  # wall time per step since the last log point (all of it)
            "train/skipped_steps": float(self.skipped_total),
            "train/warmup": 1.0 if self.pretrain else 0.0,
        }
        for key, values in self.solver.items():
            metrics[key] = sum(values) / len(values)
        if stream is not None:
            for name in ("bad_samples", "samples_seen", "epoch"):
                value = getattr(stream, name, None)
                if isinstance(value, (int, float)):
                    metrics[f"data/{name}"] = float(value)
        self._reset()
        return metrics


def log_eval(tracker, progress, result, step: int, task: str, num_classes: int) -> None:
    """Console line, MLflow metrics ("eval/...") and the convergence figure (and overlays)."""
    m = result.metrics
    if task == "classification":
        progress.message(f"eval @ step {step}: top1 {m['top1']:.2f}%  top5 {m['top5']:.2f}%  loss {m['loss']:.4f}"
                         f"  ({m.get('samples', 0)} images, {m['seconds']:.1f}s"
                         + (f", {m['f_nfe']:.1f} f-evals" if "f_nfe" in m else "") + ")")
    else:
        progress.message(f"eval @ step {step}: mIoU {m['miou']:.2f}%  pixel acc {m['pixel_acc']:.2f}%"
                         f"  ({m['seconds']:.1f}s)")
    tracker.log_metrics({f"eval/{k}": v for k, v in m.items()}, step)
    if not tracker.active:
        return
    if result.residual_trace:
        fig = plots.convergence(result.residual_trace, result.branch_residuals, step)
        tracker.log_figure(fig, f"plots/convergence_step{step:07d}.png")
        plots.close(fig)
    if result.overlays:
        import data_pipelines as data

        fig = plots.segmentation_overlays(result.overlays, num_classes, data.IMAGENET_MEAN, data.IMAGENET_STD)
        tracker.log_figure(fig, f"overlays/step{step:07d}.png")
        plots.close(fig)


def log_final_artifacts(tracker, out_dir: Path, history: list[dict], pretrain_steps: int) -> None:
    """Upload final_metrics.json, config.yaml, metrics.jsonl and the loss curve."""
    if not tracker.active:
        return
    for name in ("final_metrics.json", "config.yaml", "metrics.jsonl"):
        if (out_dir / name).is_file():
            tracker.log_artifact(out_dir / name, "run")
    points = [(h["step"], h["train/loss"]) for h in history if math.isfinite(h.get("train/loss", float("nan")))]
    if points:
        fig = plots.loss_curve([p[0] for p in points], [p[1] for p in points], pretrain_steps)
        tracker.log_figure(fig, "plots/loss_curve.png")
        plots.close(fig)
    tracker.log_text(json.dumps(history[-1] if history else {}, indent=2), "run/last_train_metrics.json")
