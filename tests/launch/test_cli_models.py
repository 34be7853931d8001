"""`mdeq models [--json]` lists the zoo with parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys

import mdeq
from launch.cli.main import main
from mdeq.registry import count_parameters


def test_models_json_lists_every_entry(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == mdeq.list_models()
    for row in rows:
        spec = mdeq.get_model_spec(row["name"])
        assert row["task"] == spec.task and row["params"] == count_parameters(spec)
        assert row["branches"] == spec.num_branches and row["channels"] == list(spec.channels)
    assert {r["task"] for r in rows} == {"classification", "segmentation"}


def test_models_table_through_the_installed_command():
    out = subprocess.run([sys.executable, "-m", "launch.cli.main", "models"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["name", "task", "branches", "channels"]
    assert len(lines) == 1 + len(mdeq.list_models())
    assert any(line.startswith("imagenet-small") and "16.81M" in line and "18M" in line for line in lines)
