"""The one place where the config tree becomes model, DEQ options and data-loader arguments.

Model and data code take plain arguments; everything that reads ``Config`` to build them is here,
so a new config key has exactly one consumer to update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import Config
from trainer.errors import TrainerError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# model.* keys handed to mdeq.create_model as overrides (None means "keep the registry value")
MODEL_OVERRIDE_KEYS = ("num_classes", "num_branches", "channels", "head_channels", "final_channels",
                       "width_expansion", "num_groups", "dropout", "injection", "downsample_times",
                       "weight_tied_layers")


@dataclass(frozen=True)
class Batching:
    """How one optimizer step's samples are laid out over processes."""

    micro_batch: int  # samples per process per micro-step (data.batch_size)
    grad_accum_steps: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum_steps * self.world_size


def batching(cfg: Config, world_size: int, run_global_batch: int | None = None) -> Batching:
    """Micro-batch and accumulation for ``world_size`` processes, or a TrainerError saying what to change.

    With ``train.global_batch_size`` set (the recipes' per-GPU batch × GPUs), gradient accumulation is
    derived from it so the same recipe reproduces the same optimisation on any number of processes.
    ``run_global_batch`` is the global batch a resumed run was trained with (from its checkpoint): with
    ``train.hold_on_resize: global_batch`` it is kept when the number of processes changed.
    """
    micro = cfg.data.batch_size
    global_batch = cfg.train.global_batch_size
    if global_batch is None and run_global_batch is not None and cfg.train.hold_on_resize == "global_batch":
        return _split(cfg, run_global_batch, world_size, f"the run's global batch {run_global_batch}", held=True)
    if global_batch is None:
        return Batching(micro, cfg.train.grad_accum_steps, world_size)
    return _split(cfg, global_batch, world_size, f"train.global_batch_size={global_batch}", held=False)


def run_global_batch(cfg: Config, point) -> int | None:
    """The global batch the run being resumed trained with (None for a fresh start).

    Read from rank 0's client state of the resume point; checkpoints written before it was recorded
    had ``data.batch_size × train.grad_accum_steps × the processes that saved them``."""
    if point is None:
        return None
    recorded = (point.client_state or {}).get("global_batch")
    if recorded is not None:
        return int(recorded)
    return cfg.train.global_batch_size or cfg.data.batch_size * cfg.train.grad_accum_steps * point.world_size


def _split(cfg: Config, global_batch: int, world_size: int, what: str, held: bool) -> Batching:
    """``global_batch`` as whole micro-batches on ``world_size`` processes (``what`` names it in errors)."""
    micro = cfg.data.batch_size
    hint = " (or set train.hold_on_resize=grad_accum to let the global batch follow the processes)" if held else ""
    if global_batch % world_size:
        raise TrainerError(
            f"{what} cannot be split over {world_size} processes: "
            f"choose a multiple of {world_size} or run with a number of processes that divides {global_batch}{hint}")
    per_rank = global_batch // world_size
    if per_rank % micro:
        raise TrainerError(
            f"{what} over {world_size} processes is {per_rank} samples "
            f"per process per step, which data.batch_size={micro} does not divide: set data.batch_size to a divisor "
            f"of {per_rank}{hint}")
    accum = per_rank // micro
    if not held and cfg.train.grad_accum_steps not in (1, accum):
        raise TrainerError(
            f"train.grad_accum_steps={cfg.train.grad_accum_steps} contradicts train.global_batch_size={global_batch} "
            f"(which needs {accum} with data.batch_size={micro} on {world_size} processes): drop one of them")
    return Batching(micro, accum, world_size)


def model_spec(cfg: Config):
    """The registry entry of ``model.name`` (raises MDEQError listing the known names)."""
    import mdeq

    return mdeq.get_model_spec(cfg.model.name)


def model_overrides(cfg: Config, num_classes: int | None = None) -> dict[str, Any]:
    """The ``model.*`` overrides for ``mdeq.create_model`` (None values dropped)."""
    out = {key: getattr(cfg.model, key) for key in MODEL_OVERRIDE_KEYS}
    if out["num_classes"] is None and num_classes is not None:
        out["num_classes"] = num_classes
    if not out["weight_tied_layers"]:
        out.pop("weight_tied_layers")
    return {k: v for k, v in out.items() if v is not None}


def build_model(cfg: Config, num_classes: int | None = None) -> torch.nn.Module:
    """The model of ``model.*`` (``num_classes`` from the data when the config leaves it None)."""
    import mdeq

    return mdeq.create_model(cfg.model.name, **model_overrides(cfg, num_classes))


def model_from_weights(cfg: Config, payload: dict, num_classes: int | None, spec=None) -> torch.nn.Module:
    """The config's model with the saved weights of ``payload`` (``transfer.read_weights``) loaded and
    its DEQ options set; one clear error when the weights belong to another model or config."""
    model = build_model(cfg, num_classes)
    state, own = payload["state_dict"], model.state_dict()
    mismatched = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if mismatched:
        raise TrainerError(f"{payload['path']} does not fit model {cfg.model.name!r} with this config "
                           f"({len(mismatched)} missing or differently shaped tensors, e.g. {mismatched[0]}); "
                           f"it was saved from model {payload.get('model', '?')!r}: use that run's config")
    model.load_state_dict({k: state[k] for k in own})
    model.deq_options = deq_options(cfg, spec)
    return model


def compute_dtype(cfg: Config) -> torch.dtype | None:
    """Autocast dtype of f: ``deq.precision.compute``, where 'auto' follows ``deepspeed.precision``."""
    name = cfg.deq.precision.compute
    if name == "auto":
        name = cfg.deepspeed.precision
    return None if name == "fp32" else DTYPES[name]


def deq_options(cfg: Config, spec=None):
    """``DEQOptions`` from ``deq.*``, with the registry's recipe values where the config says None."""
    import mdeq

    spec = spec if spec is not None else model_spec(cfg)
    deq = cfg.deq
    return mdeq.DEQOptions(
        f_solver=deq.f_solver, b_solver=deq.b_solver,
        f_max_iter=deq.f_max_iter if deq.f_max_iter is not None else spec.f_max_iter,
        b_max_iter=deq.b_max_iter if deq.b_max_iter is not None else spec.b_max_iter,
        f_tol=deq.f_tol, b_tol=deq.b_tol, stop_mode=deq.stop_mode, history=deq.history,
        grad_mode=deq.grad_mode,
        unrolled_steps=pretrain_layers(cfg, spec),
        phantom_steps=deq.phantom_steps, phantom_damping=deq.phantom_damping,
        compute_dtype=compute_dtype(cfg), state_dtype=DTYPES[deq.precision.state],
        jac_reg_weight=deq.jac_reg_weight, jac_reg_prob=deq.jac_reg_prob,
        stop_check_every=deq.stop_check_every, compile_f=deq.compile_f, cudnn_benchmark=deq.cudnn_benchmark,
        tf32=deq.tf32, jac_reg_seed=cfg.train.seed)  # the draw: a function of (seed, forward index), the same on every rank


def pretrain_steps(cfg: Config, spec=None) -> int:
    """Warm-up length in optimizer steps (unrolled f before the equilibrium solve)."""
    spec = spec if spec is not None else model_spec(cfg)
    return cfg.deq.pretrain_steps if cfg.deq.pretrain_steps is not None else int(spec.pretrain_steps)


def evaluates_unrolled(steps_done: int, warmup_steps: int, weight_tied: bool) -> bool:
    """Whether an evaluation after ``steps_done`` optimizer steps runs f unrolled (warm-up mode).

    The mode the last step trained in: step ``k`` (0-based) is a warm-up step while ``k <
    warmup_steps``, so after ``steps_done`` steps the weights were last trained unrolled when
    ``steps_done <= warmup_steps``. A warm-up model's f need not have a fixed point yet, so its
    equilibrium accuracy says little. Both the in-run evaluation and ``mdeq eval`` use this rule;
    ``steps_done < 0`` (unknown) means equilibrium.
    """
    return weight_tied or 0 <= steps_done <= warmup_steps


def pretrain_layers(cfg: Config, spec=None) -> int:
    spec = spec if spec is not None else model_spec(cfg)
    return cfg.deq.pretrain_layers if cfg.deq.pretrain_layers is not None else int(spec.pretrain_layers)


def train_stream_args(cfg: Config, rank: int, world_size: int, plan: Batching | None = None) -> dict[str, Any]:
    """Keyword arguments of ``data_pipelines.build_train_stream`` (besides dataset and shards).

    ``plan`` (default: ``batching(cfg, world_size)``) gives the global batch the stream cuts into this
    rank's micro-batches; the canonical streams (``data.streams``) fix the order for every layout."""
    data = cfg.data
    plan = plan if plan is not None else batching(cfg, world_size)
    args: dict[str, Any] = dict(batch_size=data.batch_size, workers=data.workers, rank=rank,
                                world_size=world_size, global_batch=plan.global_batch, streams=data.streams,
                                seed=cfg.train.seed, image_size=data.image_size,
                                scale_range=tuple(data.scale_range), crop_scale=tuple(data.crop_scale),
                                augment=data.augment,
                                shuffle_buffer=data.shuffle_buffer, max_bad_fraction=data.max_bad_fraction,
                                eval_resize=data.eval_resize)
    if data.crop_size is not None:
        args["crop_size"] = tuple(data.crop_size)
    return args


def eval_loader_args(cfg: Config, rank: int, world_size: int) -> dict[str, Any]:
    """Keyword arguments of ``data_pipelines.build_eval_loader`` (besides dataset and shards)."""
    data = cfg.data
    return dict(batch_size=data.eval_batch_size or data.batch_size, workers=data.workers, rank=rank,
                world_size=world_size, image_size=data.image_size, eval_resize=data.eval_resize)


def task_of(cfg: Config) -> str:
    """'classification' or 'segmentation', from the dataset."""
    return "segmentation" if cfg.data.dataset == "cityscapes" else "classification"
