"""Bad input to `mdeq train` / `mdeq eval`: one clear message, exit code 2, before any heavy work
(no process group, no DeepSpeed engine, no loader)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

import mdeq
from launch.cli.main import main
from trainer.transfer import write_weights


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    import data_pipelines as data

    root = tmp_path_factory.mktemp("data")
    data.synth_imagenet(root / "raw", classes=2, train_per_class=4, val_per_class=2, size=16, seed=0)
    data.write_imagenet_shards(root / "raw", root / "train", split="train", samples_per_shard=2, progress=False)
    data.write_imagenet_shards(root / "raw", root / "val", split="val", samples_per_shard=2, progress=False)
    return {"train": root / "train", "val": root / "val"}


def run_train(capsys, *overrides: str) -> tuple[int, str]:
    import trainer.loop

    argv = ["train"]
    for item in overrides:
        argv += ["--set", item]
    set_up, real = [], trainer.loop.setup_distributed

    def recorded(*args, **kwargs):
        set_up.append(args)
        return real(*args, **kwargs)

    # the real set-up, recorded: a process group set up and torn down again on the way out leaves
    # dist.is_initialized() False, so only the record shows whether the error came before it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.loop, "setup_distributed", recorded)
        code = main(argv)
    err = capsys.readouterr().err
    assert not set_up and not dist.is_initialized(), f"the error must come before the process group is set up: {err}"
    return code, err


def base(shards, tmp_path) -> list[str]:
    return ["model.name=tiny", f"data.train_shards={shards['train']}", f"data.val_shards={shards['val']}",
            "data.image_size=16", f"checkpoint.dir={tmp_path / 'ckpt'}", "tracking.enabled=false", "data.workers=0"]


def test_missing_shards(capsys, tmp_path):
    code, err = run_train(capsys, "model.name=tiny", f"data.train_shards={tmp_path / 'nowhere'}",
                          f"data.val_shards={tmp_path / 'nowhere'}")
    assert code == 2 and "nowhere" in err and "Traceback" not in err


def test_empty_shard_setting_says_what_to_set(capsys):
    code, err = run_train(capsys, "model.name=tiny")
    assert code == 2 and "data.train_shards is empty" in err


def test_zero_step_config(capsys, shards, tmp_path):
    code, err = run_train(capsys, *base(shards, tmp_path), "train.max_steps=0")
    assert code == 2 and "train.max_steps" in err and ">= 1" in err


def test_batch_the_world_size_cannot_divide(capsys, shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun --nproc-per-node 3 would set it
    code, err = run_train(capsys, *base(shards, tmp_path), "data.batch_size=4", "train.global_batch_size=16")
    assert code == 2 and "cannot be split over 3 processes" in err


def test_init_from_checkpoint_of_another_model(capsys, shards, tmp_path):
    other = mdeq.create_model("cifar-small")  # 24/24 channels, E=5: not tiny's backbone
    write_weights(other.state_dict(), tmp_path / "other" / "model.pt", model="cifar-small", task="classification",
                  step=1)
    code, err = run_train(capsys, *base(shards, tmp_path), f"model.init_from={tmp_path / 'other'}")
    assert code == 2 and "model.init_from" in err and "cifar-small" in err and "does not match" in err


def test_init_from_a_file_that_is_not_a_checkpoint(capsys, shards, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a torch file")
    code, err = run_train(capsys, *base(shards, tmp_path), f"model.init_from={tmp_path / 'junk'}")
    assert code == 2 and "cannot read" in err


def test_segmentation_model_on_imagenet_data(capsys, shards, tmp_path):
    code, err = run_train(capsys, *base(shards, tmp_path), "model.name=cityscapes-small")
    assert code == 2 and "segmentation model" in err and "tiny" in err


def test_eval_of_a_missing_checkpoint(capsys, shards, tmp_path):
    argv = ["eval", "--checkpoint", str(tmp_path / "none")]
    for item in base(shards, tmp_path):
        argv += ["--set", item]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
