"""The paper's ablations, each one sweep file, run end to end at tiny scale (1 step per point)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.sweep import run_sweep

SWEEPS = Path(__file__).resolve().parents[2] / "configs" / "sweeps"
# 1 step of batch 4 per point, solver caps 4, no MLflow, no planner column: the commands under test
TINY = ("train.max_steps=1", "train.log_every=1", "data.batch_size=4", "data.eval_max_batches=1",
        "deq.f_max_iter=4", "deq.b_max_iter=4", "tracking.enabled=false")

ABLATIONS = {
    "ablation-multiscale.yaml": {"multiscale", "single-stream"},
    "ablation-injection.yaml": {"model.injection=highest", "model.injection=all"},
    "ablation-implicit-vs-unrolled.yaml": {"implicit", "weight-tied-unrolled-5"},
    "ablation-downsample.yaml": {"model.downsample_times=0", "model.downsample_times=2"},
    "ablation-convergence.yaml": {"base"},
}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sweep_file", sorted(ABLATIONS))
def test_ablation_runs_at_tiny_scale(sweep_file, tmp_path):
    result = run_sweep(SWEEPS / sweep_file, overrides=TINY, output_dir=tmp_path, in_process=True,
                       plan=False, log=lambda *_: None)
    assert not result.failed, [r.get("error") for r in result.rows]
    rows = {r["label"]: r for r in result.rows}
    assert set(rows) == ABLATIONS[sweep_file]
    if sweep_file == "ablation-multiscale.yaml":
        assert rows["single-stream"]["params"] < rows["multiscale"]["params"]
    if sweep_file == "ablation-implicit-vs-unrolled.yaml":
        # same parameters; the unrolled model runs a fixed 5 f layers and no adjoint solve
        assert rows["implicit"]["params"] == rows["weight-tied-unrolled-5"]["params"]
        assert rows["weight-tied-unrolled-5"]["f_nfe"] == 5 and rows["weight-tied-unrolled-5"]["b_nfe"] is None
        assert rows["implicit"]["b_nfe"] >= 1
    if sweep_file == "ablation-downsample.yaml":
        assert rows["model.downsample_times=2"]["params"] > rows["model.downsample_times=0"]["params"]
    if sweep_file == "ablation-injection.yaml":
        assert rows["model.injection=all"]["params"] > rows["model.injection=highest"]["params"]
    if sweep_file == "ablation-convergence.yaml":
        row = rows["base"]
        traces = json.loads((tmp_path / "points" / row["point_id"] / "branch_residuals.json").read_text())
        assert len(traces) == 4 and all(len(t) == 4 for t in traces)  # 4 branches, cap 4, tol 0
        assert (tmp_path / "plots" / "branch_residual_vs_iteration.png").stat().st_size > 5000
        assert "final_residual_branch0" in result.table_csv.read_text()
    assert result.table_md.is_file() and len(result.plots) >= 4
