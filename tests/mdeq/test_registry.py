"""The zoo: exact names, the released recipe values, overrides as `model.*` config keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import mdeq
from mdeq.model.spec import OVERRIDE_KEYS
from mdeq.registry import count_parameters

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[2]

# name: (task, channels, E, dropout, downsample, F cap, B cap, stop, warm-up steps, warm-up layers, classes)
RELEASED = {
    "cifar-small": ("classification", (24, 24), 5, 0.25, 0, 18, 20, "rel", 3000, 10, 10),
    "cifar-large": ("classification", (32, 64, 128, 256), 5, 0.3, 0, 18, 20, "rel", 20000, 10, 10),
    "imagenet-small": ("classification", (32, 64, 128, 256), 5, 0.0, 2, 26, 27, "abs", 510000, 5, 1000),
    "imagenet-large": ("classification", (80, 160, 320, 640), 5, 0.0, 2, 26, 27, "abs", 510000, 4, 1000),
    "imagenet-xl": ("classification", (88, 176, 352, 704), 6, 0.0, 2, 26, 27, "abs", 510000, 4, 1000),
    "cityscapes-small": ("segmentation", (32, 64, 128, 256), 5, 0.05, 2, 27, 30, "abs", 60000, 3, 19),
    "cityscapes-large": ("segmentation", (80, 160, 320, 640), 5, 0.03, 2, 27, 30, "abs", 60000, 3, 19),
    "cityscapes-xl": ("segmentation", (88, 176, 352, 704), 6, 0.04, 2, 27, 30, "abs", 40000, 3, 19),
}
HEADS = {"cifar-small": ((8, 16), 200), "cifar-large": ((14, 28, 56, 112), 1680),
         "imagenet-small": ((24, 48, 96, 192), 2048), "imagenet-large": ((32, 64, 128, 256), 2048),
         "imagenet-xl": ((32, 64, 128, 256), 2048)}


def test_zoo_names_exactly():
    assert mdeq.list_models() == ["tiny", *RELEASED]


@pytest.mark.parametrize("name", list(RELEASED))
def test_entries_carry_the_released_recipe(name):
    spec = mdeq.get_model_spec(name)
    task, channels, expansion, dropout, down, f_cap, b_cap, stop, steps, layers, classes = RELEASED[name]
    assert (spec.task, spec.channels, spec.width_expansion, spec.dropout, spec.downsample_times) == \
        (task, channels, expansion, dropout, down)
    assert (spec.f_max_iter, spec.b_max_iter, spec.stop_mode) == (f_cap, b_cap, stop)
    assert (spec.pretrain_steps, spec.pretrain_layers, spec.num_classes) == (steps, layers, classes)
    assert spec.num_groups == 8 and spec.injection == "highest" and spec.weight_tied_layers == 0
    if task == "classification":
        assert (spec.head_channels, spec.final_channels) == HEADS[name]
    else:
        assert spec.head_channels is None and spec.final_channels is None


def test_model_starts_with_the_recipe_solver_settings():
    model = mdeq.create_model("cifar-small", device="meta")
    opts = model.deq_options
    assert (opts.f_max_iter, opts.b_max_iter, opts.stop_mode, opts.unrolled_steps) == (18, 20, "rel", 10)


def test_tiny_is_cheap_enough_for_a_cpu_step():
    assert count_parameters(mdeq.get_model_spec("tiny")) < 50_000
    assert mdeq.get_model_spec("tiny").num_branches == 2


def test_overrides_are_the_model_config_keys_and_none_keeps_values():
    from trainer.config.schema import ModelConfig

    config_keys = set(ModelConfig.__dataclass_fields__) - {"name", "init_from"}
    assert set(OVERRIDE_KEYS) == config_keys
    base = mdeq.get_model_spec("imagenet-small")
    kept = mdeq.registry.resolve_spec("imagenet-small", **{k: None for k in OVERRIDE_KEYS})
    assert kept == base
    changed = mdeq.registry.resolve_spec("imagenet-small", num_classes=100, num_branches=2, dropout=0.1)
    assert (changed.num_classes, changed.channels, changed.head_channels, changed.dropout) == \
        (100, (32, 64), (24, 48), 0.1)


def test_count_parameters_matches_a_built_model():
    spec = mdeq.get_model_spec("cifar-small")
    assert count_parameters(spec) == sum(p.numel() for p in mdeq.create_model("cifar-small").parameters())


def test_docs_quote_the_current_parameter_counts():
    text = (REPO / "docs" / "model.md").read_text()
    for name in mdeq.list_models():
        count = count_parameters(mdeq.get_model_spec(name))
        row = re.search(rf"^\| `{re.escape(name)}` \|.*$", text, re.MULTILINE)
        assert row, f"docs/model.md has no row for {name}"
        assert f"{count:,}" in row.group(0), f"docs/model.md: {name} should show {count:,} parameters"


def test_meta_build_allocates_nothing():
    model = mdeq.create_model("imagenet-xl", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 80_000_000
    assert torch.get_default_device().type != "meta"
