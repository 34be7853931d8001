"""Model weights outside DeepSpeed's own files: the consolidated ``model.pt`` beside a checkpoint,
reading it back for ``model.init_from`` (transfer) and ``mdeq eval``.

DeepSpeed's model-states file holds empty partitions under ZeRO-3 and its optimizer files need
the original world size; a plain fp32 state dict gathered on rank 0 serves every reader. It is read
with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.errors import TrainerError

WEIGHTS_NAME = "model.pt"


def find_weights(path: str | Path) -> Path:
    """The weights file ``path`` names: a ``.pt`` file, a checkpoint step dir holding ``model.pt``, or a
    checkpoint root (the newest ``model.pt`` below it)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise TrainerError(f"checkpoint {path} does not exist: give a checkpoint directory written by `mdeq train` "
                           "(checkpoint.dir) or a model.pt file")
    if (path / WEIGHTS_NAME).is_file():
        return path / WEIGHTS_NAME
    found = sorted(path.rglob(WEIGHTS_NAME), key=lambda p: p.stat().st_mtime)
    if not found:
        raise TrainerError(f"no {WEIGHTS_NAME} under {path}: it is not a checkpoint written by `mdeq train` "
                           "(every committed checkpoint holds one)")
    return found[-1]


def read_weights(path: str | Path) -> dict:
    """{"state_dict": {...}, "model": name, "task": ..., "step": N} from ``path`` (tensors-only load)."""
    file = find_weights(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError ... for corrupt/foreign files
        # torch's own text suggests weights_only=False (running code from the file): never quote it. Its
        # tensors-only unpickler refuses pickled objects and plain garbage alike, so say only what is certain
        reason = "it is not a torch file of tensors only" if "weights_only" in str(err) else \
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise TrainerError(f"cannot read {file} as model weights ({reason}); give a checkpoint directory "
                           f"written by `mdeq train` (its checkpoint.dir or a step_* directory) or its "
                           f"{WEIGHTS_NAME}") from None
    if isinstance(payload, dict) and "state_dict" not in payload:
        payload = {"state_dict": payload}
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise TrainerError(f"{file} does not hold a state dict")
    payload["path"] = str(file)
    return payload


def read_init_from(path: str) -> dict:
    return read_weights(path)


def check_transfer(model: torch.nn.Module, payload: dict, source: str) -> None:
    """Raise a TrainerError if ``payload``'s backbone cannot initialise ``model`` (shapes only)."""
    target = model.state_dict()
    backbone = ("stem.", "injection.", "f.")
    state = payload["state_dict"]
    wanted = [k for k in target if k.startswith(backbone)]
    missing = [k for k in wanted if k not in state]
    mismatched = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if not wanted or missing or mismatched:
        what = f"model {payload.get('model', '?')!r}" if payload.get("model") else "another model"
        detail = "; ".join([f"{k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched[:3]]
                           + [f"{k}: missing" for k in missing[:3]])
        raise TrainerError(f"model.init_from={source}: the checkpoint is from {what} whose backbone does not match "
                           f"this model ({len(mismatched)} shape mismatch(es), {len(missing)} missing key(s): {detail}); "
                           "use a checkpoint of a model with the same branches, channels and width_expansion")


def apply_init_from(model: torch.nn.Module, payload: dict, source: str, *, verbose: bool) -> tuple[list, dict]:
    """Load the backbone of ``payload`` into ``model``; print loaded and skipped keys on the main rank."""
    import mdeq

    try:
        result = mdeq.load_backbone(model, payload["state_dict"])
    except mdeq.errors.MDEQError as err:
        raise TrainerError(f"model.init_from={source}: {err}") from None
    if verbose:
        print(f"init_from {payload.get('path', source)}: loaded {len(result.loaded)} backbone tensors, "
              f"skipped {len(result.skipped)} ({', '.join(sorted(result.skipped)[:6])}"
              f"{', ...' if len(result.skipped) > 6 else ''})", flush=True)
    return result.loaded, result.skipped


def gather_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The full model state dict in fp32 on rank 0 (None elsewhere); collective under ZeRO-3."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if engine.zero_optimization_stage() == 3:
        from deepspeed import zero

        module = engine.module
        with zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = _cpu_fp32(module.state_dict()) if rank == 0 else None
        return state
    return _cpu_fp32(engine.module.state_dict()) if rank == 0 else None


def _cpu_fp32(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in state.items()}


def write_weights(state: dict, path: Path, *, model: str, task: str, step: int) -> None:
    """Write ``model.pt`` atomically and durably (temp name, fsync, rename, fsync of the folder)."""
    from data_pipelines.atomic import replace_durably

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"state_dict": state, "model": model, "task": task, "step": step}, tmp)
    replace_durably(tmp, path)
