"""A resumed run says so first: "resumed from step N (committed <UTC time>, <checkpoint>)"; its
summary files hold strict JSON."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.launch.conftest import run_mdeq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def test_resume_prints_the_step_and_commit_time(trained_runs, tmp_path):
    # the segmentation run: its final metrics include IoUs of classes absent from the validation set
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(trained_runs.seg_checkpoints, checkpoints)
    proc = run_mdeq("train", "--config", str(trained_runs.root / "seg.yaml"), "--set", f"checkpoint.dir={checkpoints}",
                    "--set", "train.max_steps=3", "--set", "tracking.enabled=false", "--set",
                    f"train.output_dir={tmp_path / 'out'}", cwd=trained_runs.root)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("resumed from"))
    assert re.fullmatch(rf"resumed from step 2 \(committed \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC, "
                        rf"{re.escape(str(checkpoints / 'step_000000002'))}\)", line), line
    assert proc.stdout.index(line) < proc.stdout.index("step 3/3")

    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON file")

    final = json.loads((tmp_path / "out" / "final_metrics.json").read_text(), parse_constant=refuse)
    assert final["step"] == 3 and final["iou/train"] is None  # no scene draws a train: undefined, written as null
    for record in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines():
        json.loads(record, parse_constant=refuse)
