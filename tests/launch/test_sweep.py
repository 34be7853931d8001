"""``mdeq sweep``: a 2x2 grid end to end (table, plots, nested MLflow runs), resume, and bad sweep files."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from launch.sweep import expand_points, load_sweep, run_sweep
from trainer.config import ConfigError

SWEEPS = Path(__file__).resolve().parents[2] / "configs" / "sweeps"
# Each point trains 2 steps and evaluates one batch: the sweep machinery is under test, not learning.
TINY = ("train.max_steps=2", "train.log_every=1", "data.eval_max_batches=1")


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, single_thread):
    """The 2x2 tiny grid, run once in-process with MLflow on SQLite; shared by the tests below."""
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_sweep(SWEEPS / "tiny-grid.yaml", overrides=TINY, output_dir=root / "out", in_process=True,
                       tracking_uri=uri, log=lambda *_: None)
    return result, root, uri


@pytest.mark.timeout(300)
def test_grid_sweep_writes_table_and_plots(grid_sweep):
    result, _, _ = grid_sweep
    assert not result.failed, [r.get("error") for r in result.rows]
    with result.table_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {r["label"] for r in rows} == {f"model.channels={c} deq.f_max_iter={n}"
                                          for c in ("[8,16]", "[16,32]") for n in (4, 8)}
    for row in rows:
        assert row["status"] == "finished"
        assert int(row["params"]) > 0 and float(row["images_per_s"]) > 0 and float(row["peak_rss_mib"]) > 0
        assert float(row["plan_peak_mib"]) > 0
        # the forward solver ran with the point's own cap
        assert float(row["f_nfe"]) <= float(row["label"].rsplit("=", 1)[1])
        assert row["accuracy"] != ""
    widths = {r["label"].split()[0]: int(r["params"]) for r in rows}
    assert widths["model.channels=[16,32]"] > widths["model.channels=[8,16]"]
    markdown = result.table_md.read_text().splitlines()
    assert markdown[0].startswith("| point | status | params | images/s")
    assert len(markdown) == 2 + 4
    names = sorted(p.name for p in result.plots)
    assert names == ["params_vs_accuracy.png", "params_vs_images_per_s.png", "params_vs_peak_memory.png",
                     "params_vs_solver_iterations.png"]
    for path in result.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.timeout(300)
def test_grid_sweep_logs_nested_runs_under_one_parent(grid_sweep):
    from mlflow.tracking import MlflowClient

    result, _, uri = grid_sweep
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.name"] == "tiny-grid"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        # the trainer logged into the nested run the sweep created (config params, train metrics)
        assert "train/loss" in child.data.metrics and child.data.params["model.name"] == "tiny"
        assert "sweep/images_per_s" in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/params_vs_images_per_s.png" in artifacts and len(artifacts) == 4
    summary = {a.path for a in client.list_artifacts(result.parent_run_id, "summary")}
    assert summary == {"summary/summary.csv", "summary/summary.md"}


@pytest.mark.timeout(300)
def test_rerun_skips_finished_points_and_resumes_an_unfinished_one(grid_sweep):
    from mlflow.tracking import MlflowClient

    result, root, uri = grid_sweep
    out = root / "out"
    again = run_sweep(SWEEPS / "tiny-grid.yaml", overrides=TINY, output_dir=out, in_process=True,
                      tracking_uri=uri, log=lambda *_: None)
    assert again.ran == [] and sorted(again.skipped) == sorted(r["point_id"] for r in result.rows)
    assert again.parent_run_id == result.parent_run_id
    # one point lost its result (e.g. the sweep was killed while it ran): only that point runs again,
    # into the same child run
    victim = result.rows[0]["point_id"]
    (out / "points" / victim / "result.json").unlink()
    shutil.rmtree(out / "points" / victim / "checkpoints")
    shutil.rmtree(out / "points" / victim / "run")
    third = run_sweep(SWEEPS / "tiny-grid.yaml", overrides=TINY, output_dir=out, in_process=True,
                      tracking_uri=uri, log=lambda *_: None)
    assert third.ran == [victim] and len(third.skipped) == 3 and not third.failed
    client = MlflowClient(uri)
    children = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 4  # no duplicate child for the re-run point


def test_bad_sweep_files_fail_before_anything_runs(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(f"name: bad\nbase: {SWEEPS / 'base-tiny.yaml'}\ngrid:\n  deq.f_max_itr: [2, 4]\n")
    spec, root = load_sweep(bad_key)
    with pytest.raises(ConfigError, match="deq.f_max_iter"):
        expand_points(spec, root)
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"name: empty\nbase: {SWEEPS / 'base-tiny.yaml'}\ngrid:\n  deq.f_max_iter: []\n")
    with pytest.raises(ConfigError, match="non-empty list"):
        load_sweep(empty)
    from launch.cli.main import main

    assert main(["sweep", "--config", str(bad_key), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "points").exists()


def test_every_sweep_file_in_configs_resolves():
    for path in sorted(SWEEPS.glob("*.yaml")):
        if path.name.startswith("base"):
            continue
        spec, root = load_sweep(path)
        points = expand_points(spec, root)
        assert points, path
        assert len({p.point_id for p in points}) == len(points), path


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_default_subprocess_executor_nests_the_trainer_run(tmp_path):
    """One point as `mdeq train` in a subprocess: MLFLOW_RUN_ID hands it the nested run."""
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "one.yaml"
    sweep.write_text(
        f"name: one\nbase: {SWEEPS / 'base-tiny.yaml'}\nplan: false\n"
        "synthetic: {classes: 2, train_per_class: 4, val_per_class: 2, size: 32, samples_per_shard: 4}\n"
        "set: {train.max_steps: 1, train.log_every: 1, data.batch_size: 4, data.eval_max_batches: 1}\n"
        "grid: {deq.f_max_iter: [3]}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(sweep, output_dir=tmp_path / "out", tracking_uri=uri, log=lambda *_: None)
    assert not result.failed, result.rows[0].get("error")
    row = result.rows[0]
    assert (tmp_path / "out" / "points" / row["point_id"] / "train.log").is_file()
    assert row["f_nfe"] == 3 and row["peak_rss_mib"] > 100  # a whole training process was sampled
    child = MlflowClient(uri).get_run(row["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert child.info.status == "FINISHED" and "train/loss" in child.data.metrics
