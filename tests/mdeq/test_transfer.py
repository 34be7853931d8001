"""Backbone transfer: a classification checkpoint initialises a segmentation model (ImageNet ->
Cityscapes), reporting what was loaded and what was skipped, loading tensors only."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch

import mdeq
from mdeq.errors import MDEQError
from mdeq.model import MDEQModel
from mdeq.transfer import BACKBONE_PREFIXES

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")


def backbone(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE_PREFIXES)}


def tiny_segmentation():
    spec = replace(mdeq.get_model_spec("tiny"), name="tiny-seg", task="segmentation", head_channels=None,
                   final_channels=None, num_classes=19)
    return MDEQModel(spec)


def test_imagenet_backbone_initialises_cityscapes_model():
    torch.manual_seed(0)
    source = mdeq.create_model("imagenet-small")
    target = mdeq.create_model("cityscapes-small")
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.")}

    result = mdeq.load_backbone(target, source.state_dict())

    assert result.loaded == sorted(backbone(target)) and not result.missing
    assert set(result.skipped) == {k for k in source.state_dict() if k.startswith("head.")}
    assert all(reason.startswith("not part of the backbone") for reason in result.skipped.values())
    for key, value in backbone(source).items():
        assert torch.equal(target.state_dict()[key], value), key
    for key, value in head_before.items():  # the segmentation head keeps its own init
        assert torch.equal(target.state_dict()[key], value), key


def test_loads_a_deepspeed_style_file(tmp_path):
    torch.manual_seed(0)
    source = mdeq.create_model("tiny")
    nested = {"module": {f"module.{k}": v for k, v in source.state_dict().items()}, "global_steps": 7,
              "ds_version": "0.19.8"}
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save(nested, path)
    target = tiny_segmentation()

    result = mdeq.load_backbone(target, path)

    assert result.loaded == sorted(backbone(target))
    assert torch.equal(target.state_dict()["f.branches.1.conv1.weight_v"],
                       source.state_dict()["f.branches.1.conv1.weight_v"])
    logits = target.eval()(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 19, 32, 32) and torch.isfinite(logits).all()


def test_mismatched_backbone_is_an_error_unless_not_strict():
    source = mdeq.create_model("tiny", channels=[8, 8]).state_dict()  # branch 1 narrower than tiny's 16
    target = mdeq.create_model("tiny")
    with pytest.raises(MDEQError, match="backbone does not match this model.*shape mismatch"):
        mdeq.load_backbone(target, source)
    result = mdeq.load_backbone(target, source, strict=False)
    assert "shape (16, 8, 3, 3) != model's (32, 16, 3, 3)" in result.skipped["f.branches.1.conv1.weight_v"]
    assert "f.branches.0.conv1.weight_v" in result.loaded and "stem.layers.0.conv.weight" in result.loaded
    assert set(result.loaded).isdisjoint(result.skipped)
    with pytest.raises(MDEQError, match="no backbone tensor of the checkpoint matches"):
        mdeq.load_backbone(target, mdeq.create_model("cifar-small").state_dict(), strict=False)


def test_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"module": {"stem.layers.0.conv.weight": torch.zeros(1)}, "obj": Exploit()}, handle, protocol=2)
    with pytest.raises(MDEQError, match="cannot read .* as a tensors-only checkpoint"):
        mdeq.load_backbone(mdeq.create_model("tiny"), path)


def test_unrelated_state_dict_and_missing_file():
    with pytest.raises(MDEQError, match="no backbone tensor of the checkpoint matches"):
        mdeq.load_backbone(mdeq.create_model("tiny"), {"layer1.weight": torch.zeros(3)})
    with pytest.raises(MDEQError, match="is not a file"):
        mdeq.load_backbone(mdeq.create_model("tiny"), "/nonexistent/ckpt.pt")


class Exploit:
    """An arbitrary object: unpickling it would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))

