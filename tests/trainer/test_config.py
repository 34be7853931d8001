"""The config contract: typed loading, extends, overrides, and one clear error per kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.cli.main import main
from trainer.config import Config, ConfigError, dump_config, flatten_config, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_required_keys_exist():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    flat = flatten_config(cfg)
    for key in ["model.name", "model.num_classes", "data.dataset", "data.train_shards", "data.val_shards",
                "data.image_size", "data.batch_size", "data.workers", "train.max_steps", "train.eval_every",
                "train.seed", "checkpoint.dir", "tracking.uri", "deepspeed.zero_stage", "deepspeed.precision",
                "deq.f_solver", "deq.b_solver", "deq.f_max_iter", "deq.b_max_iter", "deq.pretrain_steps"]:
        assert key in flat, key


def test_extends_merges_sections(tmp_path):
    write(tmp_path, "base.yaml", "model: {name: tiny, num_classes: 10}\ntrain: {max_steps: 100, seed: 3}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain: {max_steps: 7}\n")
    cfg = load_config(child)
    assert cfg.train.max_steps == 7 and cfg.train.seed == 3 and cfg.model.num_classes == 10


def test_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["train.max_steps=5", "optim.lr=1e-3", "model.channels=[8,16]",
                             "model.num_branches=2", "tracking.uri=http://127.0.0.1:5000",
                             "deepspeed.extra.wall_clock_breakdown=true", "model.num_classes=null"])
    assert cfg.train.max_steps == 5 and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.model.channels == [8, 16] and cfg.tracking.uri == "http://127.0.0.1:5000"
    assert cfg.deepspeed.extra == {"wall_clock_breakdown": True} and cfg.model.num_classes is None


def test_dump_round_trips(tmp_path):
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["train.max_steps=5"])
    path = write(tmp_path, "resolved.yaml", dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("text, overrides, expected", [
    ("train: {max_step: 5}\n", [], "unknown config key 'train.max_step'; did you mean train.max_steps?"),
    ("trian: {max_steps: 5}\n", [], "unknown config key 'trian'; did you mean train?"),
    ("train: {max_steps: five}\n", [], "train.max_steps: expected int, got 'five'"),
    ("deepspeed: {precision: fp8}\n", [], "deepspeed.precision: 'fp8' is not one of"),
    ("deepspeed: {zero_stage: 4}\n", [], "deepspeed.zero_stage: 4 is out of range, must be <= 3"),
    ("train: {max_steps: 0}\n", [], "train.max_steps: 0 is out of range, must be >= 1"),
    ("", ["deq.f_max_iters=3"], "unknown config key 'deq.f_max_iters'; did you mean deq.f_max_iter?"),
    ("", ["data.batch_size=-2"], "data.batch_size: -2 is out of range"),
    ("", ["train.max_steps"], "expected KEY=VALUE"),
    ("model: {num_branches: 2, channels: [8, 16, 32]}\n", [], "model.channels has 3 entries"),
])
def test_bad_values_name_the_key(tmp_path, text, overrides, expected):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path, overrides)
    assert expected in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/recipe.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "model:\n  name: tiny\ntrain:\n  max_steps: [1, 2\n  seed: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "YAML syntax error" in str(info.value) and "line 5" in str(info.value)


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_cli_show_applies_override(capsys):
    assert main(["config", "show", "--config", str(REPO / "configs/quickstart.yaml"),
                 "--set", "train.max_steps=5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["max_steps"] == 5 and shown["model"]["name"] == "tiny"


@pytest.mark.parametrize("text", ["train: {max_step: 5}\n", "a: [1,\n", "deepspeed: {zero_stage: 9}\n"])
def test_cli_validate_exits_2_with_one_message(tmp_path, text):
    path = write(tmp_path, "bad.yaml", text)
    proc = subprocess.run([sys.executable, "-m", "launch.cli.main", "config", "validate", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mdeq config: error:") and len(proc.stderr.strip().splitlines()) == 1


def test_cli_validate_missing_file(capsys):
    assert main(["config", "validate", "--config", "/nope.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
