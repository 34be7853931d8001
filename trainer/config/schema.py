"""The typed configuration tree.

One dataclass per component; every field has a default and a docstring-style comment saying what it
means. Choices are ``Literal`` types and numeric ranges live in field metadata, so the loader
(``trainer.config.loader``) can validate any section generically and name the offending key.
Cross-field checks live in ``__post_init__`` of the section (or of ``Config`` when they span
sections) and raise ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.config.errors import ConfigError


def rng(default: Any, *, ge: float | None = None, le: float | None = None, gt: float | None = None,
        help: str = "") -> Any:
    """A field with a numeric range checked at load time."""
    return field(default=default, metadata={"ge": ge, "le": le, "gt": gt, "help": help})


Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class ModelConfig:
    """Which MDEQ to build. ``None`` fields keep the registry entry's (released recipe's) value."""

    name: str = "tiny"  # registry name, see `mdeq models`
    num_classes: int | None = rng(None, ge=1)  # classes (classification) or train ids (segmentation)
    init_from: str | None = None  # checkpoint dir whose backbone initialises this model (transfer)
    num_branches: int | None = rng(None, ge=1, le=4)  # 1 = single-stream DEQ, no fusion
    channels: list[int] | None = None  # channels per branch, finest first
    head_channels: list[int] | None = None  # classification head bottleneck widths per branch
    final_channels: int | None = rng(None, ge=1)  # classification head's final width
    width_expansion: int | None = rng(None, ge=1)  # E in the residual block conv3x3(C -> E*C)
    num_groups: int | None = rng(None, ge=1)  # GroupNorm groups G inside f
    dropout: float | None = rng(None, ge=0.0, le=0.99)  # variational (channel-wise) dropout rate
    injection: Literal["highest", "all"] | None = None  # inject x into the finest branch or into all
    downsample_times: int | None = rng(None, ge=0, le=4)  # stride-2 stem stages before the equilibrium
    weight_tied_layers: int = rng(0, ge=0)  # >0: weight-tied unrolled model with this many f layers


@dataclass
class DataConfig:
    """Where samples come from and how they are batched and augmented."""

    dataset: Literal["imagenet", "cityscapes"] = "imagenet"
    train_shards: str = ""  # shard dir written by `mdeq shards`, brace pattern, or URL
    val_shards: str = ""
    image_size: int = rng(224, ge=8)  # training crop (ImageNet) / short crop side (Cityscapes: crop_size)
    eval_resize: int | None = rng(None, ge=8)  # ImageNet eval: resize to this, then centre-crop image_size
    crop_size: list[int] | None = None  # Cityscapes training crop [W, H]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # Cityscapes random scale
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # ImageNet RandomResizedCrop area range
    augment: bool = True  # random crop/flip for training (CIFAR recipes turn it off)
    batch_size: int = rng(32, ge=1)  # per process, per micro-step
    eval_batch_size: int | None = rng(None, ge=1)  # per process; default batch_size
    workers: int = rng(2, ge=0)  # DataLoader worker processes per rank
    shuffle_buffer: int = rng(1000, ge=0)  # samples held for in-stream shuffling, split over the streams
    streams: int | None = rng(None, ge=1)  # canonical streams the sample order is defined on (None: auto)
    max_bad_fraction: float = rng(0.01, ge=0.0, le=1.0)  # stop when more samples than this are bad
    eval_max_batches: int | None = rng(None, ge=1)  # cap evaluation length (None: whole val set)


@dataclass
class TrainConfig:
    """The loop: length, evaluation, logging, losses."""

    max_steps: int = rng(1000, ge=1)  # optimizer steps
    output_dir: str | None = None  # run folder (metrics.jsonl, final_metrics.json, config); None: parent of checkpoint.dir
    eval_every: int = rng(500, ge=0)  # 0: evaluate only at the end
    log_every: int = rng(10, ge=1)
    seed: int = 0
    grad_accum_steps: int = rng(1, ge=1)
    global_batch_size: int | None = rng(None, ge=1)  # samples per optimizer step, all processes; sets grad_accum_steps
    hold_on_resize: Literal["global_batch", "grad_accum"] = "global_batch"  # kept when the process count changes
    grad_clip: float = rng(1.0, ge=0.0)  # 0 disables clipping
    label_smoothing: float = rng(0.0, ge=0.0, le=0.99)
    max_bad_steps: int = rng(3, ge=1)  # consecutive non-finite steps before rollback/abort
    on_divergence: Literal["rollback", "abort"] = "rollback"
    inject_nan_at_step: int | None = None  # test-only: make this step's loss NaN


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (stepped every iteration)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = rng(0.05, gt=0.0)
    momentum: float = rng(0.9, ge=0.0, le=1.0)
    nesterov: bool = True
    weight_decay: float = rng(5e-5, ge=0.0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = rng(0, ge=0)
    poly_power: float = rng(0.9, gt=0.0)
    min_lr: float = rng(0.0, ge=0.0)


@dataclass
class CheckpointConfig:
    """When and where checkpoints are committed, and how a run resumes."""

    dir: str = "runs/checkpoints"
    every_steps: int = rng(0, ge=0)  # 0: no step-based checkpoints
    every_minutes: float = rng(0.0, ge=0.0)  # 0: no time-based checkpoints
    keep_last: int = rng(2, ge=1)
    keep_best: bool = True
    resume: str = "auto"  # auto | never | <path to a checkpoint>
    grace_seconds: float = rng(20.0, gt=0.0)  # time allowed to save after SIGTERM/SIGUSR1
    best_mode: Literal["max", "min"] = "max"  # keep_best: is a higher metric passed to save() better
    verify_hash: bool = True  # record and check a SHA-256 of every checkpoint file (detects corruption)
    move_other_runs_aside: bool = False  # opt-in: move another run's checkpoints in dir to dir/set-aside/ (else refuse)
    lock_stale_seconds: float = rng(600.0, gt=0.0)  # a run lock held from another host without heartbeat this long is stale


@dataclass
class TrackingConfig:
    """MLflow tracking (rank 0 only)."""

    enabled: bool = True
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "mdeq"
    run_name: str | None = None
    system_metrics: bool = True  # CPU/GPU/memory/network sampled by MLflow's monitor thread
    system_metrics_every_s: float = rng(10.0, gt=0.0)  # sampling interval; short runs need a small one
    solver_health_residual: float = rng(0.05, gt=0.0)  # warn when the forward rel. residual stays above this
    solver_health_window: int = rng(20, ge=1)  # equilibrium steps the solver-health verdict looks back over


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed engine."""

    zero_stage: int = rng(0, ge=0, le=3)
    precision: Precision = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the generated ds_config


@dataclass
class DEQPrecisionConfig:
    """Mixed precision of the equilibrium solve."""

    compute: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast dtype of f; auto = engine's
    state: Precision = "fp32"  # dtype of the solver state and its low-rank factors


@dataclass
class DEQConfig:
    """Equilibrium solve, gradient mode and unrolled pre-training. ``None`` keeps the model entry's default."""

    f_solver: Literal["broyden", "anderson", "fixed_point"] = "broyden"
    b_solver: Literal["broyden", "anderson", "fixed_point"] = "broyden"
    f_max_iter: int | None = rng(None, ge=1)
    b_max_iter: int | None = rng(None, ge=1)
    f_tol: float = rng(1e-3, gt=0.0)
    b_tol: float = rng(1e-6, gt=0.0)
    stop_mode: Literal["abs", "rel"] = "rel"
    history: int = rng(8, ge=1)  # low-rank update pairs kept by Broyden / Anderson memory
    grad_mode: Literal["implicit", "unrolled", "phantom"] = "implicit"
    phantom_steps: int = rng(5, ge=1)
    phantom_damping: float = rng(0.8, gt=0.0, le=1.0)
    pretrain_steps: int | None = rng(None, ge=0)  # unrolled pre-training: f unrolled for the first N steps
    pretrain_layers: int | None = rng(None, ge=1)  # f applications per unrolled pre-training step
    jac_reg_weight: float = rng(0.0, ge=0.0)  # gamma of the Jacobian regulariser (0: off)
    jac_reg_prob: float = rng(0.0, ge=0.0, le=1.0)
    precision: DEQPrecisionConfig = field(default_factory=DEQPrecisionConfig)
    stop_check_every: int = rng(0, ge=0)  # f evaluations between host reads of the solver's stop flag; 0: per device
    compile_f: Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "off"
    cudnn_benchmark: bool = True  # CUDA only: cuDNN autotuning of f's convolutions
    tf32: bool = True  # CUDA only: TF32 convolutions where fp32 is asked for (matmuls stay fp32)


@dataclass
class Config:
    """The whole run. Sections are owned by the components named in their docstrings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    deq: DEQConfig = field(default_factory=DEQConfig)

    def __post_init__(self) -> None:
        if self.data.crop_size is not None and len(self.data.crop_size) != 2:
            raise ConfigError(f"data.crop_size must be [width, height], got {self.data.crop_size}")
        if len(self.data.scale_range) != 2 or not 0 < self.data.scale_range[0] <= self.data.scale_range[1]:
            raise ConfigError(f"data.scale_range must be [low, high] with 0 < low <= high, got {self.data.scale_range}")
        if self.model.channels is not None and self.model.num_branches is not None \
                and len(self.model.channels) != self.model.num_branches:
            raise ConfigError(f"model.channels has {len(self.model.channels)} entries but model.num_branches is "
                              f"{self.model.num_branches}: give one channel count per branch")
        if self.checkpoint.resume not in ("auto", "never") and not self.checkpoint.resume:
            raise ConfigError("checkpoint.resume must be 'auto', 'never' or a checkpoint path")
