"""Resuming a ZeRO-1/2 checkpoint with a different number of processes.

DeepSpeed 0.19.8 refuses to load ZeRO optimizer partitions saved by another data-parallel size, and
its universal-checkpoint converter (``deepspeed.checkpoint.ds_to_universal``) only knows Adam's
state names (it fails with ``KeyError: 'exp_avg'`` on SGD, this project's default). This module
does the equivalent in memory, for any torch optimizer:

1. ``engine.load_checkpoint(..., load_optimizer_states=False)`` restores the module weights and the
   LR scheduler (DeepSpeed re-derives the fp32 master partitions from the module weights);
2. every saved rank's ZeRO file (read with ``weights_only=True``) gives, through its
   ``param_slice_mappings``, each parameter's fragment of the fp32 master weights and of every
   optimizer state tensor; the fragments of all saved ranks, in rank order, form the full tensors;
3. ``deepspeed.utils.safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state`` write those full
   tensors into the new partitioning; per-group scalars (Adam's ``step``) are copied as they were.

The result equals the saved optimizer state exactly (fp32 masters included, so bf16 runs lose no
precision). ZeRO-3 checkpoints hold no per-parameter mapping: ``universal_zero3.py`` re-shards them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint.files import safe_torch_load
from trainer.errors import TrainerError

log = logging.getLogger(__name__)


def _zero_files(tag_dir: Path, world_size: int) -> list[Path]:
    files = []
    for rank in range(world_size):
        matches = sorted(tag_dir.glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"))
        if not matches:
            raise TrainerError(f"{tag_dir}: no ZeRO optimizer file of saved rank {rank}")
        files.append(matches[0])
    return files


def full_states_from_zero_files(tag_dir: Path, world_size: int) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """``({param name: {"fp32": flat tensor, <state key>: flat tensor}}, {state key: scalar})``."""
    fragments: dict[str, dict[str, list[torch.Tensor]]] = {}
    scalars: dict[str, Any] = {}
    for path in _zero_files(tag_dir, world_size):
        sd = safe_torch_load(path, map_location="cpu")["optimizer_state_dict"]
        base = sd["base_optimizer_state"]
        if not isinstance(base, dict) or "state" not in base:
            raise TrainerError(f"{path}: unexpected ZeRO optimizer layout; resume with the saved process count")
        for group, mapping in enumerate(sd["param_slice_mappings"]):
            fp32 = sd["single_partition_of_fp32_groups"][group]
            state = base["state"].get(group, {})
            for name, address in mapping.items():
                parts = fragments.setdefault(name, {})
                window = slice(address.start, address.start + address.numel)
                parts.setdefault("fp32", []).append(fp32[window])
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() == 1 and value.numel() >= fp32.numel():
                        parts.setdefault(key, []).append(value[window])
                    else:
                        scalars[key] = value
    full = {name: {key: torch.cat(chunks) for key, chunks in parts.items()} for name, parts in fragments.items()}
    return full, scalars


def _ensure_state_tensors(engine: Any, keys: set[str]) -> None:
    """Give the base optimizer zero state tensors for ``keys`` and link them to every parameter.

    A fresh engine has no optimizer state yet (SGD creates its momentum at the first step), so
    DeepSpeed's per-parameter views into the state (``_hp_mapping.optim_fragment``) do not exist.
    """
    base = engine.optimizer.optimizer
    flat_partitions = [group["params"][0] for group in base.param_groups]  # one fp32 partition per group
    for flat in flat_partitions:
        for key in keys:
            if key not in base.state[flat]:
                base.state[flat][key] = torch.zeros_like(flat)
    for param in engine.module.parameters():
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is not None:
            flat = flat_partitions[mapping.param_group_index]
            mapping.set_optim_state_fragment(flat, base.state[flat])


def load_resharded(engine: Any, point: Any) -> None:
    """Load ``point`` (saved by ``point.world_size`` ranks, ZeRO-1/2/3) into ``engine`` of another size."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if point.zero_stage >= 3:
        from trainer.checkpoint.universal_zero3 import load_resharded_zero3

        load_resharded_zero3(engine, point)
        log.warning("re-sharded ZeRO-3 state of %d processes onto %d", point.world_size, engine.dp_world_size)
        return
    load_path, _ = engine.load_checkpoint(point.parent, tag=point.tag, load_optimizer_states=False,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise TrainerError(f"DeepSpeed could not load checkpoint {point.path}; see its log above")
    full, scalars = full_states_from_zero_files(Path(point.path), point.world_size)
    _ensure_state_tensors(engine, {key for saved in full.values() for key in saved if key != "fp32"})
    for name, param in engine.module.named_parameters():
        if name not in full:
            raise TrainerError(f"checkpoint {point.path} has no optimizer state for parameter {name!r}")
        saved = full[name]
        if saved["fp32"].numel() != param.numel():
            raise TrainerError(f"checkpoint {point.path}: parameter {name!r} has {saved['fp32'].numel()} values, "
                               f"the model {param.numel()}")
        safe_set_full_fp32_param(param, saved["fp32"].view(param.shape).to(param.device))
        for key, value in saved.items():
            if key != "fp32":
                safe_set_full_optimizer_state(param, value.view(param.shape).to(param.device), key)
    base = engine.optimizer.optimizer
    for flat_param in (p for group in base.param_groups for p in group["params"]):
        for key, value in scalars.items():
            base.state[flat_param][key] = value.clone() if torch.is_tensor(value) else value
    # The module (bit16) weights came from the model-states file: they are the saved masters rounded.
    log.warning("re-sharded ZeRO-%d state of %d processes onto %d", point.zero_stage, point.world_size,
                engine.dp_world_size)
