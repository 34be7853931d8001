"""Tracker against MLflow on SQLite: run names that say what ran and differ per run, a resumed run
keeps its name, params as a reader wants them; the solver-health verdict on its own."""

from __future__ import annotations

import re

from trainer.config import TrackingConfig
from trainer.solver_health import SolverHealth
from trainer.tracking import Tracker, _param, default_run_name


def _tracker(tmp_path, **kw) -> Tracker:
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="names", system_metrics=False, **kw)
    return Tracker(cfg, active=True)


def test_two_runs_of_one_experiment_have_different_names_and_a_resumed_run_keeps_its_name(tmp_path):
    from mlflow.tracking import MlflowClient

    ids = []
    for _ in range(2):
        tracker = _tracker(tmp_path)
        ids.append(tracker.start({"model.name": "tiny"}, run_name=default_run_name("tiny", "classification", 2)))
        tracker.end()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = [client.get_run(run_id).info.run_name for run_id in ids]
    assert names[0] != names[1]
    assert all(re.fullmatch(r"tiny-cls-w2-[0-9a-f]{6}", name) for name in names), names
    # resume the first run as the loop does (run id from the checkpoint) with a fresh default name
    tracker = _tracker(tmp_path)
    resumed = tracker.start({"model.name": "tiny"}, run_id=ids[0],
                            run_name=default_run_name("tiny", "classification", 2))
    tracker.end()
    assert resumed == ids[0] and client.get_run(ids[0]).info.run_name == names[0]
    experiment = client.get_experiment_by_name("names")
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_params_show_floats_rounded_and_no_raw_reprs():
    assert _param(5.337782855319162e-08) == "5.33778e-08"
    assert _param(0.05) == "0.05" and _param(2) == "2" and _param(None) == "null"
    assert _param([0.5, 2.0]) == "[0.5, 2]" and _param([8, 16]) == "[8, 16]"


def _feed(health: SolverHealth, residuals, caps, start=1, b_caps=None):
    verdicts = []
    for i, (res, cap) in enumerate(zip(residuals, caps)):
        solver = {"solver/rel_residual": res, "solver/f_hit_cap": float(cap),
                  "solver/b_hit_cap": float(b_caps[i]) if b_caps else 0.0}
        verdicts.append(health.observe(start + i, solver, pretrain=False))
    return verdicts


def test_solver_health_warns_once_per_episode_on_residual_or_caps_and_not_when_converging():
    health = SolverHealth(threshold=0.05, window=3, f_max_iter=6, b_max_iter=6)
    assert _feed(health, [0.01] * 6, [False] * 6) == [None] * 6
    # pre-training steps do not count, whatever they report
    assert health.observe(7, {"solver/rel_residual": 1.0, "solver/f_hit_cap": 1.0}, pretrain=True) is None
    verdicts = _feed(health, [0.9, 0.2, 0.3, 0.2, 0.3], [False] * 5, start=8)
    # one bad step is no trend (the median decides); two of three are; then warned once per episode
    assert verdicts[0] is None and verdicts[1] is not None and verdicts[2:] == [None] * 3
    assert "median forward relative residual 0.2 > 0.05" in verdicts[1].message()
    assert "deq.f_max_iter" in verdicts[1].message() and "deq.pretrain_steps" in verdicts[1].message()
    # healthy again, then caps hit in most steps with a small residual: a new warning naming the cap
    _feed(health, [0.01] * 3, [False] * 3, start=13)
    verdicts = _feed(health, [0.01] * 3, [True, True, False], start=16)
    assert verdicts[0] is None and verdicts[1] is not None and verdicts[2] is None  # 2 of the last 3 at the cap
    assert "cap (6 f evaluations) short of the tolerance in 2/3 steps" in verdicts[1].message()
    adjoint = SolverHealth(threshold=0.05, window=2, f_max_iter=6, b_max_iter=9)
    verdicts = _feed(adjoint, [0.01] * 2, [False] * 2, b_caps=[True, True])
    assert "adjoint solve stopped at its cap (9" in verdicts[-1].message()
    assert len(health.warnings) == 2
