"""`mdeq eval --checkpoint DIR` with no other flag: the checkpoint's own config, one JSON document on
stdout that strict parsers accept (null for undefined metrics), per-class IoU named by class, the
samples evaluated and lost; bad checkpoint arguments get one message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch.conftest import run_mdeq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def _strict_json(text: str):
    """Parse as `python -m json.tool` does: the whole text is one document, NaN/Infinity refused."""
    tool = subprocess.run([sys.executable, "-m", "json.tool"], input=text, capture_output=True, text=True, timeout=60)
    assert tool.returncode == 0, f"json.tool refused stdout: {tool.stderr}\n--- stdout ---\n{text[-2000:]}"

    def refuse(constant):
        raise AssertionError(f"non-JSON constant {constant} in stdout")

    return json.loads(text, parse_constant=refuse)


def test_classification_eval_from_checkpoint_alone(trained_runs):
    proc = run_mdeq("eval", "--checkpoint", str(trained_runs.cls_checkpoints), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _strict_json(proc.stdout)
    assert metrics["step"] == trained_runs.steps
    # the same weights and config as the run's final evaluation: the same figures
    for key in ("top1", "top5", "samples"):
        assert metrics[key] == pytest.approx(trained_runs.cls_final[key], abs=1e-6), key
    assert metrics["samples"] == 6 and metrics["samples_lost"] == 0


def test_eval_builds_no_deepspeed_op(trained_runs, tmp_path):
    # evaluation makes no engine: an empty extension cache stays empty (no minute-long op build)
    from tests.launch.conftest import mdeq_env

    cache = tmp_path / "torch_extensions"
    proc = subprocess.run([sys.executable, "-m", "launch.cli.main", "eval", "--checkpoint",
                           str(trained_runs.cls_checkpoints), "--json"], capture_output=True, text=True, timeout=600,
                          env=dict(mdeq_env(), TORCH_EXTENSIONS_DIR=str(cache)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _strict_json(proc.stdout)["samples"] == 6
    assert not cache.exists() or not any(cache.rglob("*shm_comm*")), sorted(cache.rglob("*"))


def test_segmentation_eval_json_parses_with_absent_classes(trained_runs):
    proc = run_mdeq("eval", "--checkpoint", str(trained_runs.seg_checkpoints), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _strict_json(proc.stdout)
    import data_pipelines as data

    assert sorted(k for k in metrics if k.startswith("iou/")) == sorted(f"iou/{n}" for n in data.CITYSCAPES_CLASSES)
    absent = [k for k in metrics if k.startswith("iou/") and metrics[k] is None]
    assert "iou/train" in absent  # synthetic scenes draw no trains, and 2 steps do not predict one
    assert metrics["miou"] == pytest.approx(trained_runs.seg_final["miou"], abs=1e-6)
    assert metrics["samples"] == 2 and metrics["samples_lost"] == 0


def test_set_overrides_the_checkpoint_config(trained_runs):
    proc = run_mdeq("eval", "--checkpoint", str(trained_runs.seg_checkpoints), "--json",
                    "--set", "data.eval_batch_size=1", "--set", "data.eval_max_batches=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _strict_json(proc.stdout)["samples"] == 1


def test_truncated_validation_shard_is_reported(trained_runs, tmp_path):
    import shutil

    damaged = tmp_path / "seg_val"
    shutil.copytree(trained_runs.seg_val, damaged)
    shard = sorted(damaged.glob("val-*.tar"))[-1]
    shard.write_bytes(shard.read_bytes()[:700])  # cut inside the first member
    argv = ["eval", "--checkpoint", str(trained_runs.seg_checkpoints), "--set", f"data.val_shards={damaged}"]
    proc = run_mdeq(*argv, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _strict_json(proc.stdout)
    assert metrics["samples"] == 1 and metrics["samples_lost"] == 1
    console = run_mdeq(*argv)
    assert console.returncode == 0 and "1 samples evaluated; 1 LOST" in console.stdout, console.stdout


def test_commit_marker_instead_of_checkpoint(trained_runs):
    marker = sorted(Path(trained_runs.cls_checkpoints).glob("step_*/COMMITTED.json"))[-1]
    proc = run_mdeq("eval", "--checkpoint", str(marker), "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    message = proc.stderr.strip().splitlines()[-1]
    assert str(marker.parent) in message and "pass the directory" in message
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", [b"not a torch file at all", None])
def test_file_that_is_not_weights_names_what_to_pass(tmp_path, content):
    import pickle

    from trainer.errors import TrainerError
    from trainer.transfer import read_weights

    bogus = tmp_path / "model.pt"
    # None: a real pickle of a non-tensor object, for which torch suggests weights_only=False
    bogus.write_bytes(content if content is not None else pickle.dumps(TrainerError("x")))
    with pytest.raises(TrainerError) as caught:
        read_weights(bogus)
    assert "weights_only" not in str(caught.value) and "checkpoint directory" in str(caught.value)


def test_checkpoint_without_saved_config_asks_for_one(tmp_path):
    proc = run_mdeq("eval", "--checkpoint", str(tmp_path))
    assert proc.returncode == 2 and "--config" in proc.stderr and "Traceback" not in proc.stderr


def test_version():
    from importlib import metadata

    proc = run_mdeq("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"mdeq {metadata.version('mdeq-train')}"
