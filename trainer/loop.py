"""``train(cfg)``: the whole training run, top to bottom.

checks (cheap, before any process group) → distributed → model → engine → data → checkpointer and
resume → tracking → steps (warm-up, then equilibrium) with logging, evaluation, divergence guard,
preemption and checkpoints → final evaluation and checkpoint → summary files → teardown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trainer import build
from trainer.config import Config, config_to_dict, dump_config, flatten_config
from trainer.distributed import launcher_world_size, seed_everything, setup_distributed, teardown
from trainer.engine import build_engine, engine_dtype
from trainer.errors import TrainerError
from trainer.evaluate import evaluate
from trainer.optim import build_optimizer
from trainer.preflight import preflight
from trainer.progress import Progress
from trainer.reporting import IntervalMeter, log_eval, log_final_artifacts
from trainer.schedules import lr_at, set_lr
from trainer.step import SampleLog, sample_log_enabled, train_step
from trainer.tracking import Tracker
from trainer.transfer import WEIGHTS_NAME, apply_init_from, config_hash, gather_state_dict, write_weights


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
    held: dict = {}  # the engine, once built, for teardown
    tracker = Tracker(cfg.tracking, active=layout.is_main)
    try:
        return _train(cfg, plan, layout, tracker, held)
    except SystemExit:
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        teardown(held.get("engine"))


def _train(cfg: Config, plan, layout, tracker: Tracker, held: dict) -> TrainResult:
    import data_pipelines as data
    from trainer.checkpoint import Checkpointer
    from trainer.fault import PREEMPTED_EXIT_CODE, DivergenceError, DivergenceGuard, PreemptionHandler

    task, spec = plan.task, plan.spec
    model = build.build_model(cfg, plan.num_classes)  # same seed on every rank: identical init
    model.deq_options = build.deq_options(cfg, spec)
    if plan.init_from_state is not None:
        apply_init_from(model, plan.init_from_state, cfg.model.init_from, verbose=layout.is_main)
    seed_everything(cfg.train.seed + layout.rank)  # per-rank randomness (dropout masks) from here on
    optimizer = build_optimizer(cfg.optim, model.parameters())
    engine = build_engine(cfg, model.to(layout.device), optimizer, plan.batching.grad_accum_steps)
    held["engine"] = engine
    dtype = engine_dtype(engine)

    stream = data.build_train_stream(cfg.data.dataset, cfg.data.train_shards,
                                     **build.train_stream_args(cfg, layout.rank, layout.world_size),
                                     with_keys=sample_log_enabled())
    eval_loader = data.build_eval_loader(cfg.data.dataset, cfg.data.val_shards,
                                         **build.eval_loader_args(cfg, layout.rank, layout.world_size))
    resolved = config_to_dict(cfg)
    checkpointer = Checkpointer(cfg.checkpoint, rank=layout.rank, world_size=layout.world_size,
                                config_hash=config_hash(resolved), config=resolved)
    guard = DivergenceGuard(max_bad_steps=cfg.train.max_bad_steps, on_divergence=cfg.train.on_divergence)
    start_step, best_metric, run_id = 0, None, None
    point = checkpointer.find_resume()  # collective; refuses breaking config changes naming the keys
    if point is not None:
        state = checkpointer.load(engine, point)
        start_step = int(state["step"])
        best_metric = state.get("best_metric")
        run_id = state.get("mlflow_run_id")
        guard.load_state_dict(state.get("guard", {}))
        if state.get("loader_state") is not None:
            stream.load_state_dict(state["loader_state"])
    out_dir = output_dir_of(cfg)
    if layout.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(cfg))
    run_id = tracker.start(flatten_config(cfg), run_id=run_id,
                           tags={"task": task, "model": cfg.model.name, "world_size": str(layout.world_size)})
    tracker.log_text(dump_config(cfg), "config/resolved.yaml")

    preemption = PreemptionHandler(grace_seconds=cfg.checkpoint.grace_seconds).install()
    pretrain_steps = build.pretrain_steps(cfg, spec)
    weight_tied = bool(cfg.model.weight_tied_layers)
    max_steps = cfg.train.max_steps
    progress = Progress(max_steps, start_step, active=layout.is_main)
    progress.message(f"training {cfg.model.name} ({task}) on {layout.world_size} process(es), "
                     f"{plan.batching.global_batch} samples/step, steps {start_step}→{max_steps}, "
                     f"warm-up until step {pretrain_steps}, ZeRO-{cfg.deepspeed.zero_stage} {cfg.deepspeed.precision}")
    meter = IntervalMeter(layout.world_size)
    history: list[dict] = []
    metrics_log = (out_dir / "metrics.jsonl").open("a") if layout.is_main else None
    sample_log = SampleLog(layout.rank)
    batches = iter(stream)
    last_eval: dict[str, float] = {}

    def client_state(step: int) -> dict:
        return {"step": step, "epoch": stream.epoch, "loader_state": stream.state_dict(), "mlflow_run_id": run_id,
                "best_metric": best_metric, "guard": guard.state_dict()}

    def write_weights_into(tag_dir: Path, step: int) -> None:
        state = gather_state_dict(engine)  # collective under ZeRO-3
        if state is not None:
            write_weights(state, tag_dir / WEIGHTS_NAME, model=cfg.model.name, task=task, step=step)

    def save(step: int, metric: float | None) -> None:
        checkpointer.save(engine, step, client_state(step), metric=metric,
                          write_extra=lambda tag_dir: write_weights_into(tag_dir, step))

    metric_key = "top1" if task == "classification" else "miou"

    def run_eval(step: int) -> dict[str, float]:
        pretrain = build.evaluates_unrolled(step, pretrain_steps, weight_tied)  # the last step's mode
        result = evaluate(engine, eval_loader, task=task, num_classes=plan.num_classes, device=layout.device,
                          dtype=dtype, pretrain=pretrain, max_batches=cfg.data.eval_max_batches,
                          keep_overlays=3 if layout.is_main else 0)
        log_eval(tracker, progress, result, step, task, plan.num_classes)
        return result.metrics

    step = start_step
    while step < max_steps:
        pretrain = weight_tied or step < pretrain_steps
        lr = lr_at(step, cfg.optim, max_steps)
        set_lr(engine.optimizer, lr)
        outcome = train_step(engine, batches, step=step, task=task, pretrain=pretrain,
                             accum=plan.batching.grad_accum_steps, dtype=dtype, device=layout.device,
                             label_smoothing=cfg.train.label_smoothing,
                             inject_nan=cfg.train.inject_nan_at_step == step, sample_log=sample_log)
        verdict = guard.observe(loss_finite=outcome.loss_finite, grads_finite=outcome.grads_finite,
                                protective_break=outcome.protective_break)
        if verdict == "rollback":
            point = checkpointer.find_resume()
            if point is None:
                raise TrainerError(f"training diverged at step {step} ({cfg.train.max_bad_steps} bad steps in a row) "
                                   "and there is no committed checkpoint to roll back to: lower optim.lr or "
                                   "enable checkpoint.every_steps")
            state = checkpointer.load(engine, point)
            step = int(state["step"])
            if state.get("loader_state") is not None:
                stream.load_state_dict(state["loader_state"])
            batches = iter(stream)
            progress.message(f"rolled back to step {step} after repeated non-finite steps")
            continue
        if verdict == "abort":
            raise DivergenceError(f"training diverged at step {step}: {cfg.train.max_bad_steps} consecutive bad steps "
                                  "(non-finite loss/gradients or solver protective breaks); lower optim.lr, raise "
                                  "deq.f_max_iter or use train.on_divergence=rollback")
        step += 1
        meter.add(outcome, lr, pretrain, stream)
        if step % cfg.train.log_every == 0 or step == max_steps:
            metrics = meter.flush(stream)
            progress.step(step, metrics, "warm-up" if pretrain else "equilibrium")
            tracker.log_metrics(metrics, step)
            record = {"step": step, **metrics}
            history.append(record)
            if metrics_log is not None:
                metrics_log.write(json.dumps(record) + "\n")
                metrics_log.flush()
        eval_now = (cfg.train.eval_every and step % cfg.train.eval_every == 0) or step == max_steps
        if eval_now:
            last_eval = run_eval(step)
            best_metric = max(best_metric or float("-inf"), last_eval[metric_key])
        stop = preemption.should_stop()
        if step == max_steps or stop or checkpointer.should_save(step):
            save(step, last_eval.get(metric_key) if eval_now else None)
        if stop and step < max_steps:
            progress.message(f"preempted: checkpoint committed at step {step}; exiting with {PREEMPTED_EXIT_CODE}")
            tracker.end("KILLED")
            raise SystemExit(PREEMPTED_EXIT_CODE)
    if metrics_log is not None:
        metrics_log.close()
    if not last_eval:  # resumed from the final checkpoint: nothing trained, still report the metrics
        last_eval = run_eval(step)
    final = dict(last_eval)
    if layout.is_main:
        (out_dir / "final_metrics.json").write_text(json.dumps({"step": step, **final}, indent=2))
        log_final_artifacts(tracker, out_dir, history, pretrain_steps)
    tracker.end("FINISHED")
    return TrainResult(steps=step, final_metrics=final, output_dir=str(out_dir),
                       checkpoint_dir=str(Path(cfg.checkpoint.dir).resolve()), tracking_uri=tracker.uri,
                       tracking_run_id=run_id, history=history)
