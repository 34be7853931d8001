"""State dicts of the authors' released code (locuslab/mdeq) convert into our key layout."""

from __future__ import annotations

import pytest
import torch

import mdeq
from mdeq.model.released import from_released_state_dict

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")

BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
STATS = ["running_mean", "running_var", "num_batches_tracked"]  # the head's BatchNorms have no affine


def released_keys(channels, head_channels=None, *, stage0=True, task="classification"):
    """Key names the released MDEQClsNet / MDEQSegNet registers, written from its module tree."""
    keys = ["downsample.0.weight", *[f"downsample.1.{b}" for b in BN],
            "downsample.3.weight", *[f"downsample.4.{b}" for b in BN]]
    if stage0:
        keys += ["stage0.0.weight", *[f"stage0.1.{b}" for b in BN]]
    n = len(channels)
    for i in range(n):
        block = f"fullstage.branches.{i}.blocks.0."
        keys += [block + k for k in ["conv1.weight_g", "conv1.weight_v", "gn1.weight", "gn1.bias", "conv2.weight_g",
                                     "conv2.weight_v", "gn2.weight", "gn2.bias", "gn3.weight", "gn3.bias"]]
        keys += [f"fullstage_copy.branches.{i}.blocks.0.conv1.weight", f"deq.func.branches.{i}.blocks.0.conv1.weight_v"]
    for i in range(n):
        for j in range(n):
            if j > i:
                keys += [f"fullstage.fuse_layers.{i}.{j}.net.conv.weight",
                         f"fullstage.fuse_layers.{i}.{j}.net.gnorm.weight", f"fullstage.fuse_layers.{i}.{j}.net.gnorm.bias"]
            elif j < i:
                for k in range(i - j):
                    keys += [f"fullstage.fuse_layers.{i}.{j}.net.{k}.conv.weight",
                             f"fullstage.fuse_layers.{i}.{j}.net.{k}.gnorm.weight",
                             f"fullstage.fuse_layers.{i}.{j}.net.{k}.gnorm.bias"]
        keys += [f"fullstage.post_fuse_layers.{i}.conv.weight_g", f"fullstage.post_fuse_layers.{i}.conv.weight_v",
                 f"fullstage.post_fuse_layers.{i}.gnorm.weight", f"fullstage.post_fuse_layers.{i}.gnorm.bias"]
    if task == "classification":
        for i in range(n):
            head = f"incre_modules.{i}.0."
            for c in (1, 2, 3):
                keys += [f"{head}conv{c}.weight", *[f"{head}bn{c}.{s}" for s in STATS]]
            keys += [f"{head}downsample.0.weight", *[f"{head}downsample.1.{b}" for b in BN]]
        for i in range(n - 1):
            keys += [f"downsamp_modules.{i}.0.weight", f"downsamp_modules.{i}.0.bias",
                     *[f"downsamp_modules.{i}.1.{b}" for b in BN]]
        keys += ["final_layer.0.weight", "final_layer.0.bias", *[f"final_layer.1.{b}" for b in BN],
                 "classifier.weight", "classifier.bias"]
    else:
        keys += ["last_layer.0.weight", "last_layer.0.bias", *[f"last_layer.1.{b}" for b in BN],
                 "last_layer.3.weight", "last_layer.3.bias"]
    return keys


def test_released_classification_keys_map_onto_ours_one_to_one():
    model = mdeq.create_model("imagenet-small", device="meta")
    state = {f"module.{k}": torch.tensor(float(i)) for i, k in enumerate(released_keys((32, 64, 128, 256)))}
    converted, dropped = from_released_state_dict(state)
    assert set(converted) == set(model.state_dict())
    assert len(converted) == len(state) - len(dropped)  # no two released keys land on one of ours
    assert all(k.startswith(("module.fullstage_copy.", "module.deq.")) for k in dropped)
    by_value = {float(v): k for k, v in converted.items()}
    origin = {k[len("module."):]: float(v) for k, v in state.items()}
    assert by_value[origin["downsample.3.weight"]] == "stem.layers.1.conv.weight"
    assert by_value[origin["fullstage.fuse_layers.3.0.net.2.conv.weight"]] == "f.fusion.fuse.3.0.steps.2.conv.weight"
    assert by_value[origin["incre_modules.2.0.downsample.1.running_var"]] == "head.bottlenecks.2.shortcut.bn.running_var"


def test_released_segmentation_checkpoint_loads_strictly():
    torch.manual_seed(0)
    model = mdeq.create_model("tiny", downsample_times=2)  # with the stage0 injection transform
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    seg_keys = released_keys((8, 16), stage0=True, task="segmentation")
    converted, _ = from_released_state_dict({k: torch.zeros(1) for k in seg_keys})
    assert {k for k in converted if not k.startswith("head.")} == {k for k in ours if not k.startswith("head.")}
    assert {k for k in converted if k.startswith("head.")} == {"head.fuse.conv.weight", "head.fuse.conv.bias",
                                                                "head.classifier.weight", "head.classifier.bias",
                                                                *[f"head.fuse.bn.{b}" for b in BN]}
    # a round trip for the classification layout: tensors under released names load strictly
    # and land where they belong
    released = {}
    for key in released_keys((8, 16), (4, 8), stage0=True):
        (mine,) = from_released_state_dict({key: torch.zeros(1)})[0] or [None]
        if mine is not None:
            released[key] = ours[mine] + 1
    result = model.load_state_dict(from_released_state_dict(released)[0], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, ours[key] + 1), key


def test_load_backbone_reads_a_released_imagenet_checkpoint_into_a_cityscapes_model():
    shapes = {k: v.shape for k, v in mdeq.create_model("imagenet-small", device="meta").state_dict().items()}
    released = {}
    for key in released_keys((32, 64, 128, 256)):
        (mine,) = from_released_state_dict({key: torch.zeros(1)})[0] or [None]
        if mine is not None:
            released[f"module.{key}"] = torch.full(shapes[mine], 0.5) if shapes[mine] else torch.tensor(3)
    target = mdeq.create_model("cityscapes-small")

    result = mdeq.load_backbone(target, {"state_dict": released})

    assert result.loaded == sorted(k for k in target.state_dict() if k.startswith(("stem.", "injection.", "f.")))
    assert not result.missing
    assert target.state_dict()["f.fusion.fuse.3.0.steps.2.conv.weight"].eq(0.5).all()
