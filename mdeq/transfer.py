"""Transfer: initialise a model's backbone from another MDEQ's checkpoint (ImageNet -> Cityscapes).

The backbone is everything before the head (keys ``stem.*``, ``injection.*``, ``f.*``); the paper
pre-trains it on ImageNet and fine-tunes a segmentation model whose head differs. Checkpoints are
loaded with ``torch.load(weights_only=True)``: tensors only, never arbitrary pickles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mdeq.errors import MDEQError
from mdeq.model.released import from_released_state_dict

BACKBONE_PREFIXES = ("stem.", "injection.", "f.")
# Where trainers nest a model's state dict inside a checkpoint file (DeepSpeed: "module").
_NESTED_KEYS = ("module", "model", "state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP/DeepSpeed wrapping, torch.compile


@dataclass
class TransferResult:
    """What ``load_backbone`` did. ``skipped`` maps each unused checkpoint key to the reason."""

    loaded: list[str] = field(default_factory=list)  # backbone keys copied into the model
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why it was not loaded
    missing: list[str] = field(default_factory=list)  # model backbone keys the checkpoint lacks


def load_backbone(model: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor], *,
                  strict: bool = True) -> TransferResult:
    """Copy the backbone tensors of ``checkpoint`` into ``model``; the head keeps its own init.

    ``checkpoint`` is a state dict or a file holding one (optionally under "module", "model" or
    "state_dict", with "module." prefixes as DeepSpeed/DDP write them); a state dict of the authors'
    released code (keys ``fullstage.*``) is renamed to our layout first. Head tensors and keys the
    model does not have are skipped. With ``strict`` (default) a backbone tensor whose shape differs
    or a backbone key the checkpoint lacks raises MDEQError (the architectures do not match);
    otherwise those are skipped / listed as missing. Raises MDEQError when nothing could be loaded.
    """
    source = _read_state_dict(checkpoint)
    if any(key.startswith("fullstage.") for key in source):
        source, _ = from_released_state_dict(source)  # the authors' released layout
    target = model.state_dict()
    result = TransferResult()
    mismatched = []
    to_load = {}
    for key, tensor in source.items():
        if not key.startswith(BACKBONE_PREFIXES):
            result.skipped[key] = "not part of the backbone (head)"
        elif key not in target:
            result.skipped[key] = "the model has no such key"
        elif tuple(tensor.shape) != tuple(target[key].shape):
            result.skipped[key] = f"shape {tuple(tensor.shape)} != model's {tuple(target[key].shape)}"
            mismatched.append(key)
        else:
            to_load[key] = tensor
    result.missing = [k for k in target if k.startswith(BACKBONE_PREFIXES) and k not in to_load and k not in source]
    if not any(not k.endswith("num_batches_tracked") for k in to_load):
        raise MDEQError("no backbone tensor of the checkpoint matches this model (expected keys like "
                        "'stem.layers.0.0.weight', 'f.branches.0.conv1.weight_v'): is it an MDEQ checkpoint?")
    if strict and (mismatched or result.missing):
        detail = "; ".join([f"{k}: {result.skipped[k]}" for k in mismatched[:3]]
                           + [f"{k}: missing from the checkpoint" for k in result.missing[:3]])
        raise MDEQError(f"the checkpoint's backbone does not match this model ({len(mismatched)} shape "
                        f"mismatch(es), {len(result.missing)} missing key(s): {detail}); build the model with "
                        "the same branches/channels/width_expansion as the pre-trained one, or pass strict=False")
    with torch.no_grad():
        for key, tensor in to_load.items():
            target[key].copy_(tensor)  # state_dict tensors share storage with the parameters
    result.loaded = sorted(to_load)
    return result


def _read_state_dict(checkpoint: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise MDEQError(f"checkpoint {path} is not a file; pass the model-state file (for DeepSpeed: "
                            "<dir>/<tag>/mp_rank_00_model_states.pt) or a state dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
            raise MDEQError(f"cannot read {path} as a tensors-only checkpoint: {err}") from None
    for key in _NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise MDEQError(f"checkpoint holds a {type(state).__name__}, not a state dict")
    clean = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean
