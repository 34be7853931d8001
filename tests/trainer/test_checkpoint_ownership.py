"""A checkpoint folder belongs to one run: real `mdeq train` / `mdeq eval` processes.

One finished run ("old": 6 steps, commits every 2, keeps 2 -> steps 4 and 6) is shared by the
tests; each works on its own copy of the folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer import mdeq_runs as runs
from trainer.checkpoint import store

pytestmark = [pytest.mark.integration]


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ownership")
    data = runs.make_data(root / "data")
    ckpt = root / "old" / "ckpt"
    config = runs.write_config(root / "old", data, ckpt, train__max_steps=6)
    codes, out = runs.train(config, root / "old" / "train")
    assert codes == [0], out[-4000:]
    assert runs.committed(ckpt) == [4, 6]
    return {"root": root, "data": data, "ckpt": ckpt}


def copy_of(old_run, name: str) -> Path:
    target = old_run["root"] / name / "ckpt"
    shutil.copytree(old_run["ckpt"], target)
    return target


def markers(ckpt: Path) -> dict[int, dict]:
    return {step: json.loads((ckpt / store.tag_for_step(step) / store.MARKER).read_text())
            for step in runs.committed(ckpt)}


@pytest.mark.timeout(600)
def test_fresh_start_in_another_runs_folder_is_refused_and_the_opt_in_moves_them_aside(old_run):
    ckpt = copy_of(old_run, "fresh")
    before = tree_digest(ckpt)
    old_ids = {m["run_id"] for m in markers(ckpt).values()}
    assert len(old_ids) == 1
    config = runs.write_config(ckpt.parent, old_run["data"], ckpt, train__max_steps=4,
                               checkpoint__resume="never")
    codes, out = runs.train(config, ckpt.parent / "refused")
    assert codes == [2], out[-4000:]
    assert str(ckpt) in out and "another checkpoint.dir" in out and "checkpoint.move_other_runs_aside=true" in out
    assert "Traceback" not in out
    assert tree_digest(ckpt) == before  # nothing trained, pruned or overwritten

    codes, out = runs.train(config, ckpt.parent / "opt-in", sets=("checkpoint.move_other_runs_aside=true",))
    assert codes == [0], out[-4000:]
    mine = markers(ckpt)
    assert sorted(mine) == [2, 4] and len({m["run_id"] for m in mine.values()}) == 1
    assert not old_ids & {m["run_id"] for m in mine.values()}  # the final checkpoint is the new run's own
    (aside,) = (ckpt / "set-aside").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["step_000000004", "step_000000006"]
    for step_dir in aside.iterdir():  # moved intact: same bytes, still verifying
        assert tree_digest(step_dir) == {k.split("/", 1)[1]: v for k, v in before.items()
                                         if k.startswith(step_dir.name + "/")}
        assert store.verify(step_dir).run_id in old_ids


@pytest.mark.timeout(600)
def test_resume_auto_stops_with_the_reasons_when_no_committed_checkpoint_verifies(old_run):
    truncated = copy_of(old_run, "truncated")
    for path in truncated.glob("step_*/*.pt"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # A checkpoint whose loading would import code that is not installed here (e.g. written by another
    # version): the marker matches the file, so only the import makes it unusable.
    foreign = copy_of(old_run, "foreign")
    module_dir = old_run["root"] / "foreign-module"
    module_dir.mkdir()
    (module_dir / "mdeq_not_installed_pkg.py").write_text("class State:\n    pass\n")
    sys.path.insert(0, str(module_dir))
    try:
        import mdeq_not_installed_pkg

        for step_dir in foreign.glob("step_*"):
            weights = step_dir / "model.pt"
            payload = torch.load(weights, weights_only=True)
            payload["extra"] = mdeq_not_installed_pkg.State()
            torch.save(payload, weights)
            marker = json.loads((step_dir / store.MARKER).read_text())
            marker["files"]["model.pt"] = {"size": weights.stat().st_size,
                                           "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
            (step_dir / store.MARKER).write_text(json.dumps(marker))
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("mdeq_not_installed_pkg", None)
    for ckpt, why in ((truncated, "truncated"), (foreign, "mdeq_not_installed_pkg.State")):
        before = tree_digest(ckpt)
        config = runs.write_config(ckpt.parent, old_run["data"], ckpt, train__max_steps=8)
        codes, out = runs.train(config, ckpt.parent / "train")
        assert codes == [2], out[-4000:]
        assert "none can be resumed" in out and why in out and "step_000000006" in out and "step_000000004" in out
        assert "Traceback" not in out
        assert not (ckpt.parent / "metrics.jsonl").exists()  # it did not start over from step 0
        assert tree_digest(ckpt) == before


@pytest.mark.timeout(600)
def test_eval_uses_the_newest_committed_checkpoint_that_verifies_and_names_it(old_run):
    ckpt = copy_of(old_run, "eval")
    damaged = ckpt / "step_000000008"  # a newer save that never committed, with a half-written model.pt
    damaged.mkdir()
    model = (ckpt / "step_000000006" / "model.pt").read_bytes()
    (damaged / "model.pt").write_bytes(model[: len(model) // 2])
    config = runs.write_config(ckpt.parent, old_run["data"], ckpt)
    log = ckpt.parent / "eval"
    procs = runs.start(["eval", "--config", str(config), "--checkpoint", str(ckpt), "--json"], log)
    assert runs.wait(procs, log, 300) == [0], runs.logs(log)[-4000:]
    out = runs.logs(log)
    metrics = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert metrics["step"] == 6
    assert metrics["checkpoint"] == str(ckpt / "step_000000006" / "model.pt")
