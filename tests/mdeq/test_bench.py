"""`mdeq bench memory|step` and the GPU report script, at tiny sizes."""

from __future__ import annotations

import json

import pytest

from launch.cli.main import main as mdeq_main
from mdeq.bench import gpu_report

pytestmark = pytest.mark.usefixtures("single_thread")


def _bench_json(capsys, *argv: str):
    assert mdeq_main(["bench", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_memory_bench_shows_constant_implicit_memory_and_bounded_solver_buffers(capsys):
    rows = _bench_json(capsys, "memory", "--model", "tiny", "--batch", "2", "--res", "8",
                       "--f-max-iter", "4,6,8", "--history", "3")
    implicit = {r["f_max_iter"]: r for r in rows if r["mode"] == "implicit"}
    unrolled = {r["f_max_iter"]: r for r in rows if r["mode"] == "unrolled"}
    assert set(implicit) == set(unrolled) == {4, 6, 8}
    assert {r.keys() >= {"mode", "f_max_iter", "saved_bytes", "solver_buffer_bytes"} for r in rows} == {True}
    # implicit: nothing of the forward iterations is saved for backward
    assert implicit[4]["saved_bytes"] == implicit[6]["saved_bytes"] == implicit[8]["saved_bytes"] > 0
    # unrolled: every f application is saved
    assert unrolled[4]["saved_bytes"] < unrolled[6]["saved_bytes"] < unrolled[8]["saved_bytes"]
    assert unrolled[4]["saved_bytes"] > implicit[4]["saved_bytes"]
    # Broyden keeps at most `history` pairs: the buffers stop growing once the cap passes it
    assert implicit[4]["solver_buffer_bytes"] < implicit[6]["solver_buffer_bytes"] == implicit[8]["solver_buffer_bytes"]

    half = _bench_json(capsys, "memory", "--model", "tiny", "--batch", "2", "--res", "8", "--f-max-iter", "8",
                       "--history", "3", "--state-precision", "bf16", "--modes", "implicit")
    assert half[0]["solver_buffer_bytes"] * 2 == implicit[8]["solver_buffer_bytes"]


def test_step_bench_reports_time_and_solver_counts(capsys):
    row = _bench_json(capsys, "step", "--model", "tiny", "--batch", "2", "--res", "8", "--f-max-iter", "3",
                      "--b-max-iter", "3", "--steps", "1", "--warmup", "0")
    assert row["step_s_median"] > 0 and row["f_nfe"] <= 3 and 1 <= row["b_nfe"] <= 3
    assert row["precision"] == "fp32" and row["grad_mode"] == "implicit"
    # the residual of the first step (initial weights, the same for every configuration) and what it is
    assert row["f_residual_initial"] > 0 and row["f_nfe_initial"] <= 3
    assert "lowest-residual iterate" in row["f_residual_kind"]


def test_gpu_report_runs_at_a_tiny_size_on_any_device(tmp_path, capsys):
    out = tmp_path / "report.json"
    rows = gpu_report.main(["--model", "tiny", "--res", "8", "--batch", "2", "--steps", "1", "--warmup", "0",
                            "--f-max-iter", "3", "--b-max-iter", "3", "--configs", "bf16:implicit:compute,fp32:unrolled",
                            "--json-out", str(out)])
    assert [(r["precision"], r["grad_mode"], r["backward_precision"]) for r in rows] == [
        ("bf16", "implicit", "bf16"), ("fp32", "unrolled", "fp32")]
    saved = json.loads(out.read_text())
    assert [(r["precision"], r["grad_mode"], r["f_nfe"]) for r in saved] == [
        (r["precision"], r["grad_mode"], r["f_nfe"]) for r in rows]
    assert all(r["step_s_median"] > 0 for r in rows)


def test_solvers_bench_reports_evaluations_to_each_tolerance(capsys):
    rows = _bench_json(capsys, "solvers", "--model", "tiny", "--batch", "2", "--res", "8", "--max-iter", "6",
                       "--tolerances", "2.0,1e-9")
    assert [r["solver"] for r in rows] == ["fixed_point", "broyden", "anderson"]
    for row in rows:
        assert row["nfe_to_tol"] == {"2.0": 1, "1e-09": None}  # from zeros the first residual is 1
        assert 0 < row["lowest_residual"] <= 1.0
