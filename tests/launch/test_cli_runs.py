"""`mdeq runs`: one line per run from the MLflow store joined with the checkpoint markers."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.launch.conftest import run_mdeq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def test_runs_json_joins_mlflow_and_checkpoints(trained_runs):
    proc = run_mdeq("runs", "--tracking-uri", trained_runs.tracking_uri, "--checkpoints", str(trained_runs.root),
                    "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert set(rows) == {"cls-run", "seg-run"}
    for name, task, model, checkpoints, final, metric in (
            ("cls-run", "classification", "tiny", trained_runs.cls_checkpoints, trained_runs.cls_final, "top1"),
            ("seg-run", "segmentation", "cityscapes-small", trained_runs.seg_checkpoints, trained_runs.seg_final,
             "miou")):
        row = rows[name]
        assert (row["task"], row["model"], row["status"], row["world_size"]) == (task, model, "FINISHED", 1)
        assert (row["steps_done"], row["steps_planned"], row["committed_step"]) == (2, 2, 2)
        assert row["checkpoint_dir"] == str(checkpoints) and row["started"].endswith("+00:00")
        assert row["best_metric"] == metric and row["best_value"] == pytest.approx(final[metric])


def test_runs_table_and_checkpoint_only_runs(trained_runs, tmp_path):
    # a run MLflow never saw (tracking off): its checkpoint marker still gives a row
    copy = tmp_path / "untracked" / "checkpoints"
    shutil.copytree(trained_runs.cls_checkpoints, copy)
    proc = run_mdeq("runs", "--checkpoints", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["name", "model", "task", "status", "steps", "committed", "best", "world", "started"]
    assert len(lines) == 2 and lines[1].startswith(str(copy)) and "checkpoint only" in lines[1]
    assert "2/2" in lines[1].split()


def test_runs_with_a_missing_store_says_what_to_pass(tmp_path):
    proc = run_mdeq("runs", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path)
    assert proc.returncode == 2 and "no such SQLite file" in proc.stderr and "Traceback" not in proc.stderr
