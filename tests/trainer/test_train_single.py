"""`mdeq train` as a plain single process (no torchrun, no launcher variables): it sets up its own
one-rank process group, trains, evaluates, commits the final checkpoint and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_plain_single_process_run(tmp_path):
    import data_pipelines as data

    data.synth_imagenet(tmp_path / "raw", classes=2, train_per_class=8, val_per_class=2, size=16, seed=0)
    data.write_imagenet_shards(tmp_path / "raw", tmp_path / "train", split="train", samples_per_shard=8,
                               progress=False)
    data.write_imagenet_shards(tmp_path / "raw", tmp_path / "val", split="val", samples_per_shard=4, progress=False)
    sets = ["model.name=tiny", "model.num_classes=2", f"data.train_shards={tmp_path / 'train'}",
            f"data.val_shards={tmp_path / 'val'}", "data.image_size=16", "data.eval_resize=16", "data.batch_size=4",
            "data.workers=0", "train.max_steps=2", "train.log_every=1", "deq.pretrain_steps=1", "deq.f_max_iter=4",
            "deq.b_max_iter=4", f"checkpoint.dir={tmp_path / 'run' / 'checkpoints'}", "tracking.enabled=false"]
    argv = [sys.executable, "-m", "launch.cli.main", "train", "--json"]
    for item in sets:
        argv += ["--set", item]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS="1"), timeout=500,
                          cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert result["steps"] == 2 and 0.0 <= result["top1"] <= 100.0
    committed = sorted(Path(tmp_path / "run" / "checkpoints").glob("step_*/model.pt"))
    assert committed and committed[-1].parent.name.endswith("2")
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["train/unrolled_pretraining"] for h in history] == [1.0, 0.0]  # the switch at deq.pretrain_steps=1
