"""A classification and a segmentation run, trained once per session for the user-surface tests
(`mdeq eval --checkpoint`, `mdeq predict`, `mdeq runs`): real `mdeq train` processes on synthetic
ImageNet and Cityscapes layouts, tracked in an MLflow SQLite store, a few steps each."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def mdeq_env() -> dict[str, str]:
    """This environment without launcher variables (each command is a plain single process)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return dict(env, OMP_NUM_THREADS="1")


def run_mdeq(*argv: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli.main", *argv], capture_output=True, text=True,
                          env=mdeq_env(), cwd=cwd, timeout=timeout)


@dataclass
class TrainedRuns:
    root: Path
    tracking_uri: str
    cls_checkpoints: Path  # checkpoint.dir of the classification run
    seg_checkpoints: Path
    imagenet_raw: Path  # synthetic ILSVRC layout (val/ images for predict)
    cityscapes_raw: Path
    cls_val: Path  # shards
    seg_val: Path
    cls_final: dict  # final_metrics.json of each run
    seg_final: dict
    steps: int


STEPS = 2


def _train(root: Path, name: str, yaml_text: str) -> dict:
    import json

    config = root / f"{name}.yaml"
    config.write_text(yaml_text)
    proc = run_mdeq("train", "--config", str(config), cwd=root)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads((root / name / "final_metrics.json").read_text())


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> TrainedRuns:
    import data_pipelines as data

    root = tmp_path_factory.mktemp("trained_runs")
    data.synth_imagenet(root / "imagenet_raw", classes=3, train_per_class=8, val_per_class=2, size=16, seed=0)
    data.write_imagenet_shards(root / "imagenet_raw", root / "cls_train", split="train", samples_per_shard=8,
                               progress=False)
    data.write_imagenet_shards(root / "imagenet_raw", root / "cls_val", split="val", samples_per_shard=2,
                               progress=False)
    # 64x32 scenes: a few of the 19 classes (truck, train, motorcycle, ...) never appear in them
    data.synth_cityscapes(root / "cityscapes_raw", train=4, val=2, size=(64, 32), seed=0)
    data.write_cityscapes_shards(root / "cityscapes_raw", root / "seg_train", split="train", samples_per_shard=2,
                                 progress=False)
    data.write_cityscapes_shards(root / "cityscapes_raw", root / "seg_val", split="val", samples_per_shard=1,
                                 progress=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cls_final = _train(root, "cls", f"""
model: {{name: tiny}}
data: {{dataset: imagenet, train_shards: {root / 'cls_train'}, val_shards: {root / 'cls_val'}, image_size: 16,
        eval_resize: 16, batch_size: 4, workers: 0, shuffle_buffer: 8}}
optim: {{name: sgd, lr: 0.05}}
deq: {{f_max_iter: 4, b_max_iter: 4, pretrain_steps: 1, pretrain_layers: 2}}
checkpoint: {{dir: {root / 'cls' / 'checkpoints'}}}
tracking: {{uri: "{uri}", system_metrics: false, run_name: cls-run}}
train: {{max_steps: {STEPS}, eval_every: 0, log_every: 1, seed: 0}}
""")
    seg_final = _train(root, "seg", f"""
model: {{name: cityscapes-small, num_branches: 2, channels: [8, 16], width_expansion: 2, num_groups: 4,
        downsample_times: 1, dropout: 0.0}}
data: {{dataset: cityscapes, train_shards: {root / 'seg_train'}, val_shards: {root / 'seg_val'}, image_size: 32,
        crop_size: [32, 32], batch_size: 2, workers: 0, shuffle_buffer: 4}}
optim: {{name: sgd, lr: 0.01, schedule: poly, nesterov: false}}
deq: {{f_max_iter: 4, b_max_iter: 4, pretrain_steps: 1, pretrain_layers: 2}}
checkpoint: {{dir: {root / 'seg' / 'checkpoints'}}}
tracking: {{uri: "{uri}", system_metrics: false, run_name: seg-run}}
train: {{max_steps: {STEPS}, eval_every: 0, log_every: 1, seed: 0}}
""")
    return TrainedRuns(root=root, tracking_uri=uri, cls_checkpoints=root / "cls" / "checkpoints",
                       seg_checkpoints=root / "seg" / "checkpoints", imagenet_raw=root / "imagenet_raw",
                       cityscapes_raw=root / "cityscapes_raw", cls_val=root / "cls_val", seg_val=root / "seg_val",
                       cls_final=cls_final, seg_final=seg_final, steps=STEPS)
