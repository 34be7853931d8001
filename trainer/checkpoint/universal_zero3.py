"""Resuming a ZeRO-3 checkpoint with a different number of processes.

ZeRO-3 files hold no per-parameter mapping; the layout is DeepSpeed's ``zero_to_fp32`` one: every
saved rank ``r`` of ``W`` has, per sub-group, one flat fp32 partition that concatenates, in the
order of ``param_shapes`` (model-states file), each parameter's share
``full.flatten()`` padded with zeros to ``ceil(numel / W) * W`` values, ``[r * p:(r + 1) * p]`` with
``p = ceil(numel / W)``. The base optimizer's state tensors (SGD's ``momentum_buffer``, Adam's
``exp_avg``...) are keyed by sub-group and laid out exactly like the fp32 partition.

``load_resharded_zero3`` rebuilds every parameter's full fp32 master and state tensors from all
saved ranks' files (read with ``weights_only=True``; DeepSpeed's own ZeRO-3 path for
``load_optimizer_states=False`` unpickles with ``weights_only=False``, so it is not used), cuts this
rank's share for the new world size and writes it into the engine's fp32 partition, its state and
the bit16 partition (``param.ds_tensor``). Module buffers, the LR scheduler and DeepSpeed's step
counters come from saved rank 0's model-states file, as DeepSpeed's own load does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint.files import safe_torch_load
from trainer.errors import TrainerError


def _rank_file(tag_dir: Path, rank: int, suffix: str) -> Path:
    matches = sorted(tag_dir.glob(f"*zero_pp_rank_{rank}_mp_rank_00_{suffix}.pt"))
    if not matches:
        raise TrainerError(f"{tag_dir}: no ZeRO-3 {suffix} file of saved rank {rank}")
    return matches[0]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def full_states_from_zero3_files(tag_dir: Path, world_size: int, shapes: dict[str, torch.Size]
                                 ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """``({param name: {"fp32": full tensor, <state key>: full tensor}}, {state key: scalar})``."""
    per_rank: list[dict[str, torch.Tensor]] = []  # rank -> {"fp32" or state key: flat over sub-groups}
    scalars: dict[str, Any] = {}
    for rank in range(world_size):
        path = _rank_file(tag_dir, rank, "optim_states")
        sd = safe_torch_load(path, map_location="cpu")["optimizer_state_dict"]
        groups, base = sd.get("fp32_flat_groups"), sd.get("optimizer_state_dict")
        if not isinstance(groups, list) or not isinstance(base, dict) or "state" not in base:
            raise TrainerError(f"{path}: unexpected ZeRO-3 optimizer layout; resume with the saved process count")
        flats = {"fp32": _flat(groups)}
        state = base["state"]
        if state and sorted(state) != list(range(len(groups))):
            raise TrainerError(f"{path}: optimizer state of {len(state)} groups for {len(groups)} fp32 "
                               "partitions; resume with the saved process count")
        keys = {key for group_state in state.values() for key, value in group_state.items()
                if torch.is_tensor(value) and value.dim() == 1}
        for key in sorted(keys):
            flats[key] = _flat([state[i][key] for i in range(len(groups))])
        for group_state in state.values():
            scalars.update({key: value for key, value in group_state.items() if key not in keys})
        per_rank.append(flats)
    full: dict[str, dict[str, torch.Tensor]] = {}
    offset = 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        share = math.ceil(numel / world_size)
        full[name] = {key: torch.cat([flats[key][offset:offset + share] for flats in per_rank])[:numel].view(shape)
                      for key in per_rank[0]}
        offset += share
    if offset != per_rank[0]["fp32"].numel():
        raise TrainerError(f"{tag_dir}: the ZeRO-3 partitions hold {per_rank[0]['fp32'].numel()} values per rank, "
                           f"the saved parameter shapes {offset}; resume with the saved process count")
    return full, scalars


def _local_share(full: torch.Tensor, rank: int, share: int) -> torch.Tensor:
    flat = full.reshape(-1)
    padded = torch.cat([flat, flat.new_zeros(share * (rank + 1) - flat.numel())]) if \
        flat.numel() < share * (rank + 1) else flat
    return padded[rank * share:(rank + 1) * share]


def load_resharded_zero3(engine: Any, point: Any) -> None:
    """Load the ZeRO-3 checkpoint ``point`` (``point.world_size`` ranks) into ``engine`` of another size."""
    import torch.distributed as dist
    from deepspeed.utils import safe_set_local_fp32_param, safe_set_local_optimizer_state

    tag_dir = Path(point.path)
    states = safe_torch_load(_rank_file(tag_dir, 0, "model_states"), map_location="cpu")
    if states.get("frozen_param_shapes"):
        raise TrainerError(f"checkpoint {point.path} has frozen ZeRO-3 parameters: resume it with "
                           f"{point.world_size} processes")
    shapes = {name: shape for group in states["param_shapes"] for name, shape in group.items()}
    full, scalars = full_states_from_zero3_files(tag_dir, point.world_size, shapes)
    optimizer = engine.optimizer
    base = optimizer.optimizer
    state_keys = sorted({key for saved in full.values() for key in saved if key != "fp32"})
    # A fresh engine has no optimizer state yet (SGD creates its momentum at the first step).
    for flat in optimizer.fp32_partitioned_groups_flat:
        for key in state_keys:
            if key not in base.state[flat]:
                base.state[flat][key] = torch.zeros_like(flat)
        base.state[flat].update({k: v.clone() if torch.is_tensor(v) else v for k, v in scalars.items()})
    rank = dist.get_rank(group=optimizer.dp_process_group)
    optimizer.checkpoint_event_prologue()  # every parameter partitioned: ds_tensor is the live copy
    names = set()
    for name, param in engine.module.named_parameters():
        names.add(name)
        if name not in full:
            raise TrainerError(f"checkpoint {point.path} has no ZeRO-3 state for parameter {name!r}")
        saved = full[name]
        if saved["fp32"].numel() != param.ds_numel:
            raise TrainerError(f"checkpoint {point.path}: parameter {name!r} has {saved['fp32'].numel()} values, "
                               f"the model {param.ds_numel}")
        share = param.ds_tensor.numel()
        local = _local_share(saved["fp32"], rank, share)
        with torch.no_grad():
            param.ds_tensor.copy_(local.to(param.ds_tensor.dtype))  # bit16 (or fp32) partition
        safe_set_local_fp32_param(param, local.to(param.ds_tensor.device))
        for key in state_keys:
            safe_set_local_optimizer_state(param, _local_share(saved[key], rank, share).to(param.ds_tensor.device),
                                           key)
    if set(full) - names:
        raise TrainerError(f"checkpoint {point.path} has parameters the model lacks: {sorted(set(full) - names)}")
    buffers = dict(engine.module.named_buffers())
    with torch.no_grad():
        for name, value in states.get("module", {}).items():
            if name in buffers:
                buffers[name].copy_(value.to(buffers[name].device))
    optimizer.checkpoint_event_epilogue()  # re-gather persistent (small) parameters from the new shares
    if engine.lr_scheduler is not None and states.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(states["lr_scheduler"])
    engine.global_steps = states["global_steps"]
    engine.global_samples = states.get("global_samples", engine.global_steps * engine.train_batch_size())
    engine.skipped_steps = states["skipped_steps"]
