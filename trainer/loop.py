"""``train(cfg)``: the whole training run, top to bottom.

``train`` runs the cheap checks, sets up the process group and hands over to ``Trainer``, whose
``run`` reads as the run does: build (model → engine → data → checkpointer) → resume from the newest
committed checkpoint → start tracking → steps (train one step, log, evaluate, save or stop) →
finish (final evaluation, summary files). Teardown happens in ``train``'s ``finally``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import data_pipelines as data
from trainer import build, jsonable
from trainer.checkpoint import Checkpointer, config_hash
from trainer.config import Config, config_to_dict, dump_config, flatten_config
from trainer.distributed import launcher_world_size, seed_everything, setup_distributed, teardown
from trainer.engine import build_engine, engine_dtype
from trainer.errors import TrainerError
from trainer.evaluate import evaluate
from trainer.fault import PREEMPTED_EXIT_CODE, DivergenceError, DivergenceGuard, PreemptionHandler
from trainer.fault.restarts import hold_after_commit_for_test
from trainer.optim import build_optimizer
from trainer.precision import slow_precision_warning
from trainer.preflight import preflight
from trainer.progress import Progress
from trainer.reporting import IntervalMeter, resolved_model_params, run_params
from trainer.run_report import RunReport
from trainer.schedules import lr_at, set_lr
from trainer.step import SampleLog, StepOutcome, sample_log_enabled, train_step
from trainer.tracking import Tracker, default_run_name
from trainer.transfer import WEIGHTS_NAME, apply_init_from, gather_state_dict, write_weights


@dataclass
class TrainResult:
    """What a finished run reports (identical on every rank except ``tracking_run_id``)."""

    steps: int
    final_metrics: dict[str, float]
    output_dir: str
    checkpoint_dir: str
    tracking_uri: str
    tracking_run_id: str | None
    history: list[dict] = field(default_factory=list)


def output_dir_of(cfg: Config) -> Path:
    return Path(cfg.train.output_dir) if cfg.train.output_dir else Path(cfg.checkpoint.dir).resolve().parent


def train(cfg: Config) -> TrainResult:
    """Train ``cfg`` in this process (one rank of a torchrun/DeepSpeed job, or alone)."""
    plan = preflight(cfg, launcher_world_size())  # user errors surface here, before heavy work
    layout = setup_distributed(cfg.train.seed)
    tracker = Tracker(cfg.tracking, active=layout.is_main)
    trainer = Trainer(cfg, plan, layout, tracker)
    try:
        return trainer.run()
    except SystemExit:
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        trainer.close()
        teardown(trainer.engine)


def resume_line(point) -> str:
    """"resumed from step N (committed <UTC time>, <dir>)" for a ResumePoint."""
    import datetime as dt

    from trainer.checkpoint.store import InvalidCheckpoint, read_marker

    try:
        stamp = read_marker(Path(point.path)).get("committed_at")
    except InvalidCheckpoint:
        stamp = None
    when = (dt.datetime.fromtimestamp(stamp, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            if isinstance(stamp, (int, float)) else "time unknown")
    return f"resumed from step {point.step} (committed {when}, {point.path})"


class Trainer:
    """One run's state (engine, data stream, step, best metric, run id) and its phases as methods."""

    def __init__(self, cfg: Config, plan, layout, tracker: Tracker) -> None:
        self.cfg, self.plan, self.layout, self.tracker = cfg, plan, layout, tracker
        self.task = plan.task
        self.metric_key = "top1" if self.task == "classification" else "miou"
        self.pretrain_steps = build.pretrain_steps(cfg, plan.spec)
        self.weight_tied = bool(cfg.model.weight_tied_layers)
        self.out_dir = output_dir_of(cfg)
        self.engine = None  # built by run(); torn down by train() whatever happens
        self.preemption: PreemptionHandler | None = None
        self.metrics_log = None
        self.step, self.best_metric, self.run_id = 0, None, None
        self.resized_from: int | None = None  # processes of the checkpoint resumed from, when not ours
        self.resumed_from = None  # the ResumePoint a resume started from
        self.history: list[dict] = []
        self.last_eval: dict[str, float] = {}

    def run(self) -> TrainResult:
        self.build()
        self.resume()
        self.start_tracking()
        self.preemption = PreemptionHandler(grace_seconds=self.cfg.checkpoint.grace_seconds).install()
        self.announce()
        while self.step < self.cfg.train.max_steps:
            outcome = self.train_one_step()
            if outcome is None:  # rolled back to a committed checkpoint: self.step moved back
                continue
            self.step += 1
            self.log_interval(outcome)
            evaluated = self.maybe_evaluate()
            self.maybe_save_or_stop(evaluated)
        return self.finish()

    def close(self) -> None:
        """Undo what run() installed in this process (safe to call at any point)."""
        if self.preemption is not None:
            self.preemption.uninstall()  # its grace watchdog must not outlive this run
        if getattr(self, "checkpointer", None) is not None:
            self.checkpointer.close()  # the run lock of checkpoint.dir
        if self.metrics_log is not None:
            self.metrics_log.close()
            self.metrics_log = None

    # -- set-up ---------------------------------------------------------------------------------

    def build(self) -> None:
        """Model (same seed on every rank: identical init) → optimizer → engine → data → checkpointer."""
        cfg, plan, layout = self.cfg, self.plan, self.layout
        self.model = build.build_model(cfg, plan.num_classes)
        self.model.deq_options = build.deq_options(cfg, plan.spec)
        if plan.init_from_state is not None:
            apply_init_from(self.model, plan.init_from_state, cfg.model.init_from, verbose=layout.is_main)
        seed_everything(cfg.train.seed + layout.rank)  # per-rank randomness (dropout masks) from here on
        optimizer = build_optimizer(cfg.optim, self.model.parameters())
        resolved = config_to_dict(cfg)
        self.checkpointer = Checkpointer(cfg.checkpoint, rank=layout.rank, world_size=layout.world_size,
                                         config_hash=config_hash(resolved), config=resolved)
        # found before the engine: on another number of processes the accumulation that keeps the
        # run's global batch (train.hold_on_resize) depends on it (collective; refuses breaking config
        # changes, naming the keys)
        self.resume_point = self.checkpointer.find_resume()
        self.batching = build.batching(cfg, layout.world_size, build.run_global_batch(cfg, self.resume_point))
        self.engine = build_engine(cfg, self.model.to(layout.device), optimizer, self.batching.grad_accum_steps)
        self.dtype = engine_dtype(self.engine)
        self.stream = data.build_train_stream(cfg.data.dataset, cfg.data.train_shards,
                                              **build.train_stream_args(cfg, layout.rank, layout.world_size,
                                                                        self.batching),
                                              with_keys=sample_log_enabled())
        self.eval_loader = data.build_eval_loader(cfg.data.dataset, cfg.data.val_shards,
                                                  **build.eval_loader_args(cfg, layout.rank, layout.world_size))
        self.guard = DivergenceGuard(max_bad_steps=cfg.train.max_bad_steps, on_divergence=cfg.train.on_divergence)
        self.sample_log = SampleLog(layout.rank, layout.world_size)

    def resume(self) -> None:
        """Continue from the newest committed checkpoint (found by ``build``), if any."""
        point = self.resume_point
        if point is not None:
            self.resumed_from = point
            state = self.restore(point)
            self.best_metric = state.get("best_metric")
            self.run_id = state.get("mlflow_run_id")
            self.guard.load_state_dict(state.get("guard", {}))
            self.resized_from = state.get("resumed_from_world_size")
        self.batches = iter(self.stream)

    def restore(self, point) -> dict:
        """Load engine, step and data position from checkpoint ``point``; returns its client state."""
        state = self.checkpointer.load(self.engine, point)
        self.step = int(state["step"])
        if state.get("loader_state") is not None:
            self.stream.load_state_dict(state["loader_state"])
        return state

    def start_tracking(self) -> None:
        """Write the resolved config, open (or reopen) the MLflow run and the metrics file."""
        cfg = self.cfg
        if self.layout.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(dump_config(cfg))
            self.metrics_log = (self.out_dir / "metrics.jsonl").open("a")
        layout, options = self.layout, self.model.deq_options
        params = run_params(cfg, flatten_config(cfg), resolved_model=resolved_model_params(cfg, self.model.spec),
                            deq_options=options, batching=self.batching, world_size=layout.world_size,
                            pretrain_steps=self.pretrain_steps, tracking_uri=self.tracker.uri, output_dir=self.out_dir)
        self.run_id = self.tracker.start(params, run_id=self.run_id,
                                         run_name=default_run_name(cfg.model.name, self.task, layout.world_size),
                                         tags={"task": self.task, "model": cfg.model.name,
                                               "world_size": str(layout.world_size)})
        self.tracker.log_text(dump_config(cfg), "config/resolved.yaml")
        self.progress = Progress(cfg.train.max_steps, self.step, active=layout.is_main)
        self.meter = IntervalMeter(layout.world_size, self.task, layout.device)
        self.report = RunReport(self.tracker, self.progress, cfg=cfg, task=self.task, num_classes=self.plan.num_classes,
                                options=options, pretrain_steps=self.pretrain_steps,
                                global_batch=self.batching.global_batch, is_main=layout.is_main,
                                out_dir=self.out_dir, history=self.history)
        self.report.best = self.best_metric
        self.tracker.log_metrics({"world_size": float(layout.world_size)}, self.step)  # one point per start

    def announce(self) -> None:
        cfg, batching = self.cfg, self.batching
        if self.resumed_from is not None:
            self.progress.message(resume_line(self.resumed_from))
        if self.resized_from is not None:
            self.progress.message(f"world size changed: {self.resized_from} → {self.layout.world_size} processes at "
                                  f"step {self.step}; {batching.grad_accum_steps} micro-step(s) of "
                                  f"{batching.micro_batch} per process")
        self.progress.message(
            f"training {cfg.model.name} ({self.task}) on {self.layout.world_size} process(es), "
            f"{batching.global_batch} samples/step, steps {self.step}→{cfg.train.max_steps}, "
            f"unrolled pre-training until step {self.pretrain_steps}, ZeRO-{cfg.deepspeed.zero_stage} {cfg.deepspeed.precision}")
        slow = slow_precision_warning(cfg.deepspeed.precision, self.layout.device)
        if slow is not None:
            self.progress.message(f"warning: {slow}")

    # -- one step -------------------------------------------------------------------------------

    def is_pretrain(self) -> bool:
        """Unrolled pre-training (or a weight-tied model, which never solves for an equilibrium)."""
        return self.weight_tied or self.step < self.pretrain_steps

    def train_one_step(self) -> StepOutcome | None:
        """One optimizer step; None when the divergence guard rolled the run back instead."""
        cfg, step = self.cfg, self.step
        lr = lr_at(step, cfg.optim, cfg.train.max_steps)
        set_lr(self.engine.optimizer, lr)
        self.stepped_unrolled = self.is_pretrain()
        outcome = train_step(self.engine, self.batches, step=step, task=self.task, pretrain=self.stepped_unrolled,
                             accum=self.batching.grad_accum_steps, dtype=self.dtype, device=self.layout.device,
                             label_smoothing=cfg.train.label_smoothing,
                             inject_nan=cfg.train.inject_nan_at_step == step, sample_log=self.sample_log)
        verdict = self.guard.observe(loss_finite=outcome.loss_finite, grads_finite=outcome.grads_finite,
                                     protective_break=outcome.protective_break)
        if verdict == "rollback":
            self.roll_back()
            return None
        if verdict == "abort":
            raise DivergenceError(f"training diverged at step {step}: {cfg.train.max_bad_steps} consecutive bad steps "
                                  "(non-finite loss/gradients or solver protective breaks); lower optim.lr, raise "
                                  "deq.f_max_iter or use train.on_divergence=rollback")
        self.meter.add(outcome, lr, self.stepped_unrolled, self.stream)
        return outcome

    def roll_back(self) -> None:
        """Return to the newest committed checkpoint after repeated non-finite steps."""
        point = self.checkpointer.find_resume()
        if point is None:
            raise TrainerError(f"training diverged at step {self.step} ({self.cfg.train.max_bad_steps} bad steps in "
                               "a row) and there is no committed checkpoint to roll back to: lower optim.lr or "
                               "enable checkpoint.every_steps")
        self.restore(point)
        self.batches = iter(self.stream)
        self.progress.message(f"rolled back to step {self.step} after repeated non-finite steps")

    def log_interval(self, outcome: StepOutcome) -> None:
        """Solver health every step; console line, MLflow metrics and metrics.jsonl every
        ``train.log_every`` steps."""
        step = self.step
        self.report.step(step, outcome, self.stepped_unrolled)
        if step % self.cfg.train.log_every != 0 and step != self.cfg.train.max_steps:
            return
        record = self.report.interval(step, self.meter.flush(self.stream),
                                      "unrolled pre-training" if self.stepped_unrolled else "equilibrium")
        if self.metrics_log is not None:
            self.metrics_log.write(jsonable.dumps(record) + "\n")
            self.metrics_log.flush()

    def maybe_evaluate(self) -> bool:
        """Evaluate every ``train.eval_every`` steps and at the last step; True when it ran."""
        every, step = self.cfg.train.eval_every, self.step
        if not ((every and step % every == 0) or step == self.cfg.train.max_steps):
            return False
        self.last_eval = self.evaluate()
        self.best_metric = max(self.best_metric or float("-inf"), self.last_eval[self.metric_key])
        return True

    def evaluate(self) -> dict[str, float]:
        """Evaluate in the mode the last step trained in (unrolled during pre-training) and log it."""
        pretrain = build.evaluates_unrolled(self.step, self.pretrain_steps, self.weight_tied)
        result = evaluate(self.engine, self.eval_loader, task=self.task, num_classes=self.plan.num_classes,
                          device=self.layout.device, dtype=self.dtype, pretrain=pretrain,
                          max_batches=self.cfg.data.eval_max_batches, keep_overlays=3 if self.layout.is_main else 0)
        self.report.evaluation(self.step, result, unrolled=pretrain)
        return result.metrics

    def maybe_save_or_stop(self, evaluated: bool) -> None:
        """Commit a checkpoint when due, at the end, or on preemption (then exit with the preemption code)."""
        step, max_steps = self.step, self.cfg.train.max_steps
        stop = self.preemption.should_stop()  # collective: every rank stops at the same step
        if step == max_steps or stop or self.checkpointer.should_save(step):
            self.save(self.last_eval.get(self.metric_key) if evaluated else None)
            if not stop and step < max_steps:
                hold_after_commit_for_test(self.layout.world_size, lambda: self.preemption.requested_locally)
        if stop and step < max_steps:
            self.progress.message(f"preempted: checkpoint committed at step {step}; exiting with {PREEMPTED_EXIT_CODE}")
            self.tracker.end("KILLED")
            raise SystemExit(PREEMPTED_EXIT_CODE)

    # -- checkpoints and the end ----------------------------------------------------------------

    def client_state(self) -> dict:
        """What a checkpoint carries beside the engine: step, data position, run id, guard."""
        return {"step": self.step, "epoch": self.stream.epoch, "loader_state": self.stream.state_dict(),
                "mlflow_run_id": self.run_id, "best_metric": self.best_metric, "guard": self.guard.state_dict(),
                "global_batch": self.batching.global_batch}

    def save(self, metric: float | None) -> None:
        step = self.step

        def write_weights_into(tag_dir: Path) -> None:
            state = gather_state_dict(self.engine)  # collective under ZeRO-3
            if state is not None:
                write_weights(state, tag_dir / WEIGHTS_NAME, model=self.cfg.model.name, task=self.task, step=step)

        if self.checkpointer.save(self.engine, step, self.client_state(), metric=metric, write_extra=write_weights_into):
            self.report.checkpoint(step, Path(self.cfg.checkpoint.dir).resolve())

    def finish(self) -> TrainResult:
        """Final metrics (evaluating if a resume found nothing left to train), summary files, run end."""
        if not self.last_eval:  # resumed from the final checkpoint: nothing trained, still report the metrics
            self.last_eval = self.evaluate()
        final = dict(self.last_eval)
        if self.layout.is_main:
            self.metrics_log.close()
            self.metrics_log = None
            (self.out_dir / "final_metrics.json").write_text(jsonable.dumps({"step": self.step, **final}, indent=2))
            self.report.finish()
        self.tracker.end("FINISHED")
        return TrainResult(steps=self.step, final_metrics=final, output_dir=str(self.out_dir),
                           checkpoint_dir=str(Path(self.cfg.checkpoint.dir).resolve()), tracking_uri=self.tracker.uri,
                           tracking_run_id=self.run_id, history=self.history)
