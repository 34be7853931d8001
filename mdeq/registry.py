"""The model zoo: one ``ModelSpec`` per name, with the released recipe values as defaults.

    model = mdeq.create_model("imagenet-small", num_classes=100)   # overrides = `model.*` config keys
    mdeq.list_models()                                            # names, in zoo order
    spec = mdeq.get_model_spec("cifar-small")                      # architecture + recipe values

Recipe values come from the authors' released configurations (see docs/model.md for the table
and for where we had to choose: stop modes not stated for every recipe, tiny's values).
"""

from __future__ import annotations

import torch

from mdeq.errors import MDEQError
from mdeq.model.net import MDEQModel
from mdeq.model.spec import ModelSpec

_ZOO: dict[str, ModelSpec] = {}

_SMALL = (32, 64, 128, 256)
_LARGE = (80, 160, 320, 640)
_XL = (88, 176, 352, 704)


def register(spec: ModelSpec) -> ModelSpec:
    """Add an entry to the zoo (its values are validated now); a name may be registered once."""
    if spec.name in _ZOO:
        raise MDEQError(f"model {spec.name!r} is already registered")
    _ZOO[spec.name] = spec.validate()
    return spec


def list_models() -> list[str]:
    """Registered names in zoo order (smallest first within a task)."""
    return list(_ZOO)


def get_model_spec(name: str) -> ModelSpec:
    """The entry's spec; an unknown name raises MDEQError listing the known ones."""
    try:
        return _ZOO[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), list(_ZOO), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise MDEQError(f"unknown model {name!r}; {hint}known models: {', '.join(_ZOO)}") from None


def resolve_spec(name: str, **overrides) -> ModelSpec:
    """The entry's spec with `model.*` overrides applied (``None`` keeps a value), validated."""
    return get_model_spec(name).with_overrides(**overrides)


def create_model(name: str, *, device: torch.device | str | None = None, **overrides) -> MDEQModel:
    """Build the named model (N(0, 0.01) init, deterministic given ``torch.manual_seed``).

    ``overrides`` are the `model.*` config keys (num_classes, num_branches, channels, head_channels,
    final_channels, width_expansion, num_groups, dropout, injection, downsample_times,
    weight_tied_layers); ``None`` keeps the entry's value. ``device="meta"`` builds shapes only.
    """
    return MDEQModel(resolve_spec(name, **overrides), device=device)


def count_parameters(spec: ModelSpec) -> int:
    """Number of parameters (not buffers) of the model ``spec`` describes; allocates nothing."""
    return sum(p.numel() for p in MDEQModel(spec, device="meta").parameters())


# tiny: for tests and the quickstart (a CPU training step well under a second at 32x32).
register(ModelSpec(
    name="tiny", task="classification", num_classes=10, channels=(8, 16), head_channels=(4, 8),
    final_channels=32, width_expansion=2, num_groups=4, dropout=0.1, downsample_times=0,
    f_max_iter=8, b_max_iter=8, stop_mode="rel", pretrain_steps=20, pretrain_layers=3))

register(ModelSpec(
    name="cifar-small", task="classification", num_classes=10, channels=(24, 24), head_channels=(8, 16),
    final_channels=200, width_expansion=5, num_groups=8, dropout=0.25, downsample_times=0,
    f_max_iter=18, b_max_iter=20, stop_mode="rel", pretrain_steps=3000, pretrain_layers=10,
    paper_params="~170K"))
register(ModelSpec(
    name="cifar-large", task="classification", num_classes=10, channels=_SMALL,
    head_channels=(14, 28, 56, 112), final_channels=1680, width_expansion=5, num_groups=8, dropout=0.3,
    downsample_times=0, f_max_iter=18, b_max_iter=20, stop_mode="rel", pretrain_steps=20000,
    pretrain_layers=10, paper_params="~10M"))

register(ModelSpec(
    name="imagenet-small", task="classification", num_classes=1000, channels=_SMALL,
    head_channels=(24, 48, 96, 192), final_channels=2048, width_expansion=5, num_groups=8, dropout=0.0,
    downsample_times=2, f_max_iter=26, b_max_iter=27, stop_mode="abs", pretrain_steps=510_000,
    pretrain_layers=5, paper_params="18M"))
register(ModelSpec(
    name="imagenet-large", task="classification", num_classes=1000, channels=_LARGE,
    head_channels=(32, 64, 128, 256), final_channels=2048, width_expansion=5, num_groups=8, dropout=0.0,
    downsample_times=2, f_max_iter=26, b_max_iter=27, stop_mode="abs", pretrain_steps=510_000,
    pretrain_layers=4, paper_params="63M"))
register(ModelSpec(
    name="imagenet-xl", task="classification", num_classes=1000, channels=_XL,
    head_channels=(32, 64, 128, 256), final_channels=2048, width_expansion=6, num_groups=8, dropout=0.0,
    downsample_times=2, f_max_iter=26, b_max_iter=27, stop_mode="abs", pretrain_steps=510_000,
    pretrain_layers=4))

register(ModelSpec(
    name="cityscapes-small", task="segmentation", num_classes=19, channels=_SMALL, width_expansion=5,
    num_groups=8, dropout=0.05, downsample_times=2, f_max_iter=27, b_max_iter=30, stop_mode="abs",
    pretrain_steps=60_000, pretrain_layers=3))
register(ModelSpec(
    name="cityscapes-large", task="segmentation", num_classes=19, channels=_LARGE, width_expansion=5,
    num_groups=8, dropout=0.03, downsample_times=2, f_max_iter=27, b_max_iter=30, stop_mode="abs",
    pretrain_steps=60_000, pretrain_layers=3))
register(ModelSpec(
    name="cityscapes-xl", task="segmentation", num_classes=19, channels=_XL, width_expansion=6,
    num_groups=8, dropout=0.04, downsample_times=2, f_max_iter=27, b_max_iter=30, stop_mode="abs",
    pretrain_steps=40_000, pretrain_layers=3))
