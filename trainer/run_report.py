"""``RunReport``: everything the loop tells the user, in one object the loop calls at named moments.

- ``step``: solver health (console warning + MLflow tag ``solver_health``) and the latest solver traces;
- ``interval``: console line, MLflow metrics, the history the summary figure draws;
- ``evaluation``: console line, ``eval/*`` metrics, the convergence figure with its data
  (``plots/convergence_step<N>.png`` + ``.json``), overlays, the refreshed run-summary figure;
- ``checkpoint``: ``checkpoint/last_committed_step`` and ``run/checkpoints.json``;
- ``finish``: the run's files as artifacts and a last summary figure.
Rank 0 does the I/O; on other ranks every method is cheap and silent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trainer import plots
from trainer.solver_health import TAG, SolverHealth


class RunReport:
    def __init__(self, tracker, progress, *, cfg, task: str, num_classes: int, options, pretrain_steps: int,
                 global_batch: int, is_main: bool, out_dir: Path, history: list[dict] | None = None) -> None:
        self.tracker, self.progress = tracker, progress
        self.task, self.num_classes = task, num_classes
        self.is_main = is_main
        self.out_dir = out_dir
        self.metric_key = "top1" if task == "classification" else "miou"
        self.health = SolverHealth(threshold=cfg.tracking.solver_health_residual,
                                   window=cfg.tracking.solver_health_window,
                                   f_max_iter=options.f_max_iter, b_max_iter=options.b_max_iter)
        self.solver_setup = {"stop_mode": options.stop_mode, "f_tol": options.f_tol, "b_tol": options.b_tol,
                             "f_max_iter": options.f_max_iter, "b_max_iter": options.b_max_iter}
        self.summary_setup = {**self.solver_setup, "task": task, "pretrain_steps": pretrain_steps,
                              "lr_warmup_steps": cfg.optim.warmup_steps, "max_steps": cfg.train.max_steps,
                              "global_batch": global_batch, "health_residual": cfg.tracking.solver_health_residual}
        self.history: list[dict] = history if history is not None else []  # interval records, oldest first
        self.evals: list[dict] = []
        self.last_traces: dict | None = None
        self.best: float | None = None
        self._summary_steps: list[int | None] = []  # the evaluations after which the summary was drawn

    # ------------------------------------------------------------------------------------------
    def step(self, step: int, outcome, pretrain: bool) -> None:
        """After optimizer step ``step`` (1-based count of steps done)."""
        if outcome.traces:
            self.last_traces = {"step": step, **outcome.traces}
        if not self.is_main:
            return
        verdict = self.health.observe(step, outcome.solver, pretrain)
        if verdict is not None:
            text = verdict.message()
            self.progress.message(f"WARNING {text}")
            self.tracker.set_tag(TAG, text[:5000])

    def interval(self, step: int, metrics: dict[str, float], phase: str) -> dict:
        """Report a logging interval's metrics; returns the record ``{"step", **metrics}`` it kept."""
        self.progress.step(step, metrics, phase)
        self.tracker.log_metrics(metrics, step)
        record = {"step": step, **metrics}
        self.history.append(record)
        return record

    def evaluation(self, step: int, result, unrolled: bool) -> None:
        """Report an evaluation after ``step`` steps (``unrolled``: it ran in pre-training mode)."""
        m = result.metrics
        if math.isfinite(m.get(self.metric_key, math.nan)):
            self.best = max(self.best if self.best is not None else -math.inf, m[self.metric_key])
        self._console(step, m, unrolled)
        eval_metrics = {f"eval/{k}": v for k, v in m.items()} | {"eval/unrolled": float(unrolled)}
        if self.best is not None:
            eval_metrics[f"eval/best_{self.metric_key}"] = self.best
        self.tracker.log_metrics(eval_metrics, step)
        self.evals.append({"step": step, "unrolled": unrolled, **m})
        if not (self.is_main and self.tracker.active):
            return
        if result.residual_trace and not unrolled:
            data = self.convergence_data(step, result)
            name = f"plots/convergence_step{step:07d}"
            fig = plots.convergence(data)
            self.tracker.log_figure(fig, f"{name}.png")
            plots.close(fig)
            self.tracker.log_json(data, f"{name}.json")
        if result.overlays:
            import data_pipelines as data_mod

            fig = plots.segmentation_overlays(result.overlays, self.num_classes, data_mod.IMAGENET_MEAN,
                                              data_mod.IMAGENET_STD)
            self.tracker.log_figure(fig, f"overlays/step{step:07d}.png")
            plots.close(fig)
        self.summary()

    def _console(self, step: int, m: dict, unrolled: bool) -> None:
        mode = " [unrolled: no equilibrium solve]" if unrolled else ""
        if self.task == "classification":
            solver = (f", {m['f_nfe']:.1f} f-evals, residual {m['residual']:.2e}, "
                      f"{100 * m['f_converged']:.0f}% converged" if "residual" in m else "")
            self.progress.message(f"eval @ step {step}{mode}: top1 {m['top1']:.2f}%  top5 {m['top5']:.2f}%  "
                                  f"loss {m['loss']:.4f}  ({m.get('samples', 0)} images, {m['seconds']:.1f}s{solver})")
        else:
            self.progress.message(f"eval @ step {step}{mode}: mIoU {m['miou']:.2f}%  pixel acc {m['pixel_acc']:.2f}%"
                                  f"  ({m.get('samples', 0)} images, {m['seconds']:.1f}s)")
        if m.get("samples_lost"):
            self.progress.message(f"eval @ step {step}: {m['samples_lost']} validation samples LOST to unreadable "
                                  "shard data (see the warning above): the figures cover the rest")

    def convergence_data(self, step: int, result) -> dict:
        """What the convergence figure shows, as JSON (written beside it)."""
        data = {"step": step, **self.solver_setup,
                "eval": {"joint": result.residual_trace, "branches": result.branch_trace, "solves": result.solves,
                         "end_joint": result.residual_trace[-1], "end_branches": result.branch_trace[-1],
                         "returned_branches": result.branch_residuals},
                "train": None}
        t = self.last_traces
        if t:
            data["train"] = {"step": t["step"], "f_joint": t["f_trace"], "f_branches": t["f_branch_trace"],
                             "b_joint": t["b_trace"], "b_branches": t["b_branch_trace"]}
        return data

    def summary(self) -> None:
        """Redraw ``plots/run_summary.png`` (and its data) from everything logged so far."""
        if not (self.is_main and self.tracker.active):
            return
        from trainer.summary_plot import run_summary

        data = {**self.summary_setup, "history": self.history, "evals": self.evals}
        fig = run_summary(data)
        self.tracker.log_figure(fig, "plots/run_summary.png")
        plots.close(fig)
        self._summary_steps.append(self.evals[-1]["step"] if self.evals else None)
        self.tracker.log_json({"drawn_after_steps": self._summary_steps,
                               "eval_steps": [e["step"] for e in self.evals]}, "plots/run_summary.json")

    def checkpoint(self, step: int, checkpoint_dir: Path) -> None:
        """After checkpoint ``step`` was committed: the metric and the list of committed checkpoints."""
        if not self.is_main:
            return
        from trainer.checkpoint import store

        self.tracker.log_metrics({"checkpoint/last_committed_step": float(step)}, step)
        committed = []
        for number, path in store.list_tag_dirs(checkpoint_dir):
            if store.is_committed(path):
                marker = json.loads((path / store.MARKER).read_text())
                committed.append({"step": number, "path": str(path), "metric": marker.get("metric"),
                                  "committed_at": marker.get("committed_at")})
        self.tracker.log_json({"checkpoint_dir": str(checkpoint_dir), "committed": committed,
                               "best_metric_name": self.metric_key}, "run/checkpoints.json")

    def finish(self) -> None:
        """Upload the run's files (final_metrics.json, config.yaml, metrics.jsonl: closed by now)."""
        if not (self.is_main and self.tracker.active):
            return
        for name in ("final_metrics.json", "config.yaml", "metrics.jsonl"):
            if (self.out_dir / name).is_file():
                self.tracker.log_artifact(self.out_dir / name, "run")
        self.tracker.log_json(self.history[-1] if self.history else {}, "run/last_train_metrics.json")
