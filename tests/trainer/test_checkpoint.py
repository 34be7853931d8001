"""The checkpointer against a real DeepSpeed engine (one process, gloo): commit, resume, verify, retain."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import Checkpointer, check_compatible, classify_changes, store
from trainer.checkpoint.files import unsafe_globals
from trainer.checkpoint.rng import capture_rng_state, restore_rng_state
from trainer.config import CheckpointConfig, config_to_dict, load_config
from trainer.errors import TrainerError


@pytest.fixture(scope="module", autouse=True)
def _process_group(one_rank_process_group):
    """Every test here builds in-process DeepSpeed engines on the shared one-rank group."""
    yield


def make_engine(zero_stage: int = 0, seed: int = 0):
    import deepspeed

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def train_steps(engine, n: int) -> None:
    """``n`` steps on data drawn from the torch RNG, so an unrestored RNG changes the result."""
    for _ in range(n):
        x = torch.randn(4, 4)
        loss = (engine(x) ** 2).mean()
        engine.backward(loss)
        engine.step()


def flat_weights(engine) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in engine.module.parameters()])


def ckpt_cfg(tmp_path: Path, **kw) -> CheckpointConfig:
    return replace(CheckpointConfig(dir=str(tmp_path / "ckpt")), **kw)


def checkpointer(cfg: CheckpointConfig, config: dict | None = None, config_hash: str = "h0") -> Checkpointer:
    return Checkpointer(cfg, rank=0, world_size=1, config_hash=config_hash, config=config)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_resume_continues_bitwise_and_restores_client_state(tmp_path, zero_stage):
    cfg = ckpt_cfg(tmp_path)
    engine = make_engine(zero_stage)
    train_steps(engine, 3)
    ckpt = checkpointer(cfg)
    assert ckpt.save(engine, 3, {"step": 3, "epoch": 0, "loader_state": {"offset": 12}, "mlflow_run_id": "abc"})
    train_steps(engine, 2)
    uninterrupted = flat_weights(engine)

    fresh = make_engine(zero_stage, seed=123)  # different init: everything must come from the checkpoint
    torch.manual_seed(999)  # scramble the RNG: load must restore it
    resumer = checkpointer(cfg)
    point = resumer.find_resume()
    assert point is not None and point.step == 3 and point.client_state["mlflow_run_id"] == "abc"
    state = resumer.load(fresh, point)
    assert state == {"step": 3, "epoch": 0, "loader_state": {"offset": 12}, "mlflow_run_id": "abc"}
    train_steps(fresh, 2)
    assert torch.equal(flat_weights(fresh), uninterrupted)
    # DeepSpeed never wrote `latest`; only our marker says what is committed
    assert not (Path(cfg.dir) / "latest").exists()
    assert (Path(cfg.dir) / "step_000000003" / store.MARKER).is_file()


@pytest.mark.timeout(120)
def test_uncommitted_truncated_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    cfg = ckpt_cfg(tmp_path, keep_last=5)
    engine = make_engine()
    ckpt = checkpointer(cfg)
    for step in (1, 2, 3, 4):
        train_steps(engine, 1)
        ckpt.save(engine, step, {"step": step})
    root = Path(cfg.dir)
    (root / "step_000000004" / store.MARKER).unlink()  # a save that never committed
    model_file = root / "step_000000003" / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:-100])  # truncated
    corrupt = root / "step_000000002" / "mp_rank_00_model_states.pt"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    corrupt.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        point = checkpointer(cfg).find_resume()
    assert point is not None and point.step == 1
    text = caplog.text
    assert "step_000000004" in text and "no commit marker" in text
    assert "step_000000003" in text and "truncated" in text
    assert "step_000000002" in text and "SHA-256" in text


@pytest.mark.timeout(120)
def test_retention_keeps_last_n_plus_best_and_deletes_only_after_a_newer_commit(tmp_path):
    cfg = ckpt_cfg(tmp_path, keep_last=2, keep_best=True, best_mode="max")
    engine = make_engine()
    ckpt = checkpointer(cfg)
    metrics = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.2, 5: 0.3}
    for step, metric in metrics.items():
        train_steps(engine, 1)
        ckpt.save(engine, step, {"step": step}, metric=metric)
        left = sorted(int(d.name.split("_")[1]) for d in Path(cfg.dir).iterdir())
        assert left[-1] == step  # the newest commit is always present
    assert sorted(int(d.name.split("_")[1]) for d in Path(cfg.dir).iterdir()) == [2, 4, 5]
    # saving an already committed step is a no-op
    assert ckpt.save(engine, 5, {"step": 5}) is False


@pytest.mark.timeout(120)
def test_non_finite_weights_are_never_saved(tmp_path):
    cfg = ckpt_cfg(tmp_path)
    engine = make_engine()
    with torch.no_grad():
        next(engine.module.parameters())[0, 0] = float("nan")
    with pytest.raises(TrainerError, match="NaN"):
        checkpointer(cfg).save(engine, 1, {"step": 1})
    assert not any(Path(cfg.dir).glob("step_*/COMMITTED.json"))


@pytest.mark.timeout(120)
def test_breaking_config_change_is_refused_naming_keys_and_safe_change_allowed(tmp_path):
    cfg = ckpt_cfg(tmp_path)
    base = config_to_dict(load_config(None))
    engine = make_engine()
    checkpointer(cfg, base, "hash-a").save(engine, 1, {"step": 1})

    safe = config_to_dict(load_config(None, ["train.max_steps=5000", "train.eval_every=7"]))
    assert checkpointer(cfg, safe, "hash-b").find_resume().step == 1

    breaking = config_to_dict(load_config(None, ["model.num_branches=2", "data.batch_size=3"]))
    with pytest.raises(TrainerError) as err:
        checkpointer(cfg, breaking, "hash-c").find_resume()
    assert "model.num_branches" in str(err.value) and "data.batch_size" in str(err.value)
    assert "train.max_steps" not in str(err.value)


def test_check_compatible_allows_safe_keys_only():
    base = config_to_dict(load_config(None))
    older = json.loads(json.dumps(base))
    del older["train"]["seed"]  # a checkpoint from before a field existed: its default is no change
    assert classify_changes(older, base) == ([], [])
    assert classify_changes(older, config_to_dict(load_config(None, ["train.seed=4"])))[0] == ["train.seed"]
    check_compatible(base, config_to_dict(load_config(None, ["checkpoint.keep_last=9", "tracking.enabled=false"])))
    with pytest.raises(TrainerError, match="train.seed"):
        check_compatible(base, config_to_dict(load_config(None, ["train.seed=1"])))


@pytest.mark.timeout(60)
def test_resume_never_and_explicit_path(tmp_path):
    cfg = ckpt_cfg(tmp_path)
    engine = make_engine()
    ckpt = checkpointer(cfg)
    for step in (1, 2):
        train_steps(engine, 1)
        ckpt.save(engine, step, {"step": step})
    assert checkpointer(replace(cfg, resume="never", dir=str(tmp_path / "empty"))).find_resume() is None
    explicit = str(Path(cfg.dir) / "step_000000001")
    assert checkpointer(replace(cfg, resume=explicit)).find_resume().step == 1
    (Path(explicit) / store.MARKER).unlink()
    with pytest.raises(TrainerError, match="commit marker"):
        checkpointer(replace(cfg, resume=explicit)).find_resume()


class Payload:
    """Stands for a hostile object in a pickle: loading it would run code."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_files_importing_code_are_detected_without_unpickling(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    assert any("system" in name for name in unsafe_globals(path))
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2), "step": 3}, plain)
    assert unsafe_globals(plain) == []
    # the legacy (non-zip) format cannot be scanned: it is checked by a weights_only load instead
    legacy_evil, legacy_plain = tmp_path / "legacy_evil.pt", tmp_path / "legacy_plain.pt"
    torch.save({"x": Payload()}, legacy_evil, _use_new_zipfile_serialization=False)
    torch.save({"w": torch.ones(2)}, legacy_plain, _use_new_zipfile_serialization=False)
    assert unsafe_globals(legacy_evil) and unsafe_globals(legacy_plain) == []


def test_rng_state_roundtrip_through_json():
    import random

    import numpy as np

    state = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_should_save_every_steps(tmp_path):
    ckpt = checkpointer(ckpt_cfg(tmp_path, every_steps=5))
    assert [s for s in range(1, 16) if ckpt.should_save(s)] == [5, 10, 15]
    assert not checkpointer(ckpt_cfg(tmp_path)).should_save(10)


class StoppedClock:
    """Stands in for the ``time`` module of the checkpointer: ``monotonic()`` moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


@pytest.mark.timeout(60)
def test_should_save_every_minutes_counts_from_the_last_save(tmp_path, monkeypatch):
    from trainer.checkpoint import checkpointer as checkpointer_module

    clock = StoppedClock(now=1000.0)
    monkeypatch.setattr(checkpointer_module, "time", clock)
    timed = checkpointer(ckpt_cfg(tmp_path, every_minutes=2.0))
    clock.now = 1000.0 + 119.9
    assert not timed.should_save(1)
    clock.now = 1000.0 + 120.0
    assert timed.should_save(2)
    engine = make_engine()
    assert timed.save(engine, 2, {"step": 2})
    clock.now = 1120.0 + 119.9  # long past two minutes since construction, but the save restarted the count
    assert not timed.should_save(3)
    clock.now = 1120.0 + 120.0
    assert timed.should_save(4)


@pytest.mark.timeout(60)
def test_extra_files_written_during_save_are_committed_and_verified(tmp_path):
    cfg = ckpt_cfg(tmp_path)
    engine = make_engine()
    ckpt = checkpointer(cfg)
    ckpt.save(engine, 1, {"step": 1}, write_extra=lambda d: torch.save({"w": torch.ones(2)}, d / "model.pt"))
    marker = json.loads((ckpt.tag_dir(1) / store.MARKER).read_text())
    assert "model.pt" in marker["files"] and marker["files"]["model.pt"]["sha256"]
    (ckpt.tag_dir(1) / "model.pt").write_bytes(b"garbage")
    with pytest.raises(TrainerError, match="none can be resumed"):  # the only checkpoint no longer verifies
        checkpointer(cfg).find_resume()
