"""The GPU suite's plumbing end to end at tiny sizes on the CPU (--smoke)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdeq.bench import gpu_suite

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration  # runs the baseline tree's gpu_report as a subprocess
def test_smoke_run_measures_every_section_and_writes_json(tmp_path):
    out = tmp_path / "suite.json"
    # our own tree stands in for the baseline checkout: the subprocess path is what is checked
    rows = gpu_suite.main(["--smoke", "--out", str(out), "--fit-batches", "fp32=3,bf16=3",
                           "--baseline-tree", str(REPO), "--device", "cpu"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows, default=str))
    by = {}
    for row in rows:
        by.setdefault(row["section"], []).append(row)
    assert by["env"][0]["torch"]
    ours = [(r["precision"], r["batch"]) for r in by["ours"]]
    assert ours == [("fp32", 2), ("fp32", 3), ("bf16", 2), ("bf16", 3)]
    assert all(r["images_per_s"] > 0 and r["tflops_per_s"] > 0 and r["flops_per_image"] > 0 for r in by["ours"])
    baseline = by["baseline"]
    assert [r["precision"] for r in baseline] == ["fp32", "bf16"]
    assert all(r["tflops_per_s"] > 0 and r["images_per_s"] > 0 for r in baseline)
    assert by["reference"] == [{"section": "reference", "skipped": "no --peers", "elapsed_s": by["reference"][0]["elapsed_s"]}]
    switches = by["switches"]
    assert switches[0]["stop_check_every"] == 1 and switches[1]["compile_f"] == "reduce-overhead"
    assert all(r["step_s_median"] > 0 for r in switches)
