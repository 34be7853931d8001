"""What a user sees in MLflow after a real run: 2 processes under torchrun (gloo), DeepSpeed, webdataset
shards, MLflow on SQLite, read back through ``MlflowClient``.

Two trainings in ONE torchrun launch (tests/trainer/scripts/multi_train.py; DeepSpeed's start-up is
the slow part), both 6 steps of the tiny MDEQ, 2 of them unrolled pre-training, global batch 8
(2 per rank x 2 accumulation x 2 ranks), evaluations after steps 2 (unrolled), 4 and 6:
- ``caps2``: solver caps of 2, which no solve can meet: the solver-health warning and tag;
- ``converging``: caps of 30 and tolerances (0.6) the tiny model's solves reach from its
  initialisation (it reaches no tighter one before training; measured in a session: rel. residual
  ~0.25-0.5 after 30-40 Broyden steps), health threshold above them: no warning, no tag.
Each test asserts one property of what the launch produced.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS, PRETRAIN, GLOBAL_BATCH = 6, 2, 8
EVAL_STEPS = [2, 4, 6]

pytestmark = pytest.mark.integration


def _config(tmp: Path) -> Path:
    path = tmp / "report.yaml"
    path.write_text(f"""
model: {{name: tiny, num_classes: 4}}
data: {{dataset: imagenet, train_shards: {tmp / 'data' / 'train'}, val_shards: {tmp / 'data' / 'val'}, image_size: 16,
        eval_resize: 16, batch_size: 2, workers: 0, shuffle_buffer: 16, eval_max_batches: 2}}
train: {{max_steps: {STEPS}, eval_every: 2, log_every: 1, seed: 3, grad_accum_steps: 2}}
optim: {{name: sgd, lr: 0.05, warmup_steps: 1, weight_decay: 5.337782855319162e-08}}
deq: {{pretrain_steps: {PRETRAIN}, pretrain_layers: 2}}
checkpoint: {{every_steps: 2, keep_last: 2, keep_best: false}}
tracking: {{enabled: true, uri: "sqlite:///{tmp / 'mlflow.db'}", experiment: report, system_metrics: false,
            solver_health_window: 3}}
""")
    return path


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    import data_pipelines as data

    tmp = tmp_path_factory.mktemp("report")
    data.synth_imagenet(tmp / "data" / "raw", classes=4, train_per_class=16, val_per_class=4, size=16, seed=0)
    data.write_imagenet_shards(tmp / "data" / "raw", tmp / "data" / "train", split="train", samples_per_shard=16,
                               progress=False)
    data.write_imagenet_shards(tmp / "data" / "raw", tmp / "data" / "val", split="val", samples_per_shard=8,
                               progress=False)
    config = str(_config(tmp))
    runs = [{"name": "caps2", "config": config, "overrides": [
                "deq.f_max_iter=2", "deq.b_max_iter=2", f"checkpoint.dir={tmp / 'caps2' / 'ckpt'}"]},
            {"name": "converging", "config": config, "overrides": [
                "deq.f_max_iter=30", "deq.b_max_iter=30", "deq.f_tol=0.6", "deq.b_tol=0.6",
                "tracking.solver_health_residual=0.7", f"checkpoint.dir={tmp / 'converging' / 'ckpt'}"]}]
    plan = tmp / "plan.json"
    plan.write_text(json.dumps({"out": str(tmp), "runs": runs}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(REPO / "tests" / "trainer" / "scripts" / "multi_train.py"), str(plan)],
                          cwd=tmp, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    results = {r["name"]: json.loads((tmp / f"{r['name']}.json").read_text()) for r in runs}
    for name, record in results.items():
        assert record["error"] is None, f"{name}: {record['error']}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    yield {"tmp": tmp, "results": results, "output": output, "client": client,
           "runs": {name: client.get_run(record["run_id"]) for name, record in results.items()}}


def _history(launch, run: str, key: str) -> dict[int, float]:
    run_id = launch["runs"][run].info.run_id
    return {m.step: m.value for m in launch["client"].get_metric_history(run_id, key)}


def _artifact_json(launch, run: str, path: str) -> dict:
    run_id = launch["runs"][run].info.run_id
    local = launch["client"].download_artifacts(run_id, path, str(launch["tmp"] / "downloads" / run))
    return json.loads(Path(local).read_text())


@pytest.mark.timeout(1200)
def test_params_resolve_the_model_preset_and_state_batch_layout_and_world_size(launch):
    params = launch["runs"]["caps2"].data.params
    model = {k: v for k, v in params.items() if k.startswith("model.")}
    assert "null" not in model.values(), model
    assert model["model.num_branches"] == "2" and model["model.channels"] == "[8, 16]"  # tiny's preset
    assert params["run.world_size"] == "2" and params["run.global_batch"] == str(GLOBAL_BATCH)
    assert params["run.micro_batch_per_rank"] == "2" and params["run.grad_accum_steps"] == "2"
    assert params["train.global_batch_size"] == str(GLOBAL_BATCH) and params["run.precision"] == "fp32"
    assert params["deq.f_max_iter"] == "2" and params["deq.pretrain_steps"] == str(PRETRAIN)
    assert params["optim.weight_decay"] == "5.33778e-08"  # not the raw float repr


@pytest.mark.timeout(1200)
def test_run_names_say_what_ran_and_differ(launch):
    names = [run.info.run_name for run in launch["runs"].values()]
    assert names[0] != names[1]
    assert all(re.fullmatch(r"tiny-cls-w2-[0-9a-f]{6}", name) for name in names), names


@pytest.mark.timeout(1200)
def test_new_metrics_are_logged_and_samples_seen_is_global(launch):
    metrics = launch["runs"]["caps2"].data.metrics
    for key in ("solver/f_converged", "solver/b_converged", "solver/f_hit_cap", "solver/b_hit_cap", "train/top1",
                "train/unrolled_pretraining", "checkpoint/last_committed_step", "eval/best_top1",
                "eval/residual_branch0", "eval/residual_branch1", "eval/f_converged", "data/samples_seen"):
        assert key in metrics, key
    seen = _history(launch, "caps2", "data/samples_seen")
    assert seen == {step: float(step * GLOBAL_BATCH) for step in range(1, STEPS + 1)}
    images = _history(launch, "caps2", "train/images_per_s")
    assert set(images) == set(seen)
    # unrolled pre-training reports no tolerance/cap numbers; every equilibrium step of caps 2 hits the cap
    assert _history(launch, "caps2", "solver/f_hit_cap") == {s: 1.0 for s in range(PRETRAIN + 1, STEPS + 1)}
    assert _history(launch, "converging", "solver/f_hit_cap") == {s: 0.0 for s in range(PRETRAIN + 1, STEPS + 1)}
    assert all(v == 1.0 for v in _history(launch, "converging", "solver/f_converged").values())
    hits = [v * GLOBAL_BATCH / 100 for v in _history(launch, "caps2", "train/top1").values()]
    assert len(hits) == STEPS and all(0 <= h <= GLOBAL_BATCH and h == pytest.approx(round(h)) for h in hits)


@pytest.mark.timeout(1200)
def test_checkpoints_are_metrics_and_listed(launch):
    committed = _history(launch, "caps2", "checkpoint/last_committed_step")
    assert committed == {2: 2.0, 4: 4.0, 6: 6.0}
    listing = _artifact_json(launch, "caps2", "run/checkpoints.json")
    assert [c["step"] for c in listing["committed"]] == [6, 4]  # keep_last 2: step 2 was retired
    on_disk = sorted(p.parent.name for p in (launch["tmp"] / "caps2" / "ckpt").glob("step_*/COMMITTED.json"))
    assert on_disk == sorted(Path(c["path"]).name for c in listing["committed"])
    best = _history(launch, "caps2", "eval/best_top1")
    top1 = _history(launch, "caps2", "eval/top1")
    assert best[6] == max(top1.values())


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("run", ["caps2", "converging"])
def test_convergence_figure_matches_the_logged_eval_residuals(launch, run):
    client, run_id = launch["client"], launch["runs"][run].info.run_id
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    # the step-2 evaluation ran unrolled (pre-training): no convergence figure for it
    assert "plots/convergence_step0000002.png" not in plots
    cap = 2 if run == "caps2" else 30
    for step in EVAL_STEPS[1:]:
        name = f"plots/convergence_step{step:07d}"
        assert f"{name}.png" in plots
        data = _artifact_json(launch, run, f"{name}.json")
        branches = data["eval"]["branches"]
        assert all(len(row) == 2 for row in branches) and 1 <= len(branches) <= cap  # two branches
        for i, end in enumerate(data["eval"]["end_branches"]):
            assert branches[-1][i] == end  # the figure's curve ends where the logged metric is
            assert _history(launch, run, f"eval/residual_branch{i}")[step] == pytest.approx(end, rel=1e-9)
        assert _history(launch, run, "eval/residual")[step] == pytest.approx(data["eval"]["joint"][-1], rel=1e-9)
        train = data["train"]
        assert train["step"] == step and train["b_joint"] and len(train["b_branches"][0]) == 2
        assert data["f_max_iter"] == cap and data["stop_mode"] == "rel"
    if run == "caps2":
        assert len(branches) == 2 and data["f_tol"] == 1e-3


@pytest.mark.timeout(1200)
def test_summary_figure_is_redrawn_at_every_evaluation(launch):
    for run in ("caps2", "converging"):
        run_id = launch["runs"][run].info.run_id
        plots = {a.path for a in launch["client"].list_artifacts(run_id, "plots")}
        assert "plots/run_summary.png" in plots
        summary = _artifact_json(launch, run, "plots/run_summary.json")
        assert summary == {"drawn_after_steps": EVAL_STEPS, "eval_steps": EVAL_STEPS}


@pytest.mark.timeout(1200)
def test_solver_health_warns_and_tags_when_caps_are_hit_and_not_when_solves_converge(launch):
    tag = launch["runs"]["caps2"].data.tags.get("solver_health", "")
    assert "not being found" in tag and "cap (2 f evaluations)" in tag and "deq.f_max_iter" in tag
    assert "solver_health" not in launch["runs"]["converging"].data.tags
    # one warning in the whole launch: the caps-2 run's, once (the window first fills at step 5)
    assert launch["output"].count("WARNING solver health") == 1
    assert "(up to step 5)" in launch["output"]
