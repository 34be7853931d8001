"""``mdeq quickstart``: the whole system on a laptop, for real, in minutes.

1. synthesise a small ImageNet-layout dataset (class-determined shapes/textures) and write shards;
2. train the ``tiny`` MDEQ with 2 processes: torchrun + DeepSpeed ZeRO-1, bf16 autocast, warm-up then
   equilibrium solves with implicit backward; checkpoints and MLflow (SQLite in the run folder);
3. evaluate the final checkpoint with ``mdeq eval``'s code path and print a summary.

Training runs as a torchrun subprocess (``python -m torch.distributed.run --standalone``), exactly as
a user would launch it, so the quickstart exercises the real multi-process path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainer.errors import TrainerError

REPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


@dataclass
class QuickstartOptions:
    out: Path  # run folder (data, checkpoints, MLflow database, metrics)
    nproc: int = 2
    classes: int = 10
    train_per_class: int = 260
    val_per_class: int = 40
    size: int = 32
    overrides: tuple[str, ...] = ()


def prepare_data(opts: QuickstartOptions) -> tuple[Path, Path]:
    """Synthesise the raw dataset and its shards under ``out/data`` (skipped when already there)."""
    import data_pipelines as data

    root = opts.out / "data"
    stamp = root / f"ready-{opts.classes}x{opts.train_per_class}+{opts.val_per_class}@{opts.size}"
    train, val = root / "shards" / "train", root / "shards" / "val"
    if stamp.exists():
        return train, val
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    data.synth_imagenet(root / "raw", classes=opts.classes, train_per_class=opts.train_per_class,
                        val_per_class=opts.val_per_class, size=opts.size, seed=0)
    # several shards per split: 2 ranks x 1 loader worker each need at least 2
    data.write_imagenet_shards(root / "raw", train, split="train", samples_per_shard=256, progress=False)
    data.write_imagenet_shards(root / "raw", val, split="val", samples_per_shard=100, progress=False)
    shutil.rmtree(root / "raw")  # the shards are what training reads
    stamp.touch()
    print(f"[quickstart] synthetic ImageNet-layout data: {opts.classes} classes, {opts.classes * opts.train_per_class} "
          f"train / {opts.classes * opts.val_per_class} val images of {opts.size}x{opts.size} "
          f"({time.perf_counter() - t0:.1f}s) -> {root / 'shards'}", flush=True)
    return train, val


def cpu_precision(opts: QuickstartOptions) -> str | None:
    """fp32 when training runs on a CPU that only emulates the recipe's bf16 (several times slower there),
    unless the user chose a precision; None keeps the recipe's."""
    import torch

    from trainer.precision import bf16_is_native

    if torch.cuda.is_available() or any(item.startswith("deepspeed.precision=") for item in opts.overrides):
        return None
    if bf16_is_native(torch.device("cpu")):
        return None
    print(f"[quickstart] this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16: training in fp32, "
          "several times faster here (--set deepspeed.precision=bf16 keeps the recipe's)", flush=True)
    return "fp32"


def write_config(opts: QuickstartOptions, train: Path, val: Path) -> Path:
    """configs/quickstart.yaml with this run's paths filled in, as ``out/quickstart.yaml``."""
    run = opts.out / "run"
    config = {
        "extends": str(REPO_CONFIG),
        "model": {"num_classes": opts.classes},
        "data": {"train_shards": str(train), "val_shards": str(val)},
        "train": {"output_dir": str(run)},
        "checkpoint": {"dir": str(run / "checkpoints"), "resume": "never"},
        "tracking": {"uri": f"sqlite:///{(opts.out / 'mlflow.db').resolve()}", "experiment": "quickstart"},
    }
    precision = cpu_precision(opts)
    if precision is not None:
        config["deepspeed"] = {"precision": precision}
    path = opts.out / "quickstart.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_training(config: Path, opts: QuickstartOptions) -> None:
    """torchrun --standalone --nproc-per-node N -m launch.cli.main train --config CONFIG."""
    import torch

    nproc, extra = opts.nproc, []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < nproc:
        # one process per GPU; accumulation keeps the samples per step (and so the recipe) unchanged
        if nproc % gpus:
            raise TrainerError(f"--nproc {nproc} cannot be spread over {gpus} GPU(s): use a multiple of {gpus}")
        extra = [f"train.grad_accum_steps={nproc // gpus}"]
        print(f"[quickstart] {gpus} GPU(s): {gpus} process(es) with {nproc // gpus} accumulation steps", flush=True)
        nproc = gpus
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "launch.cli.main", "train", "--config", str(config)]
    for item in [*extra, *opts.overrides]:
        command += ["--set", item]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one core per rank on a small machine; no oversubscription
    env.setdefault("PYTHONWARNINGS", "ignore")
    print(f"[quickstart] {' '.join(command)}", flush=True)
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise TrainerError(f"quickstart training failed (exit code {result.returncode}); see the output above")


def quickstart(opts: QuickstartOptions) -> dict:
    """Run the quickstart; returns the summary it prints."""
    from trainer.config import load_config
    from trainer.eval_checkpoint import evaluate_checkpoint
    from trainer.tracking import ui_command

    t0 = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    train, val = prepare_data(opts)
    config = write_config(opts, train, val)
    run = opts.out / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run every time (the MLflow database keeps old ones)
    run_training(config, opts)
    cfg = load_config(config, opts.overrides)
    metrics = evaluate_checkpoint(cfg, cfg.checkpoint.dir)  # the `mdeq eval` path, on the final checkpoint
    final = json.loads((run / "final_metrics.json").read_text())
    summary = {
        "top1": metrics["top1"], "top5": metrics["top5"], "chance_top1": 100.0 / opts.classes,
        "train_final_top1": final.get("top1"), "steps": final.get("step"),
        "minutes": (time.perf_counter() - t0) / 60.0, "run_dir": str(run.resolve()),
        "checkpoints": str(Path(cfg.checkpoint.dir).resolve()), "metrics_file": str((run / "metrics.jsonl").resolve()),
        "tracking_uri": cfg.tracking.uri, "mlflow_ui": ui_command(cfg.tracking.uri),
    }
    print("\n=== mdeq quickstart: done ===")
    print(f"validation accuracy: top-1 {summary['top1']:.1f}%  top-5 {summary['top5']:.1f}%  "
          f"(chance {summary['chance_top1']:.0f}%; {opts.classes * opts.val_per_class} held-out images)")
    print(f"time: {summary['minutes']:.1f} min for {summary['steps']} steps on {opts.nproc} processes")
    print(f"run folder:   {summary['run_dir']}  (config.yaml, metrics.jsonl, final_metrics.json)")
    print(f"checkpoints:  {summary['checkpoints']}")
    print(f"MLflow:       {summary['mlflow_ui']}   then open http://127.0.0.1:5000")
    return summary
