"""Shards of another dataset than data.dataset are caught by preflight, before any process group or
engine exists; a mistyped --set key suggests the whole key path."""

from __future__ import annotations

import pytest

from tests.trainer.test_train_errors import base, run_train, shards  # noqa: F401 - the fixture is used by name
from trainer.config import ConfigError, load_config


def test_imagenet_shards_for_a_cityscapes_run(capsys, shards, tmp_path):  # noqa: F811
    code, err = run_train(capsys, *base(shards, tmp_path), "data.dataset=cityscapes", "model.name=cityscapes-small")
    assert code == 2 and "Traceback" not in err
    assert f"data.train_shards={shards['train']} holds imagenet shards but data.dataset='cityscapes'" in err


@pytest.mark.parametrize("typo,meant", [("trian.max_steps", "train.max_steps"), ("max_steps", "train.max_steps"),
                                        ("deq.precison.state", "deq.precision.state"), ("model.nme", "model.name")])
def test_set_typo_suggests_the_whole_key(typo, meant):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"{typo}=3"])
    assert f"did you mean {meant}?" in str(caught.value)
