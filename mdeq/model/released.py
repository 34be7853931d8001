"""Read state dicts written by the authors' released MDEQ code (locuslab/mdeq) into our key layout.

The released model nests f as ``fullstage`` (and keeps ``fullstage_copy`` and ``deq.func*``
duplicates of it), calls the stem ``downsample`` and the injection ``stage0``, and names the
heads after HRNet (``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier`` for
classification; ``last_layer`` for segmentation). ``from_released_state_dict`` renames every tensor
that has a counterpart here and reports the rest, so a released checkpoint loads with
``model.load_state_dict(converted)`` when the architecture values match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# (released key pattern, our key template); the first match wins.
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), t) for p, t in [
    (r"^downsample\.0\.(weight)$", r"stem.layers.0.conv.\1"),
    (r"^downsample\.1\.(.+)$", r"stem.layers.0.bn.\1"),
    (r"^downsample\.3\.(weight)$", r"stem.layers.1.conv.\1"),
    (r"^downsample\.4\.(.+)$", r"stem.layers.1.bn.\1"),
    (r"^stage0\.0\.(weight)$", r"injection.transform.conv.\1"),
    (r"^stage0\.1\.(.+)$", r"injection.transform.bn.\1"),
    (r"^fullstage\.branches\.(\d+)\.blocks\.0\.(conv[12]\.weight_[gv]|gn[123]\.(?:weight|bias))$",
     r"f.branches.\1.\2"),
    (r"^fullstage\.fuse_layers\.(\d+)\.(\d+)\.net\.conv\.(weight)$", r"f.fusion.fuse.\1.\2.conv.\3"),
    (r"^fullstage\.fuse_layers\.(\d+)\.(\d+)\.net\.gnorm\.(weight|bias)$", r"f.fusion.fuse.\1.\2.norm.\3"),
    (r"^fullstage\.fuse_layers\.(\d+)\.(\d+)\.net\.(\d+)\.conv\.(weight)$", r"f.fusion.fuse.\1.\2.steps.\3.conv.\4"),
    (r"^fullstage\.fuse_layers\.(\d+)\.(\d+)\.net\.(\d+)\.gnorm\.(weight|bias)$",
     r"f.fusion.fuse.\1.\2.steps.\3.norm.\4"),
    (r"^fullstage\.post_fuse_layers\.(\d+)\.conv\.(weight_[gv])$", r"f.fusion.post_fuse.\1.conv.\2"),
    (r"^fullstage\.post_fuse_layers\.(\d+)\.gnorm\.(weight|bias)$", r"f.fusion.post_fuse.\1.norm.\2"),
    (r"^incre_modules\.(\d+)\.0\.(conv[123]\.weight|bn[123]\..+)$", r"head.bottlenecks.\1.\2"),
    (r"^incre_modules\.(\d+)\.0\.downsample\.0\.(weight)$", r"head.bottlenecks.\1.shortcut.conv.\2"),
    (r"^incre_modules\.(\d+)\.0\.downsample\.1\.(.+)$", r"head.bottlenecks.\1.shortcut.bn.\2"),
    (r"^downsamp_modules\.(\d+)\.0\.(weight|bias)$", r"head.downsamples.\1.conv.\2"),
    (r"^downsamp_modules\.(\d+)\.1\.(.+)$", r"head.downsamples.\1.bn.\2"),
    (r"^final_layer\.0\.(weight|bias)$", r"head.final.conv.\1"),
    (r"^final_layer\.1\.(.+)$", r"head.final.bn.\1"),
    (r"^classifier\.(weight|bias)$", r"head.classifier.\1"),
    (r"^last_layer\.0\.(weight|bias)$", r"head.fuse.conv.\1"),
    (r"^last_layer\.1\.(.+)$", r"head.fuse.bn.\1"),
    (r"^last_layer\.3\.(weight|bias)$", r"head.classifier.\1"),
]]
# Duplicates of f the released model registers (an un-normalized copy and the solver wrapper's refs).
_DUPLICATES = re.compile(r"^(fullstage_copy|deq)\.")


def from_released_state_dict(state: Mapping[str, torch.Tensor]
                             ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(our state dict, {released key: why it was dropped}) for a released-code state dict.

    ``module.`` prefixes (DataParallel/DDP) are stripped. Load the result with
    ``model.load_state_dict(converted)`` (strict) or ``mdeq.load_backbone`` for the backbone only.
    """
    converted: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if _DUPLICATES.match(name):
            dropped[key] = "duplicate of fullstage (released code's copy / solver wrapper)"
            continue
        for pattern, template in _RULES:
            if pattern.match(name):
                converted[pattern.sub(template, name)] = value
                break
        else:
            dropped[key] = "no counterpart in this model layout"
    return converted, dropped
